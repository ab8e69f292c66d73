//! Chunked framing of encapsulated bodies (RFC 7230 4.1 as used by RFC 3507 4.4): decoding,
//! with the ICAP chunk extensions `ieof` and `use-original-body=N`, and encoding.
//!
//! One parser reads the framing (`ChunkedDecoder::next`): it runs over a complete size line
//! in one pass and can stop after any byte and resume where it stopped, so a body fed one
//! byte at a time decodes exactly like one fed whole, each byte looked at once, and every
//! error (kind and offset) is found at the byte that shows it, limits included, before the
//! line completes. It never holds bytes back: chunk data leaves as views of the input (a
//! `Bytes` split off it, or a borrowed slice), and a partial size line is remembered as
//! state. Only the rare parts that must be seen whole are gathered, under limits: the
//! extension text of a size line split between reads, and trailers.
//! Which chunk ends a preview, and what that means, is the decoder's concern one layer up.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};
use crate::headers::Headers;
use crate::limits::Limits;

/// What the chunked decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes, a view of the input buffer. One chunk on the wire may arrive as several.
    Data(Bytes),
    /// The last chunk and its trailers have been read.
    Last(LastChunk),
}

/// What the zero-size chunk said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastChunk {
    /// The `ieof` extension was present: the body ended inside a preview.
    pub ieof: bool,
    /// `use-original-body=N` (in a 206): the rest of the body is the original from offset N.
    pub use_original_body: Option<u64>,
    /// Trailer fields after the last chunk, if any.
    pub trailers: Option<Headers>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a size line.
    Start,
    /// Reading hex digits.
    Size,
    /// Whitespace after the digits.
    SizeWs,
    /// Inside `;ext...`.
    Ext,
    /// Saw CR of the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after data.
    DataCr,
    /// Expecting LF after data.
    DataLf,
    /// After the last-chunk line: trailers or the final CRLF.
    Trailer,
    /// The body is complete.
    Done,
    /// An error found while data before it was still to be handed out (coalescing); the
    /// next call reports it.
    Deferred,
}

/// A resumable decoder for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    /// Bytes of the current size line before its CR read by earlier calls: with the line
    /// limit, where the next call must stop looking.
    line_len: usize,
    /// Extension text of a size line split across calls (the part read so far). A line read
    /// in one call is checked where it lies in the input, never copied here.
    ext: Vec<u8>,
    total: u64,
    /// Most de-chunked bytes allowed (`u64::MAX`: no limit), and the error for passing it.
    limit: u64,
    limit_kind: ErrorKind,
    trailer_scanned: usize,
    /// Stream offset where the current size line began, for errors about its content.
    line_start: u64,
    pending_last: Option<LastChunk>,
    deferred: Option<Error>,
    max_chunk_line: usize,
    max_trailer: usize,
    max_headers: usize,
}

/// A buffer the chunked decoder reads from: bytes at the front, consumed from the front.
pub(crate) trait Input: std::ops::Deref<Target = [u8]> + Buf {
    /// The first `n` bytes, split off as a `Bytes` without copying.
    fn take(&mut self, n: usize) -> Bytes;
}

impl Input for BytesMut {
    fn take(&mut self, n: usize) -> Bytes {
        self.split_to(n).freeze()
    }
}

impl Input for Bytes {
    fn take(&mut self, n: usize) -> Bytes {
        self.split_to(n)
    }
}

/// What [`ChunkedDecoder::next`] found at the front of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `skip` bytes of framing (consumed), then `len` bytes of chunk data (consumed too).
    Data { skip: usize, len: usize },
    /// `skip` bytes of framing consumed and nothing more to hand out from this slice: it is
    /// used up, or the last-chunk line has been read (trailers next) or the body is done.
    More { skip: usize },
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

/// Bytes that may not appear in a chunk extension (HTAB aside, the controls).
fn ext_ctl(b: u8) -> bool {
    b < 0x20 && b != b'\t' || b == 0x7f
}

impl ChunkedDecoder {
    /// A decoder for one body under `limits` (chunk line, trailer size, body size).
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: State::Start,
            size: 0,
            remaining: 0,
            line_len: 0,
            ext: Vec::new(),
            total: 0,
            limit: limits.max_body.unwrap_or(u64::MAX),
            limit_kind: ErrorKind::BodyTooLarge,
            trailer_scanned: 0,
            line_start: 0,
            pending_last: None,
            deferred: None,
            max_chunk_line: limits.max_chunk_line,
            max_trailer: limits.max_trailer,
            max_headers: limits.max_headers,
        }
    }

    /// Caps the de-chunked body at `max` bytes, reporting `kind` when a chunk would pass it
    /// (used for previews: [`ErrorKind::PreviewOverrun`]). Checked at the size line, before
    /// any byte of the offending chunk is accepted.
    pub fn with_budget(mut self, max: u64, kind: ErrorKind) -> Self {
        // A tighter limit already in force stays (with its own error kind).
        if self.limit == u64::MAX || self.limit - self.total.min(self.limit) >= max {
            self.limit = self.total.saturating_add(max);
            self.limit_kind = kind;
        }
        self
    }

    /// De-chunked bytes produced so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True once the last chunk and trailers are read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `buf`, which starts at stream offset `base`; consumed bytes
    /// are removed from `buf` and `base` advanced. Returns `Ok(None)` when `buf` is used up
    /// and more is needed; after `Chunk::Last` the decoder is done and leaves the rest of
    /// `buf` (the next message) alone.
    pub fn decode(&mut self, buf: &mut BytesMut, base: &mut u64) -> Result<Option<Chunk>> {
        self.decode_from(buf, base)
    }

    /// [`ChunkedDecoder::decode`] from either kind of input buffer: the decoder's own, or a
    /// caller's `Bytes` decoded in place.
    #[inline]
    pub(crate) fn decode_from<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
    ) -> Result<Option<Chunk>> {
        match self.next(buf, *base, usize::MAX)? {
            Step::Data { skip, len } => {
                buf.advance(skip);
                *base += (skip + len) as u64;
                Ok(Some(Chunk::Data(buf.take(len))))
            }
            Step::More { skip } => {
                buf.advance(skip);
                *base += skip as u64;
                self.after_more(buf, base)
            }
        }
    }

    /// What follows a [`Step::More`] once its framing is consumed: the trailers, when the
    /// last-chunk line has been read.
    pub(crate) fn after_more<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
    ) -> Result<Option<Chunk>> {
        match self.state {
            State::Trailer => self.trailer(buf, base),
            _ => Ok(None),
        }
    }

    /// Decodes every chunk whole or partly in `buf` (stream offset `base`), handing each
    /// piece of data to `f` as a slice of `buf`: no `Bytes` made, nothing copied. Consumed
    /// bytes are removed from `buf` once, at the end. `Some` after the last chunk and its
    /// trailers; `None` when `buf` is used up. On an error, `f` has had every piece before it.
    #[inline]
    pub(crate) fn decode_slices<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
        f: &mut impl FnMut(&[u8]),
    ) -> Result<Option<LastChunk>> {
        let mut pos = 0;
        let mut failed = None;
        loop {
            match self.next(&buf[pos..], *base + pos as u64, usize::MAX) {
                Ok(Step::Data { skip, len }) => {
                    f(&buf[pos + skip..pos + skip + len]);
                    pos += skip + len;
                }
                Ok(Step::More { skip }) => {
                    pos += skip;
                    break;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        buf.advance(pos);
        *base += pos as u64;
        if let Some(e) = failed {
            return Err(e);
        }
        match self.after_more(buf, base)? {
            Some(Chunk::Last(last)) => Ok(Some(last)),
            _ => Ok(None),
        }
    }

    /// [`ChunkedDecoder::decode_from`], but a piece shorter than `up_to` that does not end
    /// the buffered bytes is handed out as a copy joined with the data of the chunks after
    /// it (up to `up_to` bytes in all), made in `scratch`.
    pub(crate) fn decode_coalesced<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
        scratch: &mut BytesMut,
        up_to: usize,
    ) -> Result<Option<Chunk>> {
        match self.next(buf, *base, usize::MAX)? {
            Step::Data { skip, len } if len >= up_to || skip + len == buf.len() => {
                buf.advance(skip);
                *base += (skip + len) as u64;
                Ok(Some(Chunk::Data(buf.take(len))))
            }
            Step::Data { skip, len } => {
                // Reclaimed in place once the caller has dropped the previous pieces.
                scratch.reserve(up_to);
                scratch.extend_from_slice(&buf[skip..skip + len]);
                buf.advance(skip + len);
                *base += (skip + len) as u64;
                self.gather(buf, base, scratch, up_to - len);
                Ok(Some(Chunk::Data(scratch.split().freeze())))
            }
            Step::More { skip } => {
                buf.advance(skip);
                *base += skip as u64;
                self.after_more(buf, base)
            }
        }
    }

    /// Copies the data of the chunks buffered after a piece into `out` (at most `room` bytes
    /// more), consuming their framing; stops before the last chunk's trailers. An error met
    /// after some data was copied waits for the next call, so that data goes out first.
    pub(crate) fn gather<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
        out: &mut BytesMut,
        mut room: usize,
    ) {
        let mut pos = 0;
        while room > 0 {
            match self.next(&buf[pos..], *base + pos as u64, room) {
                Ok(Step::Data { skip, len }) => {
                    out.extend_from_slice(&buf[pos + skip..pos + skip + len]);
                    pos += skip + len;
                    room -= len;
                }
                Ok(Step::More { skip }) => {
                    pos += skip;
                    break;
                }
                Err(e) => {
                    self.deferred = Some(e);
                    self.state = State::Deferred;
                    break;
                }
            }
        }
        buf.advance(pos);
        *base += pos as u64;
    }

    /// The one chunk-framing parser: reads framing from the front of `buf` (stream offset
    /// `base`) up to the next piece of data (at most `max_data` bytes of it), resuming
    /// wherever the previous call stopped, even inside a size line. Each byte is looked at
    /// once: a line arriving a byte at a time costs what it costs whole.
    #[inline]
    pub(crate) fn next(&mut self, buf: &[u8], base: u64, max_data: usize) -> Result<Step> {
        let mut i = 0;
        loop {
            match self.state {
                State::Data => {
                    if i == buf.len() {
                        return Ok(Step::More { skip: i });
                    }
                    let n = (self.remaining.min((buf.len() - i) as u64) as usize).min(max_data);
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step::Data { skip: i, len: n });
                }
                State::DataCr => match buf.get(i..i + 2) {
                    Some(b"\r\n") => {
                        i += 2;
                        self.state = State::Start;
                    }
                    _ => match buf.get(i) {
                        None => return Ok(Step::More { skip: i }),
                        Some(b'\r') => {
                            i += 1;
                            self.state = State::DataLf;
                        }
                        Some(&b) => return Err(Self::missing_crlf(base + i as u64, b)),
                    },
                },
                State::DataLf => match buf.get(i) {
                    None => return Ok(Step::More { skip: i }),
                    Some(b'\n') => {
                        i += 1;
                        self.state = State::Start;
                    }
                    Some(&b) => return Err(Self::missing_crlf(base + i as u64, b)),
                },
                State::Trailer | State::Done => return Ok(Step::More { skip: i }),
                State::Deferred => {
                    return Err(self.deferred.take().expect("a deferred error is kept"))
                }
                State::Start | State::Size | State::SizeWs | State::Ext | State::SizeLf => {
                    i = self.size_line(buf, i, base)?;
                    if self.in_line() {
                        // Out of input inside the line.
                        return Ok(Step::More { skip: i });
                    }
                }
            }
        }
    }

    fn missing_crlf(at: u64, b: u8) -> Error {
        Error::new(
            ErrorKind::MissingChunkCrlf,
            at,
            format!("chunk data is not followed by CRLF (found 0x{b:02x})"),
        )
    }

    /// Reads a size line, or as much of it as `buf[i..]` holds, from where the last call
    /// stopped. Returns where it stopped: after the line's LF (the state then says what
    /// follows), or at the end of `buf` (the state remembers where in the line).
    ///
    /// Errors are reported at the byte that shows them, as bytes arrive: a line longer than
    /// `max_chunk_line` (CRLF not counted) at its first byte past the limit, whatever that
    /// byte is; extension names and values once the line is complete, at the line's start.
    #[inline]
    fn size_line(&mut self, buf: &[u8], mut i: usize, base: u64) -> Result<usize> {
        let from = i;
        // Index of the first byte past the line limit.
        let over = from.saturating_add(self.max_chunk_line - self.line_len);
        let err = |kind, at: usize, msg: String| Err(Error::new(kind, base + at as u64, msg));
        let too_long = |at: usize, max: usize| {
            err(
                ErrorKind::ChunkLineTooLong,
                at,
                format!("chunk-size line longer than {max} bytes"),
            )
        };
        // The extension text read by this call: from after `;` (or `from`, resumed inside it).
        let mut ext_from = (self.state == State::Ext).then_some(from);
        let mut ext_to = from;
        loop {
            let Some(&b) = buf.get(i) else { break };
            match self.state {
                State::Start => {
                    if b != b'\r' && i >= over {
                        return too_long(i, self.max_chunk_line);
                    }
                    let Some(d) = hex(b) else {
                        return err(
                            ErrorKind::BadChunkSize,
                            i,
                            format!("chunk size must start with a hex digit, found 0x{b:02x}"),
                        );
                    };
                    self.line_start = base + i as u64;
                    self.size = d;
                    self.state = State::Size;
                    i += 1;
                }
                State::Size => {
                    let mut size = self.size;
                    while let Some(d) = buf.get(i).and_then(|&b| hex(b)) {
                        if i >= over {
                            return too_long(i, self.max_chunk_line);
                        }
                        if size >> 60 != 0 {
                            return err(
                                ErrorKind::ChunkSizeOverflow,
                                i,
                                "chunk size does not fit in 64 bits".into(),
                            );
                        }
                        size = size << 4 | d;
                        i += 1;
                    }
                    self.size = size;
                    let Some(&b) = buf.get(i) else { break };
                    i = self.after_size(b, i, over, base)?;
                    if self.state == State::Ext {
                        ext_from = Some(i);
                    }
                }
                State::SizeWs => {
                    i = self.after_size(b, i, over, base)?;
                    if self.state == State::Ext {
                        ext_from = Some(i);
                    }
                }
                State::Ext => {
                    // Run to the CR, the limit, or the end of what is here.
                    let end = buf.len().min(over);
                    while i < end && !ext_ctl(buf[i]) {
                        i += 1;
                    }
                    ext_to = i;
                    let Some(&b) = buf.get(i) else { break };
                    match b {
                        b'\r' => {
                            self.state = State::SizeLf;
                            i += 1;
                        }
                        _ if i >= over => return too_long(i, self.max_chunk_line),
                        b'\n' => {
                            return err(
                                ErrorKind::BareLf,
                                i,
                                "chunk-size line ends in a bare LF".into(),
                            )
                        }
                        _ => {
                            return err(
                                ErrorKind::BadChunkExtension,
                                i,
                                format!("control byte 0x{b:02x} in a chunk extension"),
                            )
                        }
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return err(
                            ErrorKind::MissingChunkCrlf,
                            i,
                            "CR not followed by LF after chunk size".into(),
                        );
                    }
                    i += 1;
                    self.line_len = 0;
                    let at = self.line_start;
                    match ext_from {
                        None if self.ext.is_empty() => {
                            if self.size > 0 {
                                self.start_data(at)?;
                            } else {
                                self.after_size_line(LastChunk::default(), at)?;
                            }
                        }
                        None => {
                            let ext = parse_ext_in(&self.ext, at)?;
                            self.ext.clear();
                            self.after_size_line(ext, at)?;
                        }
                        Some(e) if self.ext.is_empty() => {
                            let ext = parse_ext_in(&buf[e..ext_to], at)?;
                            self.after_size_line(ext, at)?;
                        }
                        Some(e) => {
                            self.ext.extend_from_slice(&buf[e..ext_to]);
                            let ext = parse_ext_in(&self.ext, at)?;
                            self.ext.clear();
                            self.after_size_line(ext, at)?;
                        }
                    }
                    return Ok(i);
                }
                _ => unreachable!("size_line is only called inside a size line"),
            }
        }
        // Out of input inside the line: remember how much of it was read, and its extension
        // text so far (bounded by the line limit).
        let crlf = match self.state {
            State::SizeLf => 1,
            _ => {
                ext_to = i;
                0
            }
        };
        self.line_len += i - from - crlf.min(i - from);
        if let Some(e) = ext_from {
            self.ext.extend_from_slice(&buf[e..ext_to]);
        }
        Ok(i)
    }
}

impl ChunkedDecoder {
    fn in_line(&self) -> bool {
        matches!(
            self.state,
            State::Start | State::Size | State::SizeWs | State::Ext | State::SizeLf
        )
    }

    /// The byte after a size's digits (or after whitespace following them), at `i`.
    fn after_size(&mut self, b: u8, i: usize, over: usize, base: u64) -> Result<usize> {
        let at = base + i as u64;
        if b != b'\r' && i >= over {
            return Err(Error::new(
                ErrorKind::ChunkLineTooLong,
                at,
                format!("chunk-size line longer than {} bytes", self.max_chunk_line),
            ));
        }
        self.state = match b {
            b' ' | b'\t' => State::SizeWs,
            b';' => State::Ext,
            b'\r' => State::SizeLf,
            b'\n' => {
                return Err(Error::new(
                    ErrorKind::BareLf,
                    at,
                    "chunk-size line ends in a bare LF",
                ))
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::BadChunkSize,
                    at,
                    format!("unexpected byte 0x{b:02x} in chunk size"),
                ))
            }
        };
        Ok(i + 1)
    }

    /// Acts on a complete size line (at `at`) once its extensions are read: picks the next
    /// state.
    fn after_size_line(&mut self, ext: LastChunk, at: u64) -> Result<()> {
        if self.size == 0 {
            self.pending_last = Some(ext);
            self.state = State::Trailer;
            self.trailer_scanned = 0;
            return Ok(());
        }
        if ext.ieof || ext.use_original_body.is_some() {
            return Err(Error::new(
                ErrorKind::BadChunkExtension,
                at,
                "ieof and use-original-body belong on the last (zero-size) chunk",
            ));
        }
        self.start_data(at)
    }

    /// A data chunk of `self.size` bytes whose size line (at `at`) is read: checks the budget
    /// and moves on to its data.
    #[inline]
    fn start_data(&mut self, at: u64) -> Result<()> {
        // `total <= limit` always: a chunk is only accepted within it.
        if self.size > self.limit - self.total {
            return Err(self.over_limit(at));
        }
        self.total += self.size;
        self.remaining = self.size;
        self.state = State::Data;
        Ok(())
    }

    #[cold]
    fn over_limit(&self, at: u64) -> Error {
        let what = if self.limit_kind == ErrorKind::PreviewOverrun {
            "the preview announced"
        } else {
            "the body limit of"
        };
        Error::new(
            self.limit_kind,
            at,
            format!(
                "a {}-byte chunk after {} bytes passes {what} {} bytes",
                self.size, self.total, self.limit
            ),
        )
    }

    fn trailer<I: Input>(&mut self, buf: &mut I, base: &mut u64) -> Result<Option<Chunk>> {
        if buf.len() < 2 {
            return Ok(None);
        }
        if &buf[..2] == b"\r\n" {
            buf.advance(2);
            *base += 2;
            return Ok(Some(self.finish(None)));
        }
        // Trailer fields: a header block ending in a blank line.
        // Scan no further than the limit, so that bytes past it cannot change the error.
        let limit = buf.len().min(self.max_trailer);
        let found =
            match crate::head::scan_head(&buf[..limit], self.trailer_scanned.saturating_sub(3)) {
                Ok(f) => f,
                Err(e) => return Err(e.at(*base)),
            };
        match found {
            Some(n) if n <= self.max_trailer => {
                let raw = buf.take(n);
                let at = *base;
                *base += n as u64;
                // Trailers are rare: their own small arena rather than the decoder's.
                let h = Headers::parse(raw, 0, n - 2, self.max_headers, None, &mut BytesMut::new())
                    .map_err(|e| Error::new(ErrorKind::BadTrailer, at + e.offset(), e.message()))?;
                Ok(Some(self.finish(Some(h))))
            }
            _ if buf.len() > self.max_trailer => Err(Error::new(
                ErrorKind::BadTrailer,
                *base + self.max_trailer as u64,
                format!("trailers longer than {} bytes", self.max_trailer),
            )),
            Some(_) | None => {
                self.trailer_scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn finish(&mut self, trailers: Option<Headers>) -> Chunk {
        self.state = State::Done;
        let mut last = self.pending_last.take().unwrap_or_default();
        last.trailers = trailers;
        Chunk::Last(last)
    }
}

/// Reads chunk extensions (the text after the first `;` of a size line).
fn parse_ext_in(ext: &[u8], at: u64) -> Result<LastChunk> {
    let mut out = LastChunk::default();
    if ext.is_empty() {
        return Ok(out);
    }
    for item in ext.split(|&b| b == b';') {
        let item = trim(item);
        if item.is_empty() {
            continue;
        }
        let (name, value) = match memchr::memchr(b'=', item) {
            Some(eq) => (trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
            None => (item, None),
        };
        if name.eq_ignore_ascii_case(b"ieof") {
            out.ieof = true;
        } else if name.eq_ignore_ascii_case(b"use-original-body") {
            let n = value.and_then(crate::decode::decimal).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadChunkExtension,
                    at,
                    "use-original-body needs a decimal offset",
                )
            })?;
            out.use_original_body = Some(n);
        } else if !crate::headers::is_token(name) {
            return Err(Error::new(
                ErrorKind::BadChunkExtension,
                at,
                format!(
                    "chunk extension name {:?} is not a token",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
    }
    Ok(out)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', r @ ..] = s {
        s = r;
    }
    while let [r @ .., b' ' | b'\t'] = s {
        s = r;
    }
    s
}

/// Writes the size line of a data chunk of `len` bytes (lower-case hex, no extensions).
pub fn write_chunk_size(len: usize, out: &mut BytesMut) {
    debug_assert!(
        len > 0,
        "a zero size line ends the body; use write_last_chunk"
    );
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    while n > 0 || i == digits.len() {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// The end of a body: `0; ieof\r\n\r\n` or `0\r\n\r\n`. Never any other extension: c-icap
/// drops the connection on unknown ones.
pub fn last_chunk(ieof: bool) -> Bytes {
    Bytes::from_static(if ieof {
        b"0; ieof\r\n\r\n"
    } else {
        b"0\r\n\r\n"
    })
}

/// The end of a 206 body: `0; use-original-body=N\r\n\r\n`.
pub fn use_original_body_chunk(offset: u64) -> Bytes {
    Bytes::from(format!("0; use-original-body={offset}\r\n\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data, last chunk, or error (kind and offset), decoding `wire` in `step`-byte pieces.
    fn run(wire: &[u8], step: usize) -> (Vec<u8>, Option<LastChunk>, Option<(ErrorKind, u64)>) {
        let limits = Limits {
            max_chunk_line: 12,
            ..Limits::default()
        };
        let mut dec = ChunkedDecoder::new(&limits).with_budget(40, ErrorKind::PreviewOverrun);
        let (mut buf, mut base, mut data) = (BytesMut::new(), 0u64, Vec::new());
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf, &mut base) {
                    Ok(Some(Chunk::Data(d))) => data.extend_from_slice(&d),
                    Ok(Some(Chunk::Last(l))) => return (data, Some(l), None),
                    Ok(None) => break,
                    Err(e) => return (data, None, Some((e.kind(), e.offset()))),
                }
            }
        }
        (data, None, None)
    }

    #[test]
    fn whole_lines_decode_like_bytes_one_at_a_time() {
        for wire in [
            &b"3\r\nabc\r\n0\r\n\r\n"[..],
            b"3 \t\r\nabc\r\n0; ieof\r\n\r\n",
            b"3;x=1;y\r\nabc\r\n0;use-original-body=7\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\nT: 1\r\n\r\n",
            b"3;ieof\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0;\x01\r\n\r\n",
            b"3\r\nabc\r\n0;a\nb\r\n\r\n",
            b"3\r\nabc\r\n0;a\rb\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3 4\r\nabc\r\n0\r\n\r\n",
            b"0000000000000003\r\nabc\r\n0\r\n\r\n",
            b"00000000000000003\r\nabc\r\n0\r\n\r\n",
            b"3;0123456789ab\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"29\r\n",
            b"g\r\n",
            b"0;bad name\r\n\r\n",
        ] {
            let whole = run(wire, wire.len());
            assert_eq!(whole, run(wire, 1), "{:?}", String::from_utf8_lossy(wire));
        }
        assert!(run(b"3\r\nabc\r\n0; ieof\r\n\r\n", 64).1.unwrap().ieof);
    }
}
