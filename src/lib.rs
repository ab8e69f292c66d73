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
//! - the async client (module `client`, feature `client`; a `tower::Service`) and server
//!   (module `server`, feature `server`) on tokio, with TLS through rustls (module `tls`);
//! - the DLP scanner on top of the client (module `scan`, feature `scan`): a file in, a
//!   verdict out.
//!
//! Errors are told apart by audience: bytes on the wire that break the protocol are an
//! [`Error`] with an [`ErrorKind`] and the byte offset where the problem was seen; a message
//! a builder refuses is a [`BuildError`]; a certificate or key file that cannot be used is a
//! `tls::TlsConfigError` naming the file. Configuration types (`Limits`, `ServiceOptions`,
//! the TLS settings) are `#[non_exhaustive]`: start from their `Default` or constructor and
//! use the `with_*` setters.
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

#[cfg(feature = "adapt")]
#[cfg_attr(docsrs, doc(cfg(feature = "adapt")))]
pub mod adapt;
pub mod builder;
pub mod chunked;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod decode;
pub mod encapsulated;
pub mod encode;
pub mod error;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod gateway;
pub mod head;
pub mod headers;
pub mod limits;
pub mod message;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(any(feature = "client", feature = "server"))]
mod observe;
pub mod options;
#[cfg(feature = "scan")]
#[cfg_attr(docsrs, doc(cfg(feature = "scan")))]
pub mod scan;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transaction;
#[cfg(any(feature = "client", feature = "gateway"))]
mod upstream;
pub mod uri;
pub mod verdict;

/// The README's code blocks, compiled and run as doctests (the scanner block needs the
/// client).
#[cfg(all(doctest, feature = "client"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use builder::{BuildError, ErrorStatus, RequestBuilder, ResponseBuilder};
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
