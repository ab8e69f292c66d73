//! ICAP (RFC 3507) for Rust.
//!
//! The crate is built in layers, each usable on its own:
//! - the codec, with no I/O: feed bytes to a [`RequestDecoder`] (server side) or a
//!   [`ResponseDecoder`] (client side) and take events out ([`RequestEvent`],
//!   [`ResponseEvent`]); write messages with an
//!   [`Encoder`], which frames bodies around your `Bytes` without copying them;
//! - builders ([`builder`]), the typed OPTIONS view ([`options`]), ICAP URIs ([`uri`]), the
//!   rules of one transaction ([`transaction`]) and scanner verdicts ([`verdict`]), still
//!   without I/O;
//! - the async client (module `client`, feature `client`) and server (module `server`,
//!   feature `server`) on tokio, with TLS through rustls (module `tls`).
//!
//! ```
//! use icap::{ResponseDecoder, ResponseEvent};
//!
//! let mut dec = ResponseDecoder::default();
//! dec.feed(b"ICAP/1.0 204 Unmodified\r\nISTag: \"x1\"\r\n\r\n");
//! match dec.decode().unwrap() {
//!     Some(ResponseEvent::Head(res)) => assert_eq!(res.status, 204),
//!     other => panic!("{other:?}"),
//! }
//! assert!(matches!(dec.decode().unwrap(), Some(ResponseEvent::End(_))));
//! assert!(dec.is_idle());
//! ```
#![forbid(unsafe_code)]
// docs.rs (`--cfg docsrs`, nightly): a badge on every item behind a feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod builder;
pub mod chunked;
#[cfg(feature = "client")]
pub mod client;
pub mod decode;
pub mod encapsulated;
pub mod encode;
pub mod error;
pub mod head;
pub mod headers;
pub mod limits;
pub mod message;
pub mod options;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transaction;
pub mod uri;
pub mod verdict;

pub use builder::{ErrorStatus, RequestBuilder, ResponseBuilder};
pub use chunked::{Chunk, ChunkedDecoder, LastChunk};
pub use decode::{Decoder, RequestDecoder, RequestEvent, ResponseDecoder, ResponseEvent};
pub use encapsulated::{Encapsulated, Section};
pub use encode::Encoder;
pub use error::{Error, ErrorKind, Result};
pub use head::{HttpRequestHead, HttpResponseHead, Method, Version};
pub use headers::Headers;
pub use limits::Limits;
pub use message::{BodyKind, Request, Response};
pub use options::{ServiceOptions, Transfer};
pub use transaction::{
    ClientEvent, ClientTransaction, CloseReason, RequestBody, Reuse, ServerEvent, ServerTransaction,
};
pub use uri::{IcapUri, Scheme};
