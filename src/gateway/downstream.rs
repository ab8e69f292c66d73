//! The client side of the gateway: its read half, the request decoder that frames its
//! messages, and the bytes read but not relayed yet (relayed as read, never re-encoded).

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::decode::{RequestDecoder, RequestEvent};
use crate::proto::error::{Error, ErrorKind};
use crate::proto::limits::Limits;

use super::GatewayError;

/// Read size for both directions: large enough for bulk bodies, small enough to keep the
/// memory of many connections bounded.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Makes room for a read, reclaiming the buffer's space when the pieces split off it are
/// gone (the usual case between small transactions), allocating otherwise.
pub(super) fn refill(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Whether a `Connection` header asks to close.
pub(super) fn wants_close(v: Option<&[u8]>) -> bool {
    v.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

pub(super) struct Downstream<R> {
    r: R,
    pub(super) dec: RequestDecoder,
    raw: VecDeque<Bytes>,
    /// Stream offset of the first byte of `raw`.
    pub(super) raw_pos: u64,
    /// Inside a request whose head was decoded.
    pub(super) in_body: bool,
    timeout: Duration,
    /// Read buffers of this connection and of its answers, reused: pieces split off them
    /// are handed on, and the space comes back once those are dropped.
    rbuf: BytesMut,
    pub(super) ubuf: BytesMut,
}

impl<R: AsyncRead + Unpin> Downstream<R> {
    pub(super) fn new(r: R, limits: Limits, timeout: Duration) -> Self {
        // Bodies are relayed, not held: no body limit.
        let limits = Limits {
            max_body: None,
            ..limits
        };
        Downstream {
            r,
            dec: RequestDecoder::new(limits),
            raw: VecDeque::new(),
            raw_pos: 0,
            in_body: false,
            timeout,
            rbuf: BytesMut::new(),
            ubuf: BytesMut::new(),
        }
    }

    /// Reads more; `Ok(false)` on end of stream.
    pub(super) async fn read(&mut self) -> Result<bool, GatewayError> {
        let buf = &mut self.rbuf;
        refill(buf);
        match tokio::time::timeout(self.timeout, self.r.read_buf(buf)).await {
            Err(_) => Err(GatewayError::ClientTimeout(self.timeout)),
            // TLS clients often close without close_notify; between messages that is a
            // close like any other (`decode_eof` still catches a message cut short).
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Ok(Err(source)) => Err(GatewayError::ClientIo { op: "read", source }),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => {
                let b = buf.split().freeze();
                self.dec.feed_bytes(b.clone());
                self.raw.push_back(b);
                Ok(true)
            }
        }
    }

    /// The next request's head, `None` when the client closed between messages.
    pub(super) async fn next_head(&mut self) -> Result<Option<crate::Request>, GatewayError> {
        loop {
            match self.dec.decode().map_err(GatewayError::ClientProtocol)? {
                Some(RequestEvent::Head(h)) => {
                    self.in_body = true;
                    return Ok(Some(h));
                }
                Some(_) => {
                    return Err(GatewayError::ClientProtocol(Error::new(
                        ErrorKind::InvalidState,
                        self.dec.position(),
                        "body bytes outside a message",
                    )))
                }
                None => {
                    if !self.read().await? {
                        self.dec
                            .decode_eof()
                            .map_err(GatewayError::ClientProtocol)?;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Takes the raw bytes decoded so far (up to the decoder's position).
    pub(super) fn take_decoded(&mut self) -> Vec<Bytes> {
        let mut want = (self.dec.position() - self.raw_pos) as usize;
        let mut out = Vec::new();
        while want > 0 {
            let front = self.raw.front_mut().expect("decoded bytes were read");
            if front.len() <= want {
                want -= front.len();
                out.push(self.raw.pop_front().expect("front exists"));
            } else {
                out.push(front.split_to(want));
                want = 0;
            }
        }
        for b in &out {
            self.raw_pos += b.len() as u64;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const REQ: &[u8] = b"REQMOD icap://h/r ICAP/1.0\r\nHost: h\r\nEncapsulated: req-hdr=0, null-body=18\r\n\r\nGET / HTTP/1.1\r\n\r\n";

    #[test]
    fn connection_close_is_found_among_tokens() {
        assert!(wants_close(Some(b"close")));
        assert!(wants_close(Some(b"keep-alive, Close ")));
        assert!(!wants_close(Some(b"keep-alive")));
        assert!(!wants_close(Some(b"closed")));
        assert!(!wants_close(None));
    }

    #[tokio::test]
    async fn heads_are_framed_and_the_raw_bytes_come_back_as_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut d = Downstream::new(server, Limits::default(), Duration::from_secs(5));
        let writer = tokio::spawn(async move {
            // Two requests, split at odd places.
            let mut both = REQ.to_vec();
            both.extend_from_slice(REQ);
            for piece in both.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        for _ in 0..2 {
            let head = d.next_head().await.unwrap().unwrap();
            assert_eq!(head.uri, &b"icap://h/r"[..]);
            let mut got = Vec::new();
            loop {
                while let Some(ev) = d.dec.decode().unwrap() {
                    if matches!(ev, RequestEvent::End(_)) {
                        d.in_body = false;
                    }
                }
                for b in d.take_decoded() {
                    got.extend_from_slice(&b);
                }
                if !d.in_body {
                    break;
                }
                assert!(d.read().await.unwrap());
            }
            assert_eq!(got, REQ);
        }
        drop(writer.await.unwrap());
        assert!(d.next_head().await.unwrap().is_none());
        assert_eq!(d.raw_pos, 2 * REQ.len() as u64);
    }

    #[tokio::test]
    async fn a_silent_client_times_out_and_garbage_is_its_fault() {
        let (_client, server) = tokio::io::duplex(64);
        let mut d = Downstream::new(server, Limits::default(), Duration::from_millis(20));
        let e = d.next_head().await.err().unwrap();
        assert!(matches!(e, GatewayError::ClientTimeout(_)), "{e}");

        let (mut client, server) = tokio::io::duplex(64);
        let mut d = Downstream::new(server, Limits::default(), Duration::from_secs(5));
        client.write_all(b"HELLO\r\n\r\n").await.unwrap();
        let e = d.next_head().await.err().unwrap();
        assert!(matches!(e, GatewayError::ClientProtocol(_)), "{e}");
        assert_eq!(e.fault(), super::super::Fault::Downstream);
    }

    #[tokio::test]
    async fn a_request_cut_short_by_the_close_is_an_error() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut d = Downstream::new(server, Limits::default(), Duration::from_secs(5));
        client.write_all(&REQ[..20]).await.unwrap();
        drop(client);
        let e = d.next_head().await.err().unwrap();
        assert!(matches!(e, GatewayError::ClientProtocol(_)), "{e}");
    }
}
