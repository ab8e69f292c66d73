//! Chunked framing of encapsulated bodies (RFC 7230 4.1 as used by RFC 3507 4.4): decoding,
//! with the ICAP chunk extensions `ieof` and `use-original-body=N`, and encoding.
//!
//! The decoder is a byte-level state machine that can stop after any byte and resume, so a
//! body fed one byte at a time decodes exactly like one fed whole, and it never holds bytes
//! back: chunk data leaves as `Bytes` views split off the input buffer (no copy), and a
//! partial chunk-size line is remembered as state, not as buffered text. Only the rare parts
//! that must be seen whole (extensions on a size line, trailers) are gathered, under limits.
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
    /// Inside `;ext...`, gathered into `ext`.
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
}

/// A resumable decoder for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: usize,
    ext: Vec<u8>,
    total: u64,
    budget: Option<(u64, ErrorKind)>,
    trailer_scanned: usize,
    /// Stream offset where the current size line began, for errors about its content.
    line_start: u64,
    pending_last: Option<LastChunk>,
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

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
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
            budget: limits.max_body.map(|m| (m, ErrorKind::BodyTooLarge)),
            trailer_scanned: 0,
            line_start: 0,
            pending_last: None,
            max_chunk_line: limits.max_chunk_line,
            max_trailer: limits.max_trailer,
            max_headers: limits.max_headers,
        }
    }

    /// Caps the de-chunked body at `max` bytes, reporting `kind` when a chunk would pass it
    /// (used for previews: [`ErrorKind::PreviewOverrun`]). Checked at the size line, before
    /// any byte of the offending chunk is accepted.
    pub fn with_budget(mut self, max: u64, kind: ErrorKind) -> Self {
        self.budget = Some(match self.budget {
            Some((m, k)) if m - self.total.min(m) < max => (m, k),
            _ => (self.total + max, kind),
        });
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
    pub(crate) fn decode_from<I: Input>(
        &mut self,
        buf: &mut I,
        base: &mut u64,
    ) -> Result<Option<Chunk>> {
        let mut i = 0;
        let err = |kind, at: usize, msg: String| Err(Error::new(kind, *base + at as u64, msg));
        loop {
            match self.state {
                State::Data => {
                    // Anything consumed before the data is framing; drop it first.
                    if i > 0 {
                        buf.advance(i);
                        *base += i as u64;
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (self.remaining.min(buf.len() as u64)) as usize;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    *base += n as u64;
                    return Ok(Some(Chunk::Data(buf.take(n))));
                }
                State::Trailer => {
                    if i > 0 {
                        buf.advance(i);
                        *base += i as u64;
                    }
                    return self.trailer(buf, base);
                }
                State::Done => {
                    if i > 0 {
                        buf.advance(i);
                        *base += i as u64;
                    }
                    return Ok(None);
                }
                // Whole, well-formed framing at the front: taken in one step. Anything else
                // (a line cut short, bad bytes, limits) goes byte by byte below, which finds
                // the same values or reports the error at its byte.
                State::Start if self.line_len == 0 => {
                    if let Some(line) = size_line(&buf[i..], self.max_chunk_line) {
                        self.line_start = *base + i as u64;
                        self.size = line.size;
                        if line.size > 0 && line.ext.0 == line.ext.1 {
                            // The common data chunk: no extensions to read or check.
                            i += line.len;
                            self.start_data(self.line_start)?;
                            continue;
                        }
                        let ext = &buf[i + line.ext.0..i + line.ext.1];
                        let ext = parse_ext_in(ext, self.line_start)?;
                        i += line.len;
                        self.after_size_line(ext, self.line_start)?;
                        continue;
                    }
                }
                State::DataCr if buf.get(i..i + 2) == Some(b"\r\n") => {
                    i += 2;
                    self.state = State::Start;
                    continue;
                }
                _ => {}
            }
            let Some(&b) = buf.get(i) else {
                buf.advance(i);
                *base += i as u64;
                return Ok(None);
            };
            match self.state {
                // The limit is on the line without its CRLF.
                State::Start | State::Size | State::SizeWs | State::Ext if b != b'\r' => {
                    self.line_len += 1;
                    if self.line_len > self.max_chunk_line {
                        return err(
                            ErrorKind::ChunkLineTooLong,
                            i,
                            format!("chunk-size line longer than {} bytes", self.max_chunk_line),
                        );
                    }
                }
                _ => {}
            }
            match (self.state, b) {
                (State::Start, _) => match hex(b) {
                    Some(d) => {
                        self.line_start = *base + i as u64;
                        self.size = d;
                        self.state = State::Size;
                    }
                    None => {
                        return err(
                            ErrorKind::BadChunkSize,
                            i,
                            format!("chunk size must start with a hex digit, found 0x{b:02x}"),
                        )
                    }
                },
                (State::Size, _) if hex(b).is_some() => {
                    let d = hex(b).expect("checked");
                    self.size = match self.size.checked_mul(16) {
                        Some(s) => s + d,
                        None => {
                            return err(
                                ErrorKind::ChunkSizeOverflow,
                                i,
                                "chunk size does not fit in 64 bits".into(),
                            )
                        }
                    };
                }
                (State::Size | State::SizeWs, b' ' | b'\t') => self.state = State::SizeWs,
                (State::Size | State::SizeWs, b';') => {
                    self.ext.clear();
                    self.state = State::Ext;
                }
                (State::Size | State::SizeWs | State::Ext, b'\r') => self.state = State::SizeLf,
                (State::Size | State::SizeWs | State::Ext, b'\n') => {
                    return err(
                        ErrorKind::BareLf,
                        i,
                        "chunk-size line ends in a bare LF".into(),
                    )
                }
                (State::Size | State::SizeWs, _) => {
                    return err(
                        ErrorKind::BadChunkSize,
                        i,
                        format!("unexpected byte 0x{b:02x} in chunk size"),
                    )
                }
                (State::Ext, _) => {
                    if b < 0x20 && b != b'\t' || b == 0x7f {
                        return err(
                            ErrorKind::BadChunkExtension,
                            i,
                            format!("control byte 0x{b:02x} in a chunk extension"),
                        );
                    }
                    self.ext.push(b);
                }
                (State::SizeLf, b'\n') => {
                    self.line_len = 0;
                    self.end_size_line(self.line_start)?;
                }
                (State::SizeLf, _) => {
                    return err(
                        ErrorKind::MissingChunkCrlf,
                        i,
                        "CR not followed by LF after chunk size".into(),
                    )
                }
                (State::DataCr, b'\r') => self.state = State::DataLf,
                (State::DataLf, b'\n') => self.state = State::Start,
                (State::DataCr | State::DataLf, _) => {
                    return err(
                        ErrorKind::MissingChunkCrlf,
                        i,
                        format!("chunk data is not followed by CRLF (found 0x{b:02x})"),
                    )
                }
                (State::Data | State::Trailer | State::Done, _) => unreachable!("handled above"),
            }
            i += 1;
        }
    }

    /// Acts on a complete size line: checks extensions and limits, picks the next state.
    fn end_size_line(&mut self, at: u64) -> Result<()> {
        let ext = self.parse_ext(at)?;
        self.after_size_line(ext, at)
    }

    /// [`Self::end_size_line`] once the extensions are read.
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
    fn start_data(&mut self, at: u64) -> Result<()> {
        if let Some((max, kind)) = self.budget {
            if self.total.saturating_add(self.size) > max {
                let what = if kind == ErrorKind::PreviewOverrun {
                    "the preview announced"
                } else {
                    "the body limit of"
                };
                return Err(Error::new(
                    kind,
                    at,
                    format!(
                        "a {}-byte chunk after {} bytes passes {what} {max} bytes",
                        self.size, self.total
                    ),
                ));
            }
        }
        self.total += self.size;
        self.remaining = self.size;
        self.state = State::Data;
        Ok(())
    }

    fn parse_ext(&mut self, at: u64) -> Result<LastChunk> {
        let out = parse_ext_in(&self.ext, at)?;
        self.ext.clear();
        Ok(out)
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

/// A size line whole at the front of a buffer, as [`size_line`] finds it.
struct SizeLine {
    size: u64,
    /// The extension text after `;`, without it (empty when none).
    ext: (usize, usize),
    /// Bytes through the CRLF.
    len: usize,
}

/// A well-formed size line complete at the front of `rest`: 1 to 16 hex digits, optional
/// SP/HTAB, optional `;` and extension text without control bytes, CRLF; at most `max_line`
/// bytes before the CR. `None` for anything else, which the byte-wise machine then handles.
fn size_line(rest: &[u8], max_line: usize) -> Option<SizeLine> {
    let mut size = 0u64;
    let mut k = 0;
    while let Some(d) = rest.get(k).and_then(|&b| hex(b)) {
        if k == 16 {
            return None;
        }
        size = size << 4 | d;
        k += 1;
    }
    if k == 0 {
        return None;
    }
    while matches!(rest.get(k), Some(b' ' | b'\t')) {
        k += 1;
    }
    let mut ext = (k, k);
    if rest.get(k) == Some(&b';') {
        let from = k + 1;
        let cr = from
            + rest
                .get(from..)?
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')?;
        if rest[from..cr]
            .iter()
            .any(|&b| b < 0x20 && b != b'\t' || b == 0x7f)
        {
            return None;
        }
        ext = (from, cr);
        k = cr;
    }
    if k > max_line || rest.get(k..k + 2) != Some(b"\r\n") {
        return None;
    }
    Some(SizeLine {
        size,
        ext,
        len: k + 2,
    })
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
