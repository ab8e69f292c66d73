//! ICAP (RFC 3507) for Rust.
//!
//! The crate is built in layers, each usable on its own, each depending only on the ones
//! before it:
//! - **the codec**, with no I/O: feed bytes to a [`RequestDecoder`] (server side) or a
//!   [`ResponseDecoder`] (client side) and take events out ([`RequestEvent`],
//!   [`ResponseEvent`]); write messages with an [`Encoder`], which frames bodies around your
//!   `Bytes` without copying them. Messages are [`Request`] and [`Response`] with their
//!   [`Headers`] and encapsulated heads ([`HttpRequestHead`], [`HttpResponseHead`]);
//!   [`Limits`] bound what a decoder holds;
//! - **still without I/O**: the [`builder`]s, which cannot make an illegal message; the typed
//!   OPTIONS view ([`ServiceOptions`]); ICAP URIs ([`IcapUri`]); and the rules of one
//!   transaction ([`ClientTransaction`], [`ServerTransaction`]);
//! - **I/O** on tokio: the async [`client`] (feature `client`; a `tower::Service` with
//!   pooling, failover and health) and [`server`] (feature `server`), with TLS through
//!   rustls ([`tls`]), counters through [`metrics`] (feature `metrics`);
//! - **applications** on top of the client: data loss prevention ([`dlp`]: verdict rules and
//!   vendor profiles, and with feature `scan` the scanner, a file in, a verdict out), the
//!   tower layer that adapts HTTP messages through ICAP ([`adapt`], feature `adapt`), and the
//!   ICAP-aware relay ([`gateway`], feature `gateway`).
//!
//! Every public type has one path: the codec's and the transaction's types at the crate
//! root, with the one report the client and the gateway share ([`ServerHealth`], either
//! feature); everything else in the module of its layer.
//!
//! Errors are told apart by whose fault they are: bytes on the wire that break the protocol
//! are an [`Error`] with an [`ErrorKind`] and the byte offset where the problem was seen; a
//! message a builder refuses is a [`BuildError`](builder::BuildError); a failed call of the
//! client a `client::ClientError`; a certificate or key file that cannot be used a
//! `tls::TlsConfigError` naming the file. Configuration types ([`Limits`],
//! [`ServiceOptions`], the TLS settings) are `#[non_exhaustive]`: start from their `Default`
//! or constructor and use the `with_*` setters.
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
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod dlp;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod gateway;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(any(feature = "client", feature = "server"))]
mod observe;
mod options;
mod proto;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
mod transaction;
#[cfg(any(feature = "client", feature = "gateway"))]
mod upstream;
mod uri;

/// The README's code blocks, compiled and run as doctests (the client, scanner and server
/// blocks need their features).
#[cfg(all(doctest, feature = "scan", feature = "server"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use options::{ServiceOptions, Transfer};

/// The error a service, a body stream or a layer may fail with, boxed: what the server
/// accepts from a handler and the adapt layer from the bodies it streams (as tower's
/// `BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use proto::{
    BodyKind, Chunk, ChunkedDecoder, Decoder, Encapsulated, Encoder, Error, ErrorKind, Headers,
    HttpRequestHead, HttpResponseHead, LastChunk, Limits, Message, Method, Request, RequestDecoder,
    RequestEvent, Response, ResponseDecoder, ResponseEvent, Result, Section, Version,
};
pub use transaction::{
    ClientEvent, ClientState, ClientTransaction, CloseReason, RequestBody, Reuse, ServerEvent,
    ServerState, ServerTransaction,
};
#[cfg(any(feature = "client", feature = "gateway"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "client", feature = "gateway"))))]
pub use upstream::ServerHealth;
pub use uri::{IcapUri, Scheme};
