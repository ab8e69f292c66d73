//! The sans-I/O codec: ICAP messages to and from bytes, with no I/O and no policy.
//!
//! Its modules are private; the crate root re-exports the types a user needs, each at one
//! path (`icap::RequestDecoder`, `icap::Encoder`, `icap::Request` ...), and the rest of the
//! crate reaches the internals through `pub(crate)` items. The rooms, from the bytes up:
//! - `grammar`: the byte classes every parser shares (tokens, control bytes, whitespace,
//!   decimals);
//! - `error`: the wire error, [`Error`] with its [`ErrorKind`] and byte offset;
//! - `limits`: the size limits a decoder enforces;
//! - `fields`: header fields ([`Headers`]) and the header-block parser;
//! - `head`: start lines, methods and versions, and the encapsulated HTTP heads;
//! - `encapsulated`: the `Encapsulated` header and the layout it describes;
//! - `chunked`: chunked body framing, with the ICAP extensions;
//! - `message`: [`Request`] and [`Response`] without their bodies;
//! - `decode`: the streaming decoders ([`RequestDecoder`], [`ResponseDecoder`]);
//! - `encode`: the [`Encoder`], heads and chunk framing as a queue of `Bytes`.
//!
//! Each file depends only on the ones above it in that list, so there are no circles.

pub(crate) mod chunked;
pub(crate) mod decode;
pub(crate) mod encapsulated;
pub(crate) mod encode;
pub(crate) mod error;
pub(crate) mod fields;
pub(crate) mod grammar;
pub(crate) mod head;
pub(crate) mod limits;
pub(crate) mod message;

pub use chunked::{Chunk, ChunkedDecoder, LastChunk};
pub use decode::{Decoder, Message, RequestDecoder, RequestEvent, ResponseDecoder, ResponseEvent};
pub use encapsulated::{Encapsulated, Section};
pub use encode::Encoder;
pub use error::{Error, ErrorKind, Result};
pub use fields::Headers;
pub use head::{HttpRequestHead, HttpResponseHead, Method, Version};
pub use limits::Limits;
pub use message::{BodyKind, Request, Response};
