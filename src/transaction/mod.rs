//! The rules of one ICAP transaction, as two small state machines without I/O.
//!
//! [`ClientTransaction`] sends one request and reads its answer; [`ServerTransaction`] reads
//! one request and sends the answer. Each drives the codec (an [`Encoder`](crate::Encoder) for what goes out,
//! a [`Decoder`](crate::Decoder) for what comes in) and owns what the codec does not know:
//! the preview stop-and-wait and `ieof` (RFC 3507 4.5), when 100, 204 and 206 are allowed
//! (4.5, 4.6), what a final response that comes while the request is still being sent
//! means, and whether the connection can carry another transaction afterwards ([`Reuse`]).
//! Sockets, timers and keeping the original message belong to the caller: feed received
//! bytes in, poll events out, and write [`ClientTransaction::outgoing`] /
//! [`ServerTransaction::outgoing`] to the peer.
//!
//! Each side of a transaction is two small enums, one per direction, because the two
//! messages overlap: a server may answer (and stream its answer) while the request is still
//! arriving, as c-icap's echo service does. [`ClientState`] and [`ServerState`] summarise
//! them. Illegal steps (a 100 after `ieof`, a 204 the client did not allow, body bytes
//! after the request was stopped) are errors, never panics; after a protocol or decoding
//! error the machine is failed and its connection must be closed.
//!
//! The client side lives in `client`, the server side in `server`; what both share (how a
//! connection may be reused, why it closes, how long a body is) is here.

use crate::proto::error::{Error, ErrorKind};
use crate::proto::fields::Headers;

mod client;
mod server;

pub use client::{ClientEvent, ClientState, ClientTransaction};
pub use server::{ServerEvent, ServerState, ServerTransaction};

/// Whether a connection may carry another transaction once this one is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reuse {
    /// Not decided yet: the request or the response is not complete.
    Pending,
    /// Both messages are complete and the connection is clean: it may carry the next
    /// transaction.
    Keep,
    /// The connection must be closed, for this reason.
    Close(CloseReason),
}

/// Why a connection cannot be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The request said `Connection: close`.
    ClientAsked,
    /// The response said `Connection: close`.
    ServerAsked,
    /// The response was an error status; c-icap closes after every error, and after one the
    /// server may not have read the request to its end.
    ErrorStatus(u16),
    /// The request was stopped before its end (the server answered early and will not read
    /// more, or the caller gave up), so the two sides no longer agree on where the next
    /// message starts.
    UnfinishedRequest,
    /// The peer closed the connection.
    Eof,
    /// The decoder failed: the stream cannot be trusted.
    DecodeError,
    /// The peer broke a transaction rule (for example a 100 after `ieof`).
    ProtocolViolation,
}

fn state_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidState, 0, msg)
}

fn says_close(h: &Headers) -> bool {
    h.has_token("Connection", "close")
}

/// The length of the body a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestBody {
    /// The request has no body (`null-body`).
    None,
    /// The body has exactly this many bytes: a body that fits the preview is sent with `ieof`
    /// at once, and more or fewer bytes than announced are an error.
    Known(u64),
    /// The length is not known in advance (a streamed origin response): the body ends when
    /// [`ClientTransaction::end_body`] is called.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::decode::{RequestDecoder, ResponseDecoder};
    use crate::proto::message::Request;
    use crate::uri::IcapUri;

    fn req(preview: Option<u64>) -> Request {
        let mut b = Request::reqmod(&IcapUri::parse("icap://h/r").unwrap())
            .http_request_parts("POST", "/", [("Host", "x")])
            .with_body();
        if let Some(p) = preview {
            b = b.preview(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn client_start_states() {
        let start = |p, body| {
            ClientTransaction::new(&req(p), body, ResponseDecoder::default())
                .unwrap()
                .state()
        };
        assert_eq!(start(Some(5), RequestBody::Unknown), ClientState::Preview);
        assert_eq!(
            start(Some(5), RequestBody::Known(0)),
            ClientState::AwaitResponse
        );
        assert_eq!(
            start(Some(0), RequestBody::Known(3)),
            ClientState::AwaitContinue
        );
        assert_eq!(start(None, RequestBody::Known(3)), ClientState::Body);
        assert_eq!(
            start(None, RequestBody::Known(0)),
            ClientState::AwaitResponse
        );
    }

    #[test]
    fn failed_decoder_is_refused_or_failed() {
        let mut dec = ResponseDecoder::default();
        dec.feed(b"garbage\r\n\r\n");
        assert!(dec.decode().is_err());
        let e = ClientTransaction::new(&req(None), RequestBody::Unknown, dec).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
        let mut dec = RequestDecoder::default();
        dec.feed(b"garbage\r\n\r\n");
        assert!(dec.decode().is_err());
        let mut tx = ServerTransaction::new(dec);
        assert_eq!(tx.state(), ServerState::Failed);
        assert_eq!(tx.poll_event().unwrap_err().kind(), ErrorKind::InvalidState);
    }

    #[test]
    fn pipelined_next_response_stays_in_the_decoder() {
        let allow = Request::reqmod(&IcapUri::parse("icap://h/r").unwrap())
            .http_request_parts("GET", "/", [("Host", "x")])
            .allow_204()
            .build()
            .unwrap();
        let mut tx =
            ClientTransaction::new(&allow, RequestBody::None, ResponseDecoder::default()).unwrap();
        let no_content = b"ICAP/1.0 204 No Content\r\nISTag: \"t\"\r\n\r\n";
        tx.feed(no_content);
        assert!(matches!(
            tx.poll_event().unwrap(),
            Some(ClientEvent::Unmodified(_))
        ));
        // The 204 is not over until its End; a second head before it cannot be accepted.
        tx.feed(no_content);
        assert!(matches!(
            tx.poll_event().unwrap(),
            Some(ClientEvent::End(_))
        ));
        // After Done the next response belongs to the next transaction.
        assert_eq!(tx.poll_event().unwrap(), None);
        assert!(!tx.into_decoder().is_idle());
    }
}
