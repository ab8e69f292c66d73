//! The serializer: heads and chunk framing as a queue of `Bytes` for vectored writes.
//!
//! [`Encoder`] collects what goes on the wire for one direction: a head written once into its
//! own buffer, then body pieces framed as chunks. Body `Bytes` are queued as they are, between
//! a small size line and a CRLF, so the body is never copied; the queue implements
//! [`bytes::Buf`] with `chunks_vectored`, which is what `write_vectored` and tokio's
//! `write_all_buf` want. Lower-case hex, and no chunk extension but `ieof` (and
//! `use-original-body` in a 206). A built message and its body can be queued in one call
//! ([`Encoder::whole_request`], [`Encoder::whole_response`]).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::proto::chunked::{last_chunk, use_original_body_chunk, write_chunk_size};
use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::message::{Request, Response};

static CRLF: &[u8] = b"\r\n";

/// Where the encoder is in the message it writes: what may be queued next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between messages: a head comes next.
    #[default]
    Head,
    /// Inside a body (a preview when `preview`): chunks or its end come next.
    Body { preview: bool },
    /// A preview ended without `ieof`: the rest of the body (after `100 Continue`) or, when the
    /// server answered at once, the next message's head.
    AfterPreview,
}

/// A queue of wire bytes: heads, chunk framing and body pieces. Drain it with [`Buf`].
///
/// It knows where it is in a message (head, body, end) and refuses what cannot come next (body
/// bytes without a head or after the body's end, a second head inside a body) with an
/// [`ErrorKind::InvalidState`] error, queueing nothing: framed bytes in the wrong place would
/// be read by the peer as the next message.
///
/// ```
/// use bytes::{Buf, Bytes};
/// use icap::{Encoder, IcapUri, Request};
///
/// let uri = IcapUri::parse("icap://dlp.example/reqmod")?;
/// let req = Request::reqmod(&uri)
///     .http_request_parts("POST", "http://up.example/f", [("Host", "up.example")])
///     .with_body()
///     .build()?;
/// let mut enc = Encoder::new();
/// enc.request_head(&req)?; // Encapsulated computed from the real head sizes
/// enc.data(Bytes::from_static(b"hello"))?; // framed as a chunk, the bytes not copied
/// enc.end(false)?;
/// assert!(enc.data(Bytes::from_static(b"late")).is_err()); // the body has ended
/// let wire = enc.copy_to_bytes(enc.remaining());
/// assert!(wire.ends_with(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Encoder {
    parts: VecDeque<Bytes>,
    remaining: usize,
    /// Bytes queued since the encoder was made: the offset its errors report.
    queued: u64,
    phase: Phase,
    /// Where heads and size lines are written; split off as frozen `Bytes`, so one allocation
    /// serves many small pieces.
    scratch: BytesMut,
    /// Scratch bytes the message being written has used so far, and the previous one used:
    /// each message starts with room for as much as the last one took (see `ready_scratch`).
    used: usize,
    last_used: usize,
}

impl Encoder {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.remaining += b.len();
            self.queued += b.len() as u64;
            self.parts.push_back(b);
        }
    }

    fn misuse(&self, what: &str) -> Error {
        let phase = match self.phase {
            Phase::Head => "between messages",
            Phase::Body { .. } => "inside a body",
            Phase::AfterPreview => "after a preview",
        };
        Error::new(
            ErrorKind::InvalidState,
            self.queued,
            format!("{what} {phase} is refused: nothing was queued"),
        )
    }

    /// Makes room in the scratch buffer for the message about to be written. Done at a
    /// head, when the previous message has usually been written and dropped, so the buffer is
    /// reclaimed in place; a reserve in the middle of a message would find that message's own
    /// head and size lines still holding it, and allocate.
    ///
    /// Sized by the previous message, not by this head (computing a head's length walks all
    /// its fields): a larger head grows the buffer as it is written.
    fn ready_scratch(&mut self) {
        self.last_used = std::mem::take(&mut self.used).max(self.last_used / 2);
        let want = self.last_used.max(256) + 64;
        if self.scratch.capacity() - self.scratch.len() < want {
            self.scratch.reserve(want);
        }
    }

    /// A head may start a message between messages, and after a preview the server answered
    /// without `100 Continue`.
    fn start(&mut self, has_body: bool, preview: bool) -> Result<()> {
        if matches!(self.phase, Phase::Body { .. }) {
            return Err(self.misuse("a head"));
        }
        self.phase = if has_body {
            Phase::Body { preview }
        } else {
            Phase::Head
        };
        Ok(())
    }

    /// Queues the head of `req` (ICAP head and encapsulated HTTP heads). Refused inside a body.
    pub fn request_head(&mut self, req: &Request) -> Result<()> {
        let preview = req.body.is_some() && req.preview().is_some();
        self.start(req.body.is_some(), preview)?;
        self.ready_scratch();
        req.write_to(&mut self.scratch);
        self.used += self.scratch.len();
        let b = self.scratch.split().freeze();
        self.push(b);
        Ok(())
    }

    /// Queues the head of `res`. Refused inside a body.
    pub fn response_head(&mut self, res: &Response) -> Result<()> {
        self.start(res.body.is_some(), false)?;
        self.ready_scratch();
        res.write_to(&mut self.scratch);
        self.used += self.scratch.len();
        let b = self.scratch.split().freeze();
        self.push(b);
        Ok(())
    }

    /// Queues `data` as one chunk: size line, the bytes themselves (not copied), CRLF. An empty
    /// `data` queues nothing, since a zero-size chunk would end the body. Refused outside a
    /// body (no head with a body yet, or after its end).
    pub fn data(&mut self, data: Bytes) -> Result<()> {
        match self.phase {
            Phase::Body { .. } => {}
            Phase::AfterPreview => self.phase = Phase::Body { preview: false },
            Phase::Head => return Err(self.misuse("body data")),
        }
        if data.is_empty() {
            return Ok(());
        }
        // Room for many size lines at once: when the message's earlier pieces still hold the
        // buffer, this allocates once per ~50 chunks instead of once per chunk.
        if self.scratch.capacity() - self.scratch.len() < 18 {
            self.scratch.reserve(1024);
        }
        write_chunk_size(data.len(), &mut self.scratch);
        self.used += self.scratch.len();
        let line = self.scratch.split().freeze();
        self.push(line);
        self.push(data);
        self.push(Bytes::from_static(CRLF));
        Ok(())
    }

    /// Queues the end of a body: `0; ieof` when `ieof` (the body ended inside a preview),
    /// else `0`. After a preview's `0` (no `ieof`) the rest of the body may follow. Refused
    /// outside a body.
    pub fn end(&mut self, ieof: bool) -> Result<()> {
        self.phase = match self.phase {
            Phase::Body { preview: true } if !ieof => Phase::AfterPreview,
            Phase::Body { .. } | Phase::AfterPreview => Phase::Head,
            Phase::Head => return Err(self.misuse("the end of a body")),
        };
        self.push(last_chunk(ieof));
        Ok(())
    }

    /// Queues the end of a 206 body: `0; use-original-body=N`. Refused outside a body.
    pub fn end_use_original_body(&mut self, offset: u64) -> Result<()> {
        if !matches!(self.phase, Phase::Body { .. }) {
            return Err(self.misuse("the end of a body"));
        }
        self.phase = Phase::Head;
        self.push(use_original_body_chunk(offset));
        Ok(())
    }

    /// Queues raw bytes as they are (for instance `ICAP/1.0 100 Continue\r\n\r\n`), whatever
    /// the encoder's state: the caller answers for where they land.
    pub fn raw(&mut self, bytes: Bytes) {
        self.push(bytes);
    }

    /// Takes the next queued buffer whole, without copying it: for writers that hand
    /// `Bytes` on (to a socket half, a channel) instead of draining through [`Buf`].
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let b = self.parts.pop_front()?;
        self.remaining -= b.len();
        Some(b)
    }

    /// Number of queued buffers.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The queued buffers in order (for inspection; draining is through [`Buf`]).
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.parts.iter()
    }

    /// Copies everything queued into one buffer and empties the queue (tests, logging).
    pub fn to_bytes(&mut self) -> Bytes {
        let n = self.remaining;
        self.copy_to_bytes(n)
    }

    /// Queues a whole request: its head, then `body` as one chunk and the last chunk `0`.
    /// `body` must be given exactly when the request declares one. Requests with a preview
    /// need the stop-and-wait of a [`ClientTransaction`](crate::transaction::ClientTransaction)
    /// and are refused here.
    pub fn whole_request(&mut self, req: &Request, body: Option<Bytes>) -> Result<()> {
        body_matches(req.body.is_some(), &body)?;
        if req.body.is_some() && req.preview().is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                0,
                "a request with Preview is sent through a ClientTransaction",
            ));
        }
        self.request_head(req)?;
        if let Some(b) = body {
            self.data(b)?;
            self.end(false)?;
        }
        Ok(())
    }

    /// Queues a whole response: its head, then `body` as one chunk and the last chunk `0`.
    /// For a 206 use [`Encoder::partial_response`].
    pub fn whole_response(&mut self, res: &Response, body: Option<Bytes>) -> Result<()> {
        body_matches(res.body.is_some(), &body)?;
        if res.status == 206 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                0,
                "a 206 ends with use-original-body; use partial_response",
            ));
        }
        self.response_head(res)?;
        if let Some(b) = body {
            self.data(b)?;
            self.end(false)?;
        }
        Ok(())
    }

    /// Queues a 206: its head, the new body `prefix` (may be empty), then
    /// `0; use-original-body=original_from`: the rest of the body is the original from that
    /// offset.
    pub fn partial_response(
        &mut self,
        res: &Response,
        prefix: Bytes,
        original_from: u64,
    ) -> Result<()> {
        if res.status != 206 || res.body.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                0,
                "partial_response needs a 206 with a body",
            ));
        }
        self.response_head(res)?;
        self.data(prefix)?;
        self.end_use_original_body(original_from)?;
        Ok(())
    }
}

fn body_matches(has: bool, body: &Option<Bytes>) -> Result<()> {
    if has != body.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidState,
            0,
            if has {
                "the message declares a body but none was given"
            } else {
                "a body was given for a message with null-body"
            },
        ));
    }
    Ok(())
}

impl Buf for Encoder {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the queue");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("remaining counts the parts");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(self.parts.iter()) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_without_copying_the_body() {
        let body = Bytes::from(vec![b'x'; 300]);
        let ptr = body.as_ptr();
        let mut e = Encoder::new();
        e.phase = Phase::Body { preview: true };
        e.data(body).unwrap();
        e.data(Bytes::new()).unwrap();
        e.end(true).unwrap();
        assert_eq!(e.parts(), 4);
        let parts: Vec<_> = e.iter().cloned().collect();
        assert_eq!(&parts[0][..], b"12c\r\n");
        assert_eq!(parts[1].as_ptr(), ptr);
        assert_eq!(&parts[2][..], b"\r\n");
        assert_eq!(&parts[3][..], b"0; ieof\r\n\r\n");
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(e.chunks_vectored(&mut slices), 4);
        e.advance(7);
        assert_eq!(e.remaining(), 298 + 2 + 11);
        let all = e.to_bytes();
        assert!(all.ends_with(b"xx\r\n0; ieof\r\n\r\n"));
    }

    fn reqmod(body: bool, preview: Option<u64>) -> Request {
        let uri = crate::IcapUri::parse("icap://127.0.0.1/req").unwrap();
        let mut b = Request::reqmod(&uri).http_request_parts("GET", "http://x/", [("Host", "x")]);
        if body {
            b = b.with_body();
        }
        if let Some(p) = preview {
            b = b.preview(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn refuses_body_outside_a_body_and_queues_nothing() {
        let mut e = Encoder::new();
        let err = e.data(Bytes::from_static(b"x")).unwrap_err();
        assert_eq!((err.kind(), err.offset()), (ErrorKind::InvalidState, 0));
        assert_eq!(e.end(false).unwrap_err().kind(), ErrorKind::InvalidState);
        assert_eq!(e.remaining(), 0);

        // A message without a body is over with its head.
        e.request_head(&reqmod(false, None)).unwrap();
        let n = e.remaining() as u64;
        let err = e.data(Bytes::from_static(b"x")).unwrap_err();
        assert_eq!((err.kind(), err.offset()), (ErrorKind::InvalidState, n));

        // After the end of a body: no more data, no second end.
        e.request_head(&reqmod(true, None)).unwrap();
        e.data(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(
            e.request_head(&reqmod(false, None)).unwrap_err().kind(),
            ErrorKind::InvalidState,
            "a head inside a body"
        );
        e.end(false).unwrap();
        let n = e.remaining() as u64;
        let err = e.data(Bytes::from_static(b"late")).unwrap_err();
        assert_eq!((err.kind(), err.offset()), (ErrorKind::InvalidState, n));
        assert_eq!(e.end(false).unwrap_err().kind(), ErrorKind::InvalidState);
        assert_eq!(
            e.end_use_original_body(0).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        assert_eq!(e.remaining() as u64, n, "refused calls queue nothing");
        assert!(e.to_bytes().ends_with(b"3\r\nabc\r\n0\r\n\r\n"));
    }

    #[test]
    fn a_preview_may_continue_or_be_followed_by_the_next_head() {
        let mut e = Encoder::new();
        e.request_head(&reqmod(true, Some(2))).unwrap();
        e.data(Bytes::from_static(b"ab")).unwrap();
        e.end(false).unwrap();
        // 100 Continue: the rest, then its end.
        e.data(Bytes::from_static(b"cd")).unwrap();
        e.end(false).unwrap();
        assert!(e.data(Bytes::from_static(b"x")).is_err());
        // A final answer to the preview: the next request's head.
        e.request_head(&reqmod(true, Some(2))).unwrap();
        e.end(false).unwrap();
        e.request_head(&reqmod(false, None)).unwrap();
        // ieof ends the body for good.
        e.request_head(&reqmod(true, Some(2))).unwrap();
        e.end(true).unwrap();
        assert!(e.data(Bytes::from_static(b"x")).is_err());
    }
}
