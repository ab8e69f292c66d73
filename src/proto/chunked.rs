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

use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::fields::Headers;
use crate::proto::grammar::{decimal, is_token, trim};
use crate::proto::limits::Limits;

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
#[repr(u8)]
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
    #[inline]
    fn take(&mut self, n: usize) -> Bytes {
        self.split_to(n).freeze()
    }
}

impl Input for Bytes {
    /// `split_to`, inlined where pieces are taken (that one is an out-of-line call around
    /// the same clone): one view more of the buffer, its refcount up once.
    #[inline(always)]
    fn take(&mut self, n: usize) -> Bytes {
        if n == self.len() {
            return std::mem::take(self);
        }
        // The clone of a caller's `Vec`-backed buffer is a shared view (the buffer promoted
        // once), so `truncate` only sets its length.
        let mut piece = self.clone();
        piece.truncate(n);
        self.advance(n);
        piece
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

/// Hex digit values, 0xff for bytes that are not hex digits.
static HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

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
        match self.next(buf, *base)? {
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

    /// The next piece of data in `buf` as a view, its framing consumed; `None` when there is
    /// none to take now (more input needed, or the body's end: then [`Self::decode_from`]).
    #[inline(always)]
    pub(crate) fn data_piece<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
    ) -> Result<Option<Bytes>> {
        match self.next(buf, *base)? {
            Step::Data { skip, len } => {
                buf.advance(skip);
                *base += (skip + len) as u64;
                Ok(Some(buf.take(len)))
            }
            Step::More { skip } => {
                buf.advance(skip);
                *base += skip as u64;
                Ok(None)
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
            match self.next(&buf[pos..], *base + pos as u64) {
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
    /// the buffered bytes is handed out as a copy joined with the data of the whole chunks
    /// after it that fit (up to `up_to` bytes in all), made in `scratch`.
    pub(crate) fn decode_coalesced<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
        scratch: &mut BytesMut,
        up_to: usize,
    ) -> Result<Option<Chunk>> {
        match self.next(buf, *base)? {
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

    /// Copies the data of the chunks buffered after a piece that ended a chunk into `out`,
    /// whole chunks while they fit in `room` bytes, consuming their framing; stops at a chunk
    /// that does not fit (its data left for the next piece) and before the last chunk's
    /// trailers. An error met after some data was copied waits for the next call, so that
    /// data goes out first.
    pub(crate) fn gather<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
        out: &mut BytesMut,
        mut room: usize,
    ) {
        let mut pos = 0;
        loop {
            match self.next(&buf[pos..], *base + pos as u64) {
                Ok(Step::Data { skip, len }) if self.size > room as u64 => {
                    // A chunk just begun that does not fit: give its data back.
                    self.remaining += len as u64;
                    self.state = State::Data;
                    pos += skip;
                    break;
                }
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
    /// `base`) up to the next piece of data, resuming
    /// wherever the previous call stopped, even inside a size line. Each byte is looked at
    /// once: a line arriving a byte at a time costs what it costs whole.
    #[inline(always)]
    pub(crate) fn next(&mut self, buf: &[u8], base: u64) -> Result<Step> {
        // The common sequence (the CRLF after a chunk's data, the next size line, its data)
        // runs straight through; anything else (a CRLF cut short, the end of the body)
        // takes `next_state`, one state at a time.
        let mut i = 0;
        if self.state == State::DataCr {
            if buf.get(..2) != Some(b"\r\n") {
                return self.next_state(buf, base);
            }
            i = 2;
            self.state = State::Start;
        }
        if self.state == State::Start {
            if let Some(step) = self.whole_line(buf, i, base) {
                return Ok(step);
            }
        }
        if self.in_line() {
            i = self.size_line(buf, i, base)?;
            if self.in_line() {
                // Out of input inside the line.
                return Ok(Step::More { skip: i });
            }
        }
        if self.state == State::Data && i < buf.len() {
            let n = self.remaining.min((buf.len() - i) as u64) as usize;
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.state = State::DataCr;
            }
            return Ok(Step::Data { skip: i, len: n });
        }
        let rest = self.next_state(&buf[i..], base + i as u64)?;
        Ok(match rest {
            Step::Data { skip, len } => Step::Data {
                skip: i + skip,
                len,
            },
            Step::More { skip } => Step::More { skip: i + skip },
        })
    }

    /// The common size line, read whole: at `buf[i..]` (state `Start`, so nothing of the line
    /// read before) hex digits and CRLF, a data chunk within the line limit and the body
    /// budget, and at least one byte of its data. Returns what [`Self::size_line`] and the
    /// data step after it would, with the state they would leave; `None`, with nothing
    /// changed, for any other line (extensions, the last chunk, a line cut short, an error),
    /// which the byte-by-byte parser then reads from the same byte. The general parser must
    /// keep its place in a line and check each byte against the limits as it comes; a line
    /// already whole needs none of that, one test per digit.
    #[inline(always)]
    fn whole_line(&mut self, buf: &[u8], i: usize, base: u64) -> Option<Step> {
        // At most 15 digits: the size then fits in 60 bits, with no overflow to check.
        let line = buf.get(i..)?;
        // Digits and the byte after them, looked for in one bound: running off its end is
        // a line too long for this path, or cut short, the byte parser's either way.
        let window = &line[..line.len().min(self.max_chunk_line.min(15) + 1)];
        let (mut size, mut n) = (0u64, 0);
        loop {
            let d = HEX[*window.get(n)? as usize];
            if d > 15 {
                break;
            }
            size = size << 4 | u64::from(d);
            n += 1;
        }
        let data = n + 2;
        if size == 0
            || line.get(n..data) != Some(b"\r\n")
            || line.len() == data
            || size > self.limit - self.total
        {
            return None;
        }
        let len = size.min((line.len() - data) as u64);
        self.line_start = base + i as u64;
        self.size = size;
        self.total += size;
        self.remaining = size - len;
        self.state = if self.remaining == 0 {
            State::DataCr
        } else {
            State::Data
        };
        Some(Step::Data {
            skip: i + data,
            len: len as usize,
        })
    }

    /// [`Self::next`] one state at a time, for whatever its straight path does not take.
    #[inline(never)]
    fn next_state(&mut self, buf: &[u8], base: u64) -> Result<Step> {
        let mut i = 0;
        loop {
            match self.state {
                State::Data => {
                    if i == buf.len() {
                        return Ok(Step::More { skip: i });
                    }
                    let n = self.remaining.min((buf.len() - i) as u64) as usize;
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
                        return Ok(Step::More { skip: i });
                    }
                }
            }
        }
    }

    #[cold]
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
    /// The parts of the line follow each other in the code as on the wire, so a whole line
    /// runs straight through (the state is only looked at to resume): its digits and CRLF
    /// here, inlined where pieces are taken, and what else may follow the digits (BWS, an
    /// extension, a line cut at its CR, errors) in [`Self::line_rest`], from that byte on.
    /// Errors are reported at the byte that shows them, as bytes arrive: a line longer than
    /// `max_chunk_line` (CRLF not counted) at its first byte past the limit, whatever that
    /// byte is; extension names and values once the line is complete, at the line's start.
    #[inline(always)]
    fn size_line(&mut self, buf: &[u8], mut i: usize, base: u64) -> Result<usize> {
        if self.state as u8 > State::Size as u8 {
            return self.line_rest(buf, i, base);
        }
        let from = i;
        // Index of the first byte past the line limit.
        let over = from.saturating_add(self.max_chunk_line - self.line_len);
        if self.state == State::Start {
            let Some(&b) = buf.get(i) else {
                return Ok(i);
            };
            let d = HEX[b as usize];
            if d > 15 || i >= over {
                return Err(self.bad_start(base, i, b, over));
            }
            self.line_start = base + i as u64;
            self.size = u64::from(d);
            self.state = State::Size;
            i += 1;
        }
        let mut size = self.size;
        let b = loop {
            let Some(&b) = buf.get(i) else {
                self.size = size;
                self.line_len += i - from;
                return Ok(i);
            };
            let d = HEX[b as usize];
            if d > 15 {
                break b;
            }
            if i >= over || size >> 60 != 0 {
                return Err(self.bad_digit(base, i, over));
            }
            size = size << 4 | u64::from(d);
            i += 1;
        };
        self.size = size;
        if b == b'\r' && buf.get(i + 1) == Some(&b'\n') {
            self.line_len = 0;
            let at = self.line_start;
            if size > 0 {
                self.start_data(at)?;
            } else {
                self.after_size_line(LastChunk::default(), at)?;
            }
            return Ok(i + 2);
        }
        self.line_len += i - from;
        self.line_rest(buf, i, base)
    }

    /// [`Self::size_line`] after the digits: the byte that follows them (state `Size`), BWS,
    /// the extension text, the CR and LF, and the line's end; or where the last call stopped
    /// among these.
    #[inline(never)]
    fn line_rest(&mut self, buf: &[u8], mut i: usize, base: u64) -> Result<usize> {
        let from = i;
        // Index of the first byte past the line limit.
        let over = from.saturating_add(self.max_chunk_line - self.line_len);
        let mut state = self.state;
        // The extension text read by this call: from after `;` (or `from`, resumed inside it).
        let mut ext_from = (state == State::Ext).then_some(from);
        let mut ext_to = from;
        'line: {
            if state == State::Size {
                let Some(&b) = buf.get(i) else {
                    break 'line;
                };
                state = if b == b'\r' {
                    State::SizeLf
                } else {
                    self.after_size(b, i, over, base)?
                };
                i += 1;
            }
            while state == State::SizeWs {
                let Some(&b) = buf.get(i) else {
                    break 'line;
                };
                state = self.after_size(b, i, over, base)?;
                i += 1;
            }
            if state == State::Ext {
                if ext_from.is_none() {
                    ext_from = Some(i);
                }
                // Run to the CR, the limit, or the end of what is here.
                let end = buf.len().min(over);
                while i < end && !ext_ctl(buf[i]) {
                    i += 1;
                }
                ext_to = i;
                let Some(&b) = buf.get(i) else {
                    break 'line;
                };
                match b {
                    b'\r' => {
                        state = State::SizeLf;
                        i += 1;
                    }
                    _ if i >= over => return Err(self.too_long(base, i)),
                    b'\n' => {
                        return Err(Error::new(
                            ErrorKind::BareLf,
                            base + i as u64,
                            "chunk-size line ends in a bare LF",
                        ))
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::BadChunkExtension,
                            base + i as u64,
                            format!("control byte 0x{b:02x} in a chunk extension"),
                        ))
                    }
                }
            }
            debug_assert_eq!(state, State::SizeLf);
            let Some(&b) = buf.get(i) else {
                break 'line;
            };
            if b != b'\n' {
                return Err(Self::no_lf(base + i as u64));
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
        // Out of input inside the line: remember where, how much of it was read (its CR not
        // counted), and its extension text so far (bounded by the line limit).
        self.state = state;
        let cr = usize::from(state == State::SizeLf).min(i - from);
        self.line_len += i - from - cr;
        if let Some(e) = ext_from {
            self.ext.extend_from_slice(&buf[e..ext_to]);
        }
        Ok(i)
    }

    #[cold]
    fn bad_start(&self, base: u64, i: usize, b: u8, over: usize) -> Error {
        if b != b'\r' && i >= over {
            return self.too_long(base, i);
        }
        Error::new(
            ErrorKind::BadChunkSize,
            base + i as u64,
            format!("chunk size must start with a hex digit, found 0x{b:02x}"),
        )
    }

    #[cold]
    fn bad_digit(&self, base: u64, i: usize, over: usize) -> Error {
        if i >= over {
            return self.too_long(base, i);
        }
        Error::new(
            ErrorKind::ChunkSizeOverflow,
            base + i as u64,
            "chunk size does not fit in 64 bits",
        )
    }

    #[cold]
    fn no_lf(at: u64) -> Error {
        Error::new(
            ErrorKind::MissingChunkCrlf,
            at,
            "CR not followed by LF after chunk size",
        )
    }

    #[cold]
    fn too_long(&self, base: u64, i: usize) -> Error {
        Error::new(
            ErrorKind::ChunkLineTooLong,
            base + i as u64,
            format!("chunk-size line longer than {} bytes", self.max_chunk_line),
        )
    }
}

impl ChunkedDecoder {
    /// Inside a size line (the first five states: one compare).
    #[inline(always)]
    fn in_line(&self) -> bool {
        self.state as u8 <= State::SizeLf as u8
    }

    /// The state after the byte `b` at `i`, which follows a size's digits (or whitespace
    /// after them). Not CR after digits, the common case, which the caller takes.
    #[inline(never)]
    fn after_size(&self, b: u8, i: usize, over: usize, base: u64) -> Result<State> {
        if b != b'\r' && i >= over {
            return Err(self.too_long(base, i));
        }
        match b {
            b'\r' => Ok(State::SizeLf),
            b' ' | b'\t' => Ok(State::SizeWs),
            b';' => Ok(State::Ext),
            b'\n' => Err(Error::new(
                ErrorKind::BareLf,
                base + i as u64,
                "chunk-size line ends in a bare LF",
            )),
            _ => Err(Error::new(
                ErrorKind::BadChunkSize,
                base + i as u64,
                format!("unexpected byte 0x{b:02x} in chunk size"),
            )),
        }
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
        let found = match crate::proto::head::scan_head(
            &buf[..limit],
            self.trailer_scanned.saturating_sub(3),
        ) {
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
            let n = value.and_then(decimal).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadChunkExtension,
                    at,
                    "use-original-body needs a decimal offset",
                )
            })?;
            out.use_original_body = Some(n);
        } else if !is_token(name) {
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

/// Writes the size line of a data chunk of `len` bytes (lower-case hex, no extensions).
pub(crate) fn write_chunk_size(len: usize, out: &mut BytesMut) {
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
pub(crate) fn last_chunk(ieof: bool) -> Bytes {
    Bytes::from_static(if ieof {
        b"0; ieof\r\n\r\n"
    } else {
        b"0\r\n\r\n"
    })
}

/// The end of a 206 body: `0; use-original-body=N\r\n\r\n`.
pub(crate) fn use_original_body_chunk(offset: u64) -> Bytes {
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

    /// `run` through the borrowed-slice core (`decode_slices`) or the joining one
    /// (`decode_coalesced` with pieces joined up to `join` bytes): the same data, last chunk,
    /// error and offset; joined pieces never longer than `join` unless a view.
    fn run_other(
        wire: &[u8],
        step: usize,
        join: Option<usize>,
    ) -> (Vec<u8>, Option<LastChunk>, Option<(ErrorKind, u64)>) {
        let limits = Limits {
            max_chunk_line: 12,
            ..Limits::default()
        };
        let mut dec = ChunkedDecoder::new(&limits).with_budget(40, ErrorKind::PreviewOverrun);
        let (mut buf, mut base, mut data) = (BytesMut::new(), 0u64, Vec::new());
        let mut joined = BytesMut::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                let got = match join {
                    None => dec
                        .decode_slices(&mut buf, &mut base, &mut |d| {
                            assert!(!d.is_empty());
                            data.extend_from_slice(d)
                        })
                        .map(|l| l.map(Chunk::Last)),
                    Some(n) => dec.decode_coalesced(&mut buf, &mut base, &mut joined, n),
                };
                match got {
                    Ok(Some(Chunk::Data(d))) => {
                        assert!(!d.is_empty());
                        data.extend_from_slice(&d)
                    }
                    Ok(Some(Chunk::Last(l))) => return (data, Some(l), None),
                    Ok(None) => break,
                    Err(e) => return (data, None, Some((e.kind(), e.offset()))),
                }
            }
        }
        (data, None, None)
    }

    #[test]
    fn borrowed_and_joined_pieces_are_the_same_bytes_and_errors() {
        for wire in [
            &b"3\r\nabc\r\n0\r\n\r\n"[..],
            b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n4\r\nghij\r\n0; ieof\r\n\r\n",
            b"3;x=1;y\r\nabc\r\n0;use-original-body=7\r\n\r\n",
            b"A\r\n0123456789\r\n1\r\nx\r\n0\r\nT: 1\r\n\r\n",
            b"3\r\nabc\r\n3\r\ndef\r\nZ\r\n",
            b"3\r\nabc\r\n3\r\ndef\r\n20\r\n",
            b"3\r\nabc\r\n3\r\ndefX",
            b"3\r\nabc\r\n3;0123456789ab\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0;bad name\r\n\r\n",
            b"2\r\nab\r\n1\r\nc\r\n0\r\nbad\r\n\r\n",
        ] {
            for step in [1, 2, 5, wire.len()] {
                let want = run(wire, step);
                let text = String::from_utf8_lossy(wire);
                assert_eq!(run_other(wire, step, None), want, "slices {step} {text:?}");
                for join in [1, 2, 4, 64] {
                    assert_eq!(
                        run_other(wire, step, Some(join)),
                        want,
                        "join {join} {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_joined_piece_holds_whole_consecutive_chunks_and_an_error_after_it_waits() {
        let mut dec = ChunkedDecoder::new(&Limits::default());
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n3\r\ndef\r\n2\r\ngh\r\nZ"[..]);
        let (mut base, mut joined) = (0, BytesMut::new());
        let got = dec.decode_coalesced(&mut buf, &mut base, &mut joined, 7);
        // Whole chunks up to 7 bytes: the third does not fit and starts the next piece.
        assert_eq!(got, Ok(Some(Chunk::Data(Bytes::from_static(b"abcdef")))));
        // The third chunk's size line is read; its data waits.
        assert_eq!(base, 19);
        let got = dec.decode_coalesced(&mut buf, &mut base, &mut joined, 7);
        assert_eq!(got, Ok(Some(Chunk::Data(Bytes::from_static(b"gh")))));
        let e = dec
            .decode_coalesced(&mut buf, &mut base, &mut joined, 7)
            .unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadChunkSize, 23));
        // The same with the error found while joining: the data goes out first.
        let mut dec = ChunkedDecoder::new(&Limits::default());
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n3\r\ndef\r\nZ"[..]);
        let mut base = 0;
        let got = dec.decode_coalesced(&mut buf, &mut base, &mut joined, 64);
        assert_eq!(got, Ok(Some(Chunk::Data(Bytes::from_static(b"abcdef")))));
        let e = dec
            .decode_coalesced(&mut buf, &mut base, &mut joined, 64)
            .unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadChunkSize, 16));
    }

    /// The whole-line path against the byte-by-byte parser: the same step and the same state
    /// after it, for lines it takes; nothing changed for lines it leaves.
    #[test]
    fn a_whole_line_is_read_as_the_byte_parser_reads_it() {
        let limits = Limits {
            max_chunk_line: 5,
            ..Limits::default()
        };
        let state = |d: &ChunkedDecoder| (d.state, d.size, d.remaining, d.total, d.line_start);
        for (line, taken) in [
            (&b"3\r\nabc\r\n"[..], true),
            (b"3\r\nab", true),
            (b"1f\r\nxy", true),
            (b"1F\r\nxy", true),
            (b"0000a\r\n0123456789", true),
            (b"00000a\r\n0123456789", false),
            (b"3\r\n", false),
            (b"3\r", false),
            (b"3", false),
            (b"", false),
            (b"0\r\n\r\n", false),
            (b"3;x\r\nabc", false),
            (b"3 \r\nabc", false),
            (b"3\nabc", false),
            (b"3\rxabc", false),
            (b"29\r\nabc", false),
            (b"g\r\nabc", false),
        ] {
            let text = String::from_utf8_lossy(line);
            let mut fast = ChunkedDecoder::new(&limits).with_budget(40, ErrorKind::PreviewOverrun);
            fast.total = 1;
            let before = state(&fast);
            let mut slow = fast.clone();
            let got = fast.whole_line(line, 0, 7);
            assert_eq!(got.is_some(), taken, "{text:?}");
            let Some(step) = got else {
                assert_eq!(state(&fast), before, "{text:?}");
                continue;
            };
            let mut i = slow.size_line(line, 0, 7).expect("a line taken is valid");
            let Step::Data { skip, len } = slow.next_state(&line[i..], 7 + i as u64).unwrap()
            else {
                panic!("{text:?}")
            };
            i += skip;
            assert_eq!(step, Step::Data { skip: i, len }, "{text:?}");
            assert_eq!(state(&fast), state(&slow), "{text:?}");
        }
    }

    /// `run` over a caller's `Bytes` (the input `feed_bytes` decodes in place), cut once at
    /// `cut`: what is left of the first part is joined with the second, as the decoder does.
    fn run_bytes(
        wire: &[u8],
        cut: usize,
    ) -> (Vec<u8>, Option<LastChunk>, Option<(ErrorKind, u64)>) {
        let limits = Limits {
            max_chunk_line: 12,
            ..Limits::default()
        };
        let mut dec = ChunkedDecoder::new(&limits).with_budget(40, ErrorKind::PreviewOverrun);
        let (mut base, mut data) = (0u64, Vec::new());
        let mut buf = Bytes::copy_from_slice(&wire[..cut]);
        for next in [&wire[cut..], b""] {
            loop {
                match dec.decode_from(&mut buf, &mut base) {
                    Ok(Some(Chunk::Data(d))) => data.extend_from_slice(&d),
                    Ok(Some(Chunk::Last(l))) => return (data, Some(l), None),
                    Ok(None) => break,
                    Err(e) => return (data, None, Some((e.kind(), e.offset()))),
                }
            }
            buf = [&buf[..], next].concat().into();
        }
        (data, None, None)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Bodies of whole lines (the whole-line path) decode as they do a byte at a time and
        /// cut anywhere (the byte parser), as views, slices or joined pieces, errors and
        /// offsets included: sizes in either case
        /// with leading zeros, extensions and whitespace, the budget and the line limit
        /// passed, and one byte anywhere replaced.
        #[test]
        fn whole_lines_and_bytes_agree_under_any_cut(
            chunks in proptest::collection::vec(
                (0usize..24, 0usize..12, proptest::prelude::any::<bool>(), 0u8..4),
                0..6,
            ),
            last in 0u8..3,
            flip in proptest::option::of((0usize..400, proptest::prelude::any::<u8>())),
        ) {
            let mut wire = Vec::new();
            for (size, zeros, upper, ext) in chunks {
                let hex = format!("{}{size:x}", "0".repeat(zeros));
                wire.extend_from_slice(if upper { hex.to_uppercase() } else { hex }.as_bytes());
                wire.extend_from_slice(match ext {
                    0 | 1 => &b""[..],
                    2 => b";x=1",
                    _ => b" ",
                });
                wire.extend_from_slice(b"\r\n");
                wire.extend((0..size).map(|k| b'a' + (k % 26) as u8));
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(match last {
                0 => &b"0\r\n\r\n"[..],
                1 => b"0; ieof\r\n\r\n",
                _ => b"0\r\nT: 1\r\n\r\n",
            });
            if let Some((at, b)) = flip {
                let at = at % wire.len();
                wire[at] = b;
            }
            let want = run(&wire, 1);
            proptest::prop_assert_eq!(&run(&wire, wire.len()), &want);
            // Borrowed slices and joined pieces take the whole-line path too.
            proptest::prop_assert_eq!(&run_other(&wire, wire.len(), None), &want);
            proptest::prop_assert_eq!(&run_other(&wire, wire.len(), Some(7)), &want);
            for cut in 0..=wire.len() {
                proptest::prop_assert_eq!(&run_bytes(&wire, cut), &want, "cut {}", cut);
            }
        }
    }

    /// A slow client's size line: every byte is consumed as it arrives (nothing is left in
    /// the buffer to look at again), only extension text is kept aside, and the limit is
    /// enforced at the byte that passes it, before the line ends.
    #[test]
    fn a_line_arriving_a_byte_at_a_time_is_read_once() {
        let limits = Limits::default().with_max_chunk_line(600);
        let mut line = b"00000a ;x=".to_vec();
        line.resize(500, b'v');
        line.extend_from_slice(b"\r\n0123456789\r\n");
        let mut dec = ChunkedDecoder::new(&limits);
        let (mut buf, mut base) = (BytesMut::new(), 0u64);
        let mut data = Vec::new();
        for &b in &line {
            buf.extend_from_slice(&[b]);
            match dec.decode(&mut buf, &mut base).unwrap() {
                Some(Chunk::Data(d)) => data.extend_from_slice(&d),
                Some(Chunk::Last(_)) => unreachable!(),
                None => {}
            }
            assert!(buf.is_empty(), "a byte was left for a second look");
            assert!(dec.ext.len() <= 500);
        }
        assert_eq!(data, b"0123456789");
        assert!(dec.ext.is_empty());

        let mut dec = ChunkedDecoder::new(&limits);
        let (mut buf, mut base) = (BytesMut::new(), 0u64);
        let mut at = None;
        for b in std::iter::once(b'1')
            .chain(std::iter::repeat(b' '))
            .take(10_000)
        {
            buf.extend_from_slice(&[b]);
            if let Err(e) = dec.decode(&mut buf, &mut base) {
                at = Some((e.kind(), e.offset()));
                break;
            }
        }
        assert_eq!(at, Some((ErrorKind::ChunkLineTooLong, 600)));
    }
}
