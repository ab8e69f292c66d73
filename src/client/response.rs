//! What comes back: [`ClientResponse`] (the head at once, the body streamed),
//! [`Exchange`] (a whole answer read into memory, its body kept up to a bound and hashed),
//! and [`ServerReport`] (one server's answer to the connectivity test).

use std::time::Duration;

use bytes::Bytes;

use crate::client::ClientError;
use crate::options::ServiceOptions;
use crate::proto::message::Response;
use crate::uri::IcapUri;

use super::AnswerBody;

/// An answer: its head, and its body as a stream. The tower `Response` of [`Client`](super::Client).
#[derive(Debug)]
#[non_exhaustive]
pub struct ClientResponse {
    /// The server that answered.
    pub server: IcapUri,
    /// The final ICAP head (204, 200, 206, or an error status; never 100), with the
    /// encapsulated HTTP heads it carries.
    pub head: Response,
    /// The encapsulated body (empty after a 204 or when the answer has none).
    pub body: AnswerBody,
    /// The TLS version, on `icaps://`.
    pub tls_version: Option<String>,
}

impl ClientResponse {
    /// The ICAP status.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The body, to forward or read.
    pub fn into_body(self) -> AnswerBody {
        self.body
    }
}

/// A whole answer read into memory (what [`CallBuilder::exchange`](super::CallBuilder::exchange)
/// and the scanner use): the head, the start of the body and a digest of all of it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Exchange {
    /// The server that answered.
    pub server: IcapUri,
    /// The final response (204, 200, 206, or an error status; never 100).
    pub response: Response,
    /// The start of the returned body, up to
    /// [`ClientConfig::keep_body`](super::ClientConfig::keep_body) bytes.
    pub body: Bytes,
    /// True when the returned body was longer than `keep_body`: [`Self::body`] holds only
    /// its start, [`Self::body_digest`] covers all of it.
    pub body_truncated: bool,
    /// Length and hash of the whole returned body, when one came.
    pub body_digest: Option<(u64, u64)>,
    /// For a 206: the original body continues the new one from this offset.
    pub use_original_body: Option<u64>,
    /// Length and hash of the body that was sent.
    pub sent_digest: Option<(u64, u64)>,
    /// The TLS version, on `icaps://`.
    pub tls_version: Option<String>,
    /// Time from the first byte sent to the end of the answer.
    pub elapsed: Duration,
}

/// One server's answer to the connectivity test.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServerReport {
    /// The server.
    pub server: IcapUri,
    /// Its options, or why they could not be had.
    pub result: Result<ServiceOptions, ClientError>,
    /// The TLS version negotiated, on `icaps://`.
    pub tls_version: Option<String>,
    /// Time for connect, handshake and OPTIONS.
    pub round_trip: Duration,
}
