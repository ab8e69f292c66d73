//! The streaming decoders: [`RequestDecoder`] (server role) and [`ResponseDecoder`] (client
//! role).
//!
//! Push bytes in ([`Decoder::feed`], [`Decoder::feed_bytes`] without a copy, or read straight
//! into [`Decoder::buffer_mut`]) and pull events ([`RequestEvent`], [`ResponseEvent`]) out with
//! [`Decoder::decode`] until it returns `Ok(None)`. A message yields one `Head` (ICAP head plus
//! encapsulated HTTP heads, once all have arrived), zero or more `Data` pieces of de-chunked
//! body, each a `Bytes` view of the input, and `End`. Messages follow each other on one
//! connection, so after `End` the next `Head` may come at once. Body data can also be taken
//! as borrowed slices without events ([`Decoder::decode_with`]: the cheapest way, for a
//! consumer that scans or copies it), or with small chunks joined into larger `Data` pieces
//! ([`Decoder::set_coalesce`]: a copy, for a consumer that pays per piece).
//!
//! A decoder kept for a connection allocates nothing per message once warm (tests/alloc.rs):
//! input, header offsets and events are slices of buffers it reclaims once the caller has
//! dropped the previous messages.
//!
//! Preview (RFC 3507 4.5) needs one decision from outside: after a preview without `ieof`
//! the decoder reports [`RequestEvent::PreviewEnd`] and waits; the server then calls
//! [`RequestDecoder::continue_after_preview`] if it sent `100 Continue`, or
//! [`RequestDecoder::finish_after_preview`] if it sent a final answer. The decoder owns framing
//! only; what a server may answer, and when, belongs to a transaction layer above it.

use bytes::{Bytes, BytesMut};

use crate::proto::chunked::{Chunk, ChunkedDecoder, Input, LastChunk};
use crate::proto::encapsulated::Encapsulated;
use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::fields::{parse_block, ready_arena, Fields, Headers};
use crate::proto::grammar::decimal;
use crate::proto::head::{
    parse_head, parse_request_line, parse_status_line, scan_head, HttpRequestHead,
    HttpResponseHead, Method, RequestLine, StatusLine,
};
use crate::proto::limits::Limits;
use crate::proto::message::{BodyKind, Request, Response};

/// What a [`RequestDecoder`] produced.
// Not boxed: one head per message moves through here, and a box would be an allocation per
// message on a path that makes none.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestEvent {
    /// A request's ICAP head and encapsulated HTTP heads.
    Head(Request),
    /// A piece of de-chunked body, a view of the input buffer.
    Data(Bytes),
    /// A preview ended without `ieof`: the client waits for `100 Continue` or a final answer.
    /// Tell the decoder which with [`RequestDecoder::continue_after_preview`] or
    /// [`RequestDecoder::finish_after_preview`]. Until then `decode` returns `Ok(None)` and
    /// bytes fed meanwhile are only buffered, without a limit: a server should stop reading
    /// until it decides (a client must not send before the answer anyway).
    PreviewEnd,
    /// The request is complete.
    End(LastChunk),
}

/// What a [`ResponseDecoder`] produced. Responses have no preview, so no `PreviewEnd`.
#[allow(clippy::large_enum_variant)] // not boxed, as `RequestEvent`
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseEvent {
    /// A response's ICAP head and encapsulated HTTP heads.
    Head(Response),
    /// A piece of de-chunked body, a view of the input buffer.
    Data(Bytes),
    /// The response is complete.
    End(LastChunk),
}

/// The two message kinds a [`Decoder`] can produce, each with its own event type. Sealed:
/// implemented by [`Request`] and [`Response`] only.
pub trait Message: sealed::Sealed {
    /// What a decoder of this message kind yields: [`RequestEvent`] or [`ResponseEvent`].
    type Event: std::fmt::Debug;
}
impl Message for Request {
    type Event = RequestEvent;
}
impl Message for Response {
    type Event = ResponseEvent;
}

/// The role-specific half of decoding, out of the public API: only this module implements it.
mod sealed {
    use super::*;

    pub trait Sealed: Sized {
        /// The parsed start line of this role's ICAP head.
        type Line: std::fmt::Debug;
        /// Parses a whole ICAP head; `fields` (with where they start) when the header block was
        /// already parsed in one pass with finding the head's end. Returns the start line, the
        /// header fields, the Encapsulated, and the preview size when its body is a preview.
        #[allow(clippy::type_complexity)]
        fn parse_head(
            dec: &mut Decoder<Self>,
            raw: Bytes,
            at: u64,
            fields: Option<(usize, Fields)>,
        ) -> Result<(Self::Line, Headers, Option<Encapsulated>, Option<u64>)>
        where
            Self: Message;
        /// Folded lines in this role's ICAP head: `Some(max joined length)` for responses.
        fn fold(limits: &Limits) -> Option<usize>;
        /// The role's head event, built from its parts where `step` returns it: the message
        /// (~500 bytes) is written once, into the returned value, instead of being built early
        /// and moved through each call on the way out.
        fn head(
            line: Self::Line,
            headers: Headers,
            http_request: Option<HttpRequestHead>,
            http_response: Option<HttpResponseHead>,
            body: Option<BodyKind>,
        ) -> <Self as Message>::Event
        where
            Self: Message;
        /// A body piece.
        fn data(d: Bytes) -> <Self as Message>::Event
        where
            Self: Message;
        /// A preview ended without `ieof` (requests only: a response has no preview budget).
        fn preview_end() -> <Self as Message>::Event
        where
            Self: Message;
        /// The end of a message.
        fn end(l: LastChunk) -> <Self as Message>::Event
        where
            Self: Message;
    }
}

#[derive(Debug)]
enum State<M: sealed::Sealed> {
    /// Waiting for the ICAP head; `scanned` bytes of the buffer are known to hold no end.
    Icap { scanned: usize },
    /// ICAP head parsed; waiting for `heads` bytes of encapsulated HTTP heads. Only when
    /// they had not all arrived with the ICAP head. Not boxed, though large: a box would be an
    /// allocation per message read in pieces.
    Heads {
        line: M::Line,
        headers: Headers,
        enc: Encapsulated,
        at: u64,
        preview: Option<u64>,
    },
    /// In a chunked body.
    Body {
        chunked: ChunkedDecoder,
        preview: bool,
    },
    /// A message without body has been reported; its `End` comes next.
    EndPending,
    /// A preview ended without ieof; waiting for the caller's decision.
    AwaitPreview { total: u64 },
    /// An error was returned; the stream cannot be trusted any more.
    Failed,
}

/// A streaming ICAP decoder for one direction of one connection.
///
/// Feed it bytes as they arrive, in pieces of any size, and take events out until it says it
/// needs more (`Ok(None)`). Heads come whole; body pieces are views of the input.
///
/// ```
/// use icap::{RequestDecoder, RequestEvent};
///
/// let mut dec = RequestDecoder::default();
/// // A RESPMOD with a 4-byte preview, split where a socket might split it.
/// dec.feed(b"RESPMOD icap://av.example/respmod ICAP/1.0\r\nHost: av.example\r\n");
/// assert!(dec.decode()?.is_none()); // the head is not complete yet
/// dec.feed(b"Preview: 4\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\n");
/// dec.feed(b"HTTP/1.1 200 OK\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n");
/// let Some(RequestEvent::Head(req)) = dec.decode()? else { panic!() };
/// assert_eq!((req.preview(), req.http_response.as_ref().map(|h| h.status)), (Some(4), Some(200)));
/// assert!(matches!(dec.decode()?, Some(RequestEvent::Data(d)) if &d[..] == b"wxyz"));
/// assert!(matches!(dec.decode()?, Some(RequestEvent::PreviewEnd)));
/// // The server answers (100 Continue, 204 ...); the decoder waits for what comes next.
/// assert!(dec.decode()?.is_none());
/// # Ok::<(), icap::Error>(())
/// ```
#[derive(Debug)]
pub struct Decoder<M: Message> {
    /// The decoder's own buffer: what `feed` copies in and `buffer_mut` reads into.
    buf: BytesMut,
    /// A caller's buffer given to `feed_bytes` while nothing else was buffered: decoded in
    /// place, shared or not, and handed out in slices. At most one of `buf` and `shared`
    /// holds bytes; the input is whichever does.
    shared: Bytes,
    /// Stream offset of `buf[0]`.
    consumed: u64,
    limits: Limits,
    state: State<M>,
    /// Responses: the method of the request being answered, for Encapsulated rules.
    expect: Option<Method>,
    /// Where parsed header fields' offsets are packed: one shared buffer, reclaimed once the
    /// heads that point into it are dropped, so a steady stream of messages allocates nothing.
    spans: BytesMut,
    /// Body pieces shorter than this are joined with the chunks after them (0: never); see
    /// [`Decoder::set_coalesce`].
    coalesce: usize,
    /// Where joined pieces are copied: reclaimed in place like `spans`.
    joined: BytesMut,
}

/// Bytes [`Decoder::feed`] makes room for when it must grow the buffer.
const FEED_ROOM: usize = 8 * 1024;

/// Decodes ICAP requests: the server side of a connection.
pub type RequestDecoder = Decoder<Request>;
/// Decodes ICAP responses: the client side of a connection.
///
/// ```
/// use icap::{ResponseDecoder, ResponseEvent};
///
/// let mut dec = ResponseDecoder::default();
/// dec.feed(b"ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nEncapsulated: res-hdr=0, res-body=45\r\n\r\n");
/// dec.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\n7\r\nblocked\r\n0\r\n\r\n");
/// let Some(ResponseEvent::Head(res)) = dec.decode()? else { panic!() };
/// assert_eq!((res.status, res.http_response.as_ref().unwrap().status), (200, 403));
/// assert!(matches!(dec.decode()?, Some(ResponseEvent::Data(d)) if &d[..] == b"blocked"));
/// assert!(matches!(dec.decode()?, Some(ResponseEvent::End(last)) if !last.ieof));
/// assert!(dec.is_idle()); // ready for the next answer on a kept-alive connection
/// # Ok::<(), icap::Error>(())
/// ```
pub type ResponseDecoder = Decoder<Response>;

impl<M: Message> Default for Decoder<M> {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl<M: Message> Decoder<M> {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            buf: BytesMut::new(),
            shared: Bytes::new(),
            consumed: 0,
            limits,
            state: State::Icap { scanned: 0 },
            expect: None,
            spans: BytesMut::new(),
            coalesce: 0,
            joined: BytesMut::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends bytes (copying them) for the next [`Decoder::decode`].
    pub fn feed(&mut self, bytes: &[u8]) {
        self.unshare();
        let room = self.buf.capacity() - self.buf.len();
        // Room for more reads, made while nothing is buffered (when the previous messages
        // have usually been dropped and the buffer is reclaimed in place): a message often
        // comes in several reads, and once its first part is split off (a parsed ICAP head
        // waiting for its HTTP heads) growing the buffer allocates.
        if room < bytes.len() || (self.buf.is_empty() && room < FEED_ROOM / 2) {
            self.buf.reserve(bytes.len().max(FEED_ROOM));
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a buffer. When the decoder holds no unread bytes (always between messages,
    /// and inside a body, whose framing is kept as state), `bytes` is decoded where it is,
    /// shared or not: body pieces and heads are slices of it, nothing is copied, and the
    /// decoder drops its hold once every byte is decoded. Otherwise (a head cut short by the
    /// previous read) the unread bytes and `bytes` are copied together.
    pub fn feed_bytes(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.buf.is_empty() && self.shared.is_empty() {
            self.shared = bytes;
        } else {
            self.feed(&bytes);
        }
    }

    /// The caller's buffer's unread bytes, moved into the decoder's own before it grows.
    fn unshare(&mut self) {
        if !self.shared.is_empty() {
            let rest = std::mem::take(&mut self.shared);
            self.buf.extend_from_slice(&rest);
        }
    }

    /// The input buffer, to read into directly (e.g. `socket.read_buf(dec.buffer_mut())`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        self.unshare();
        &mut self.buf
    }

    /// Bytes received but not decoded yet.
    pub fn buffered(&self) -> &[u8] {
        if self.shared.is_empty() {
            &self.buf
        } else {
            &self.shared
        }
    }

    /// Stream offset of the next undecoded byte: bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// True between messages: nothing of a message has been decoded or buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Icap { .. }) && self.buffered().is_empty()
    }

    /// True after an error: the connection must be closed, never reused.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed;
        e
    }

    fn take(&mut self, n: usize) -> Bytes {
        self.consumed += n as u64;
        if self.shared.is_empty() {
            self.buf.split_to(n).freeze()
        } else {
            self.shared.split_to(n)
        }
    }

    /// Decodes the next event from buffered bytes; `Ok(None)` means more input is needed
    /// (or, after [`RequestEvent::PreviewEnd`], a decision). After an error every call fails again.
    ///
    /// An event is as large as the head it may carry (about 500 bytes). In a loop over many
    /// small body pieces, match it inside the `Result` (`Ok(Some(ResponseEvent::Data(d)))`)
    /// rather than taking it out first with `?`: taking it out moves the whole event once per
    /// piece. [`Self::decode_with`] hands body data out as borrowed slices, with no event.
    pub fn decode(&mut self) -> Result<Option<M::Event>> {
        if let State::Body { .. } = self.state {
            return self.body_step();
        }
        // Returned as it came, without a look at it (`step` marks the decoder failed
        // itself): a result kept to be looked at is copied whole, as large as a head.
        self.step()
    }

    /// An empty view still holds the caller's buffer (`advance` keeps it): let go, so the
    /// caller can reuse its buffer for the next read. Called where a body or message ends.
    fn release_shared(&mut self) {
        if self.shared.is_empty() {
            self.shared = Bytes::new();
        }
    }

    /// Call when the peer closed the connection. `Ok(())` when it closed between messages;
    /// an [`ErrorKind::UnexpectedEof`] error when a message was cut short.
    pub fn decode_eof(&mut self) -> Result<()> {
        // Only whole blank lines may sit between messages, as in `decode`.
        let input = self.buffered();
        let blank = input.len() % 2 == 0 && input.chunks_exact(2).all(|c| c == b"\r\n");
        match self.state {
            State::Icap { .. } if blank => Ok(()),
            State::Failed => Err(Error::new(
                ErrorKind::InvalidState,
                self.consumed,
                "the decoder has already failed",
            )),
            _ => {
                let at = self.consumed + self.buffered().len() as u64;
                Err(self.fail(Error::new(
                    ErrorKind::UnexpectedEof,
                    at,
                    "connection closed in the middle of a message",
                )))
            }
        }
    }

    /// Resumable search for the end of the ICAP head in `buf[..limit]`, `scanned` bytes of
    /// which are known to hold no end: the head's length, or `None` (state updated) when more
    /// bytes are needed.
    fn scan_icap(&mut self, scanned: usize, limit: usize) -> Result<Option<usize>> {
        let from = scanned.saturating_sub(3);
        let found = scan_head(&self.buffered()[..limit], from).map_err(|e| e.at(self.consumed))?;
        let Some(n) = found else {
            if self.buffered().len() > self.limits.max_icap_head {
                return Err(Error::new(
                    ErrorKind::IcapHeadTooLarge,
                    self.consumed + self.limits.max_icap_head as u64,
                    format!("ICAP head longer than {} bytes", self.limits.max_icap_head),
                ));
            }
            self.state = State::Icap {
                scanned: self.buffered().len(),
            };
            return Ok(None);
        };
        if n > self.limits.max_icap_head {
            return Err(Error::new(
                ErrorKind::IcapHeadTooLarge,
                self.consumed + self.limits.max_icap_head as u64,
                format!(
                    "ICAP head is {n} bytes, over the limit of {}",
                    self.limits.max_icap_head
                ),
            ));
        }
        Ok(Some(n))
    }

    /// The encapsulated HTTP heads (all buffered, starting at stream offset `at`) of the ICAP
    /// head `line` + `headers`: parses them, moves on to the body, and returns the head event.
    #[inline(always)]
    fn finish_heads(
        &mut self,
        line: M::Line,
        headers: Headers,
        enc: Encapsulated,
        at: u64,
        preview: Option<u64>,
    ) -> Result<Option<M::Event>> {
        let need = enc.heads_len() as usize;
        let (mut req, mut res) = (None, None);
        if need > 0 {
            // Moved, not sliced, into a section that fills it (one refcount less).
            let mut raw = Some(self.take(need));
            for (section, start, end) in enc.head_ranges() {
                if start == end {
                    continue;
                }
                let part = match raw.take_if(|_| start == 0 && end as usize == need) {
                    Some(all) => all,
                    None => raw
                        .as_ref()
                        .expect("only a section that fills the heads takes them")
                        .slice(start as usize..end as usize),
                };
                let base = at + start;
                match section {
                    crate::Section::ReqHdr => {
                        match HttpRequestHead::parse_in(
                            part,
                            self.limits.max_headers,
                            &mut self.spans,
                        ) {
                            Ok(h) => req = Some(h),
                            Err(e) => return Err(self.fail(e.at(base))),
                        }
                    }
                    _ => {
                        match HttpResponseHead::parse_in(
                            part,
                            self.limits.max_headers,
                            self.limits.max_folded_value,
                            &mut self.spans,
                        ) {
                            Ok(h) => res = Some(h),
                            Err(e) => return Err(self.fail(e.at(base))),
                        }
                    }
                }
            }
        }
        let body = BodyKind::from_section(enc.body());
        if body.is_some() {
            let mut chunked = ChunkedDecoder::new(&self.limits);
            let preview = match preview {
                Some(p) => {
                    chunked = chunked.with_budget(p, ErrorKind::PreviewOverrun);
                    true
                }
                None => false,
            };
            self.state = State::Body { chunked, preview };
        } else {
            self.state = State::EndPending;
        }
        Ok(Some(M::head(line, headers, req, res, body)))
    }

    // Not inlined into `decode`: body pieces take a short path there, which should not pay
    // for the registers the head path needs.
    #[inline(never)]
    fn step(&mut self) -> Result<Option<M::Event>> {
        loop {
            match &mut self.state {
                State::Icap { scanned } => {
                    let scanned = *scanned;
                    // Empty lines between messages are tolerated (RFC 7230 3.5): whole CRLF
                    // pairs only. A stray CR or LF is left to the head scan, which rejects it
                    // at its own offset (a bare LF) or as part of a bad start line.
                    let pairs = self
                        .buffered()
                        .chunks_exact(2)
                        .take_while(|c| *c == b"\r\n")
                        .count();
                    if pairs > 0 {
                        let _ = self.take(2 * pairs);
                        self.state = State::Icap { scanned: 0 };
                        continue;
                    }
                    // Never look past the limit: what lies beyond it must not change the
                    // error (a bare LF there would otherwise win when the bytes come at once).
                    let limit = self.buffered().len().min(self.limits.max_icap_head);
                    // First look at a message: find its end and parse its header lines in one
                    // pass. Anything but a complete, well-formed head (and every later look,
                    // when bytes trickle in) takes the resumable scan below.
                    ready_arena(&mut self.spans);
                    let fast = if scanned == 0 {
                        parse_head(
                            if self.shared.is_empty() {
                                &self.buf[..limit]
                            } else {
                                &self.shared[..limit]
                            },
                            self.limits.max_headers,
                            M::fold(&self.limits),
                            &mut self.spans,
                        )
                    } else {
                        None
                    };
                    let (n, fields) = match fast {
                        Some((n, hstart, fields)) => (n, Some((hstart, fields))),
                        None => match self.scan_icap(scanned, limit) {
                            Ok(Some(n)) => (n, None),
                            Ok(None) => return Ok(None),
                            Err(e) => return Err(self.fail(e)),
                        },
                    };
                    let at = self.consumed;
                    let raw = self.take(n);
                    let (line, headers, enc, preview) = match M::parse_head(self, raw, at, fields) {
                        Ok(parts) => parts,
                        Err(e) => return Err(self.fail(e)),
                    };
                    match enc {
                        None => {
                            // No Encapsulated header: nothing follows the head.
                            self.state = State::EndPending;
                            return Ok(Some(M::head(line, headers, None, None, None)));
                        }
                        Some(enc) => {
                            let heads = enc.heads_len();
                            if heads > self.limits.max_http_head as u64 {
                                return Err(self.fail(Error::new(
                                    ErrorKind::HttpHeadTooLarge,
                                    self.consumed,
                                    format!(
                                        "Encapsulated announces {heads} bytes of HTTP heads, over the limit of {}",
                                        self.limits.max_http_head
                                    ),
                                )));
                            }
                            let at = self.consumed;
                            if self.buffered().len() as u64 >= heads {
                                return self.finish_heads(line, headers, enc, at, preview);
                            }
                            self.state = State::Heads {
                                line,
                                headers,
                                enc,
                                at,
                                preview,
                            };
                        }
                    }
                }
                State::Heads { enc, .. } => {
                    let need = enc.heads_len() as usize;
                    if self.buffered().len() < need {
                        return Ok(None);
                    }
                    let State::Heads {
                        line,
                        headers,
                        enc,
                        at,
                        preview,
                    } = std::mem::replace(&mut self.state, State::Failed)
                    else {
                        unreachable!("matched above")
                    };
                    return self.finish_heads(line, headers, enc, at, preview);
                }
                State::Body { .. } => return self.body_step(),
                State::EndPending => {
                    self.release_shared();
                    self.state = State::Icap { scanned: 0 };
                    return Ok(Some(M::end(LastChunk::default())));
                }
                State::AwaitPreview { .. } => return Ok(None),
                State::Failed => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        self.consumed,
                        "the decoder has already failed; close the connection",
                    ))
                }
            }
        }
    }
}

/// The next body piece from `buf`: a view, or with `coalesce` a joined copy of small ones.
#[inline(always)]
fn body_piece<I: Input>(
    chunked: &mut ChunkedDecoder,
    buf: &mut I,
    base: &mut u64,
    joined: &mut BytesMut,
    coalesce: usize,
) -> Result<Option<Chunk>> {
    if coalesce == 0 {
        chunked.decode_from(buf, base)
    } else {
        chunked.decode_coalesced(buf, base, joined, coalesce)
    }
}

/// Body data without events: borrowed slices, and small pieces joined.
impl<M: Message> Decoder<M> {
    /// [`Decoder::decode`], with body data handed to `on_data` as slices of the input
    /// instead of returned as `Data` events: no `Bytes` per piece, no refcount, no event
    /// moved. Returns the other events as `decode` does (`Head`, `End`, `PreviewEnd`) and
    /// `Ok(None)` when more input is needed; never `Data`. Inside a body one call hands out
    /// every piece buffered, in order, then returns the end of the body if it is buffered too.
    ///
    /// Each slice is valid only during its call: copy or scan it there. Limits, errors and
    /// their offsets are those of `decode`; on an error `on_data` has had every piece before
    /// it. Calls to `decode` and `decode_with` may be mixed freely, each piece going to one.
    ///
    /// ```
    /// use icap::{ResponseDecoder, ResponseEvent};
    ///
    /// let mut dec = ResponseDecoder::default();
    /// dec.feed(b"ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\n");
    /// dec.feed(b"HTTP/1.1 200 OK\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    /// let mut body = Vec::new();
    /// assert!(matches!(dec.decode_with(|d| body.extend_from_slice(d))?, Some(ResponseEvent::Head(_))));
    /// assert!(matches!(dec.decode_with(|d| body.extend_from_slice(d))?, Some(ResponseEvent::End(_))));
    /// assert_eq!(body, b"abcdefg");
    /// # Ok::<(), icap::Error>(())
    /// ```
    pub fn decode_with(&mut self, mut on_data: impl FnMut(&[u8])) -> Result<Option<M::Event>> {
        let State::Body { chunked, preview } = &mut self.state else {
            return self.decode();
        };
        let preview = *preview;
        let got = if self.shared.is_empty() {
            chunked.decode_slices(&mut self.buf, &mut self.consumed, &mut on_data)
        } else {
            let got = chunked.decode_slices(&mut self.shared, &mut self.consumed, &mut on_data);
            if self.shared.is_empty() {
                self.shared = Bytes::new();
            }
            got
        };
        match got {
            Err(e) => Err(self.fail(e)),
            Ok(None) => Ok(None),
            Ok(Some(last)) => {
                let total = chunked.total();
                Ok(Some(self.body_end(last, preview, total)))
            }
        }
    }

    /// Joins small body pieces: from now on a `Data` event from [`Decoder::decode`] that
    /// would carry fewer than `up_to` bytes, while more chunks are buffered behind it, carries
    /// the data of the whole chunks after it that fit too (up to `up_to` bytes in all), copied
    /// into one buffer the decoder reuses once the caller has dropped earlier pieces. Pieces
    /// of `up_to` bytes or more, and a piece that ends what is buffered, stay views of the
    /// input (no copy); a chunk that does not fit starts the next piece; no piece waits for
    /// more input. `0` (the default) turns it off.
    ///
    /// For bodies sent in many small chunks (1 KiB and below), when the consumer pays per
    /// piece (a write, a channel send, a scanner call): the copy costs about what a `memcpy`
    /// of the joined bytes costs. An error found after a joined piece is reported by the
    /// next call, at the same offset as without joining.
    ///
    /// ```
    /// use icap::{ResponseDecoder, ResponseEvent};
    ///
    /// let mut dec = ResponseDecoder::default();
    /// dec.set_coalesce(16 * 1024);
    /// dec.feed(b"ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\n");
    /// dec.feed(b"HTTP/1.1 200 OK\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    /// assert!(matches!(dec.decode()?, Some(ResponseEvent::Head(_))));
    /// assert!(matches!(dec.decode()?, Some(ResponseEvent::Data(d)) if &d[..] == b"abcdefg"));
    /// assert!(matches!(dec.decode()?, Some(ResponseEvent::End(_))));
    /// # Ok::<(), icap::Error>(())
    /// ```
    pub fn set_coalesce(&mut self, up_to: usize) {
        self.coalesce = up_to;
    }

    /// The setting of [`Decoder::set_coalesce`].
    pub fn coalesce(&self) -> usize {
        self.coalesce
    }

    /// [`Decoder::decode`] inside a body. Marks the decoder failed on an error itself, so
    /// that `decode` can return its result as it is (a result kept to be looked at is copied
    /// whole, as large as a head, once per body piece).
    #[inline(always)]
    fn body_step(&mut self) -> Result<Option<M::Event>> {
        let State::Body { chunked, preview } = &mut self.state else {
            unreachable!("only called in a body")
        };
        let preview = *preview;
        if self.coalesce == 0 {
            // The common piece, taken without building a `Chunk`.
            let got = if self.shared.is_empty() {
                chunked.data_piece(&mut self.buf, &mut self.consumed)
            } else {
                chunked.data_piece(&mut self.shared, &mut self.consumed)
            };
            match got {
                Ok(Some(d)) => {
                    self.release_shared();
                    return Ok(Some(M::data(d)));
                }
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        let State::Body { chunked, .. } = &mut self.state else {
            unreachable!("only called in a body")
        };
        let got = if self.shared.is_empty() {
            body_piece(
                chunked,
                &mut self.buf,
                &mut self.consumed,
                &mut self.joined,
                self.coalesce,
            )
        } else {
            let got = body_piece(
                chunked,
                &mut self.shared,
                &mut self.consumed,
                &mut self.joined,
                self.coalesce,
            );
            // Inline `release_shared` (`chunked` borrows the state).
            if self.shared.is_empty() {
                self.shared = Bytes::new();
            }
            got
        };
        match got {
            Ok(Some(Chunk::Data(d))) => Ok(Some(M::data(d))),
            Ok(None) => Ok(None),
            Ok(Some(Chunk::Last(last))) => {
                let total = chunked.total();
                Ok(Some(self.body_end(last, preview, total)))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The event for the end of a body: `PreviewEnd` for a preview without `ieof` (waiting
    /// for the caller's decision), else `End`.
    fn body_end(&mut self, last: LastChunk, preview: bool, total: u64) -> M::Event {
        if preview && !last.ieof {
            self.state = State::AwaitPreview { total };
            return M::preview_end();
        }
        self.state = State::Icap { scanned: 0 };
        M::end(last)
    }
}

impl Decoder<Request> {
    /// After [`RequestEvent::PreviewEnd`]: the server sent `100 Continue`, so the rest of the body
    /// follows as more chunks (counted together with the preview).
    pub fn continue_after_preview(&mut self) -> Result<()> {
        let State::AwaitPreview { total } = self.state else {
            return Err(Error::new(
                ErrorKind::InvalidState,
                self.consumed,
                "continue_after_preview called when no preview is waiting",
            ));
        };
        let mut chunked = ChunkedDecoder::new(&self.limits);
        if let Some(max) = self.limits.max_body {
            chunked = chunked.with_budget(max.saturating_sub(total), ErrorKind::BodyTooLarge);
        }
        self.state = State::Body {
            chunked,
            preview: false,
        };
        Ok(())
    }

    /// After [`RequestEvent::PreviewEnd`]: the server answered with a final response (204, 200 ...),
    /// so the client sends nothing more for this message; the next bytes are a new request.
    pub fn finish_after_preview(&mut self) -> Result<()> {
        if !matches!(self.state, State::AwaitPreview { .. }) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                self.consumed,
                "finish_after_preview called when no preview is waiting",
            ));
        }
        self.state = State::Icap { scanned: 0 };
        Ok(())
    }

    /// For passive observers that see only the client's bytes (captures, taps), which cannot
    /// see whether the server sent `100 Continue`: guesses from the buffered bytes whether a
    /// chunk-size line follows (the client continued) or a new request starts. `None` when
    /// too few bytes are buffered to tell. A server must not use this: it knows what it sent.
    pub fn next_looks_like_chunk(&self) -> Option<bool> {
        let input = self.buffered();
        let digits = input.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        match input.get(digits) {
            None => None,
            Some(b';' | b'\r' | b' ' | b'\t') => Some(digits > 0),
            Some(_) => Some(false),
        }
    }

    /// True while a preview waits for [`Self::continue_after_preview`] or
    /// [`Self::finish_after_preview`].
    pub fn awaiting_preview_decision(&self) -> bool {
        matches!(self.state, State::AwaitPreview { .. })
    }
}

impl Decoder<Response> {
    /// Tells the decoder which method the next response answers, so that its Encapsulated
    /// header is checked against that method's rules (RFC 3507 4.4.1). Without it, any list
    /// that is legal for some method passes.
    pub fn expect_response_to(&mut self, method: Option<Method>) {
        self.expect = method;
    }
}

/// The `Encapsulated` value and (when `want_preview`) the first `Preview` value, found in one
/// walk over the fields; a second `Encapsulated` is an error.
fn icap_fields(
    headers: &Headers,
    at: u64,
    want_preview: bool,
) -> Result<(Option<Encapsulated>, Option<&[u8]>)> {
    let (mut enc, mut dup, mut preview) = (None, false, None);
    for (n, v) in headers.iter_names_of_len(12, if want_preview { 7 } else { 12 }) {
        if is_name(n, b"encapsulated") {
            dup |= enc.is_some();
            enc.get_or_insert(v);
        } else if want_preview && preview.is_none() && is_name(n, b"preview") {
            preview = Some(v);
        }
    }
    let Some(v) = enc else {
        return Ok((None, preview));
    };
    if dup {
        return Err(Error::new(
            ErrorKind::DuplicateEncapsulated,
            at,
            "more than one Encapsulated header",
        ));
    }
    let enc = Encapsulated::parse(v).map_err(|e| {
        Error::new(
            e.kind(),
            at,
            format!("{} (at byte {} of the value)", e.message(), e.offset()),
        )
    })?;
    Ok((Some(enc), preview))
}

/// `name == lower`, ignoring ASCII case, where `lower` is lowercase letters only: then a byte
/// matches exactly when it equals its letter with bit 5 (the case bit) set, so the names are
/// compared eight bytes a step instead of lowercasing byte by byte.
#[inline]
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(u8::is_ascii_lowercase));
    if name.len() != lower.len() {
        return false;
    }
    let word = |s: &[u8], k: usize| {
        let mut w = [0u8; 8];
        let part = &s[k..(k + 8).min(s.len())];
        w[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(w)
    };
    (0..name.len())
        .step_by(8)
        .all(|k| word(name, k) | 0x2020_2020_2020_2020 == word(lower, k) | 0x2020_2020_2020_2020)
}

/// Parses a start line from a head's bytes (and where the one pass found its end).
type LineParser<L> = fn(&Bytes, Option<usize>) -> Result<(L, usize)>;

/// The start line and header fields of an ICAP head: the fields from the one pass when it
/// succeeded, else parsed now (after the start line, so that its error comes first; folded
/// lines allowed with `fold`, joined up to that many bytes).
fn split_head<L>(
    raw: Bytes,
    at: u64,
    fields: Option<(usize, Fields)>,
    max_headers: usize,
    fold: Option<usize>,
    parse_line: LineParser<L>,
    arena: &mut BytesMut,
) -> Result<(L, Headers)> {
    let (line, hstart) = parse_line(&raw, fields.as_ref().map(|f| f.0)).map_err(|e| e.at(at))?;
    let fields = match fields {
        Some((_, f)) => f,
        None => match parse_block(&raw, hstart, max_headers, fold, arena).map_err(|e| e.at(at))? {
            Some((n, f)) if n == raw.len() => f,
            _ => {
                return Err(Error::new(
                    ErrorKind::BadHeader,
                    at,
                    "the ICAP head's header block does not end where the head does",
                ))
            }
        },
    };
    Ok((line, Headers::from_fields(raw, fields)))
}

impl sealed::Sealed for Request {
    type Line = RequestLine;

    #[inline]
    fn parse_head(
        dec: &mut Decoder<Request>,
        raw: Bytes,
        at: u64,
        fields: Option<(usize, Fields)>,
    ) -> Result<(RequestLine, Headers, Option<Encapsulated>, Option<u64>)> {
        let (line, headers) = split_head(
            raw,
            at,
            fields,
            dec.limits.max_headers,
            None,
            parse_request_line,
            &mut dec.spans,
        )?;
        let (enc, preview) = icap_fields(&headers, at, true)?;
        match &enc {
            Some(e) => e.check_request(&line.method).map_err(|e| e.at(at))?,
            None if matches!(line.method, Method::Reqmod | Method::Respmod) => {
                return Err(Error::new(
                    ErrorKind::MissingEncapsulated,
                    at,
                    format!("{} request without an Encapsulated header", line.method),
                ))
            }
            None => {}
        }
        let mut budget = None;
        if let Some(p) = preview {
            let p = decimal(p).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadPreview,
                    at,
                    format!(
                        "Preview {:?} is not a decimal number",
                        String::from_utf8_lossy(p)
                    ),
                )
            })?;
            if p > dec.limits.max_preview {
                return Err(Error::new(
                    ErrorKind::PreviewTooLarge,
                    at,
                    format!(
                        "Preview of {p} bytes is over the limit of {}",
                        dec.limits.max_preview
                    ),
                ));
            }
            if matches!(line.method, Method::Reqmod | Method::Respmod) {
                budget = Some(p);
            }
        }
        Ok((line, headers, enc, budget))
    }

    fn fold(_: &Limits) -> Option<usize> {
        None
    }

    #[inline(always)]
    fn head(
        line: RequestLine,
        headers: Headers,
        http_request: Option<HttpRequestHead>,
        http_response: Option<HttpResponseHead>,
        body: Option<BodyKind>,
    ) -> RequestEvent {
        RequestEvent::Head(Request {
            method: line.method,
            uri: line.uri,
            version: line.version,
            headers,
            http_request,
            http_response,
            body,
        })
    }
    fn data(d: Bytes) -> RequestEvent {
        RequestEvent::Data(d)
    }
    fn preview_end() -> RequestEvent {
        RequestEvent::PreviewEnd
    }
    fn end(l: LastChunk) -> RequestEvent {
        RequestEvent::End(l)
    }
}

impl sealed::Sealed for Response {
    type Line = StatusLine;

    #[inline]
    fn parse_head(
        dec: &mut Decoder<Response>,
        raw: Bytes,
        at: u64,
        fields: Option<(usize, Fields)>,
    ) -> Result<(StatusLine, Headers, Option<Encapsulated>, Option<u64>)> {
        let (line, headers) = split_head(
            raw,
            at,
            fields,
            dec.limits.max_headers,
            Some(dec.limits.max_folded_value),
            parse_status_line,
            &mut dec.spans,
        )?;
        let (enc, _) = icap_fields(&headers, at, false)?;
        // 100 and 204 end with their head, whatever Encapsulated says (RFC 3507 4.5, 4.6):
        // reading a body after them would take the next response's bytes as this one's.
        let enc = match line.status {
            100 | 204 => None,
            _ => enc,
        };
        if let Some(e) = &enc {
            e.check_response(dec.expect.as_ref())
                .map_err(|e| e.at(at))?;
        }
        Ok((line, headers, enc, None))
    }

    fn fold(limits: &Limits) -> Option<usize> {
        Some(limits.max_folded_value)
    }

    #[inline(always)]
    fn head(
        line: StatusLine,
        headers: Headers,
        http_request: Option<HttpRequestHead>,
        http_response: Option<HttpResponseHead>,
        body: Option<BodyKind>,
    ) -> ResponseEvent {
        ResponseEvent::Head(Response {
            version: line.version,
            status: line.status,
            reason: line.reason,
            headers,
            http_request,
            http_response,
            body,
        })
    }
    fn data(d: Bytes) -> ResponseEvent {
        ResponseEvent::Data(d)
    }
    fn preview_end() -> ResponseEvent {
        unreachable!("responses have no preview: their parse_head gives no preview budget")
    }
    fn end(l: LastChunk) -> ResponseEvent {
        ResponseEvent::End(l)
    }
}
