//! Header fields: an ordered, case-insensitive multimap held as one `Bytes` plus offsets.
//!
//! A parsed head keeps its bytes in one shared [`Bytes`]; each header is two offset pairs into
//! it, so parsing allocates one `Vec` per head and never copies a name or a value. Headers a
//! program adds later (and folded values, which must be joined) live in a small side buffer, so
//! the same type serves parsed and built heads. This module owns header-line syntax; start
//! lines belong to [`head`](crate::head).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};

/// Byte range into the virtual concatenation `raw ++ extra`. `u32` keeps an entry at 16
/// bytes; [`Span::new`] refuses offsets that do not fit instead of wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `None` when an offset does not fit in `u32` (only a head over 4 GiB, which the limits
    /// would have to allow, gets there).
    fn new(start: usize, end: usize) -> Option<Span> {
        Some(Span {
            start: u32::try_from(start).ok()?,
            end: u32::try_from(end).ok()?,
        })
    }

    fn len(self) -> usize {
        (self.end - self.start) as usize
    }
}

/// The error for a field that lies beyond what a [`Span`] can address.
fn span_error(pos: usize) -> Error {
    Error::new(
        ErrorKind::BadHeader,
        pos as u64,
        "header field lies more than 4 GiB into its head",
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    name: Span,
    value: Span,
}

/// Bytes of one [`Entry`] in a packed list: four little-endian `u32`s.
const PACKED: usize = 16;

/// The fields' offsets. A parsed head's are packed into a slice of the decoder's span arena (a
/// shared buffer the decoder reuses once the heads that point into it are dropped), so parsing
/// allocates nothing per message; the first edit copies them into a `Vec`.
#[derive(Clone)]
enum EntryList {
    Packed(Bytes),
    Owned(Vec<Entry>),
}

impl Default for EntryList {
    fn default() -> Self {
        EntryList::Owned(Vec::new())
    }
}

impl EntryList {
    fn len(&self) -> usize {
        match self {
            EntryList::Packed(b) => b.len() / PACKED,
            EntryList::Owned(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> Entry {
        match self {
            EntryList::Packed(b) => unpack(&b[i * PACKED..(i + 1) * PACKED]),
            EntryList::Owned(v) => v[i],
        }
    }

    fn iter(&self) -> EntryIter<'_> {
        match self {
            EntryList::Packed(b) => EntryIter::Packed(b.chunks_exact(PACKED)),
            EntryList::Owned(v) => EntryIter::Owned(v.iter()),
        }
    }

    fn last(&self) -> Option<Entry> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    /// The entries as a `Vec` to edit, unpacked on the first edit.
    fn to_mut(&mut self) -> &mut Vec<Entry> {
        if let EntryList::Packed(_) = self {
            *self = EntryList::Owned(self.iter().collect());
        }
        match self {
            EntryList::Owned(v) => v,
            EntryList::Packed(_) => unreachable!("unpacked above"),
        }
    }
}

/// The entries of an [`EntryList`] in order, without a branch per field on the packed kind.
enum EntryIter<'a> {
    Packed(std::slice::ChunksExact<'a, u8>),
    Owned(std::slice::Iter<'a, Entry>),
}

impl Iterator for EntryIter<'_> {
    type Item = Entry;

    #[inline]
    fn next(&mut self) -> Option<Entry> {
        match self {
            EntryIter::Packed(c) => c.next().map(unpack),
            EntryIter::Owned(v) => v.next().copied(),
        }
    }
}

/// One packed entry (exactly [`PACKED`] bytes).
#[inline]
fn unpack(e: &[u8]) -> Entry {
    let e: &[u8; PACKED] = e.try_into().expect("packed entries are PACKED bytes");
    let u = |k: usize| u32::from_le_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]);
    Entry {
        name: Span {
            start: u(0),
            end: u(4),
        },
        value: Span {
            start: u(8),
            end: u(12),
        },
    }
}

/// One entry as packed bytes.
#[inline]
fn pack(name: (usize, usize), value: (usize, usize)) -> [u8; PACKED] {
    let mut out = [0u8; PACKED];
    for (k, x) in [name.0, name.1, value.0, value.1].into_iter().enumerate() {
        out[4 * k..4 * k + 4].copy_from_slice(&(x as u32).to_le_bytes());
    }
    out
}

/// Bytes of packed entries a decoder's arena holds: one block serves the heads of many messages
/// and is reclaimed (not reallocated) once they are all dropped.
const ARENA_BLOCK: usize = 4096;

/// Called before a message's heads are parsed: makes room for them in `arena`. Done between
/// messages, where the previous messages' heads have usually been dropped, so that the block
/// is reclaimed in place; doing it when a head finds no room would find that message's own
/// earlier heads still holding the block, and allocate.
pub(crate) fn ready_arena(arena: &mut BytesMut) {
    if arena.capacity() - arena.len() < ARENA_BLOCK / 2 {
        arena.reserve(ARENA_BLOCK);
    }
}

/// An ordered list of header fields. Names compare case-insensitively; order and duplicates
/// are kept exactly as received or added.
#[derive(Clone, Default)]
pub struct Headers {
    raw: Bytes,
    extra: Vec<u8>,
    entries: EntryList,
}

/// Header slots on the stack for [`Headers::parse_fast`]; longer blocks take the slow path.
const FAST_HEADERS: usize = 32;

/// `tchar` of RFC 7230: the bytes allowed in a header name and a method.
pub(crate) static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = matches!(b,
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z'
            | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
            | b'^' | b'_' | b'`' | b'|' | b'~');
        i += 1;
    }
    t
};

pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| TOKEN[b as usize])
}

/// True when `v` holds a control byte other than HTAB. Written as a fold without early exit so
/// the compiler vectorises it: values are the bulk of a head.
#[inline]
fn has_ctl(v: &[u8]) -> bool {
    v.iter().fold(false, |bad, &b| {
        bad | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
    })
}

fn trim_ows(mut v: &[u8]) -> (usize, &[u8]) {
    let mut lead = 0;
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
        lead += 1;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    (lead, v)
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the header lines of `raw[start..end]`, where each line ends in CRLF (the caller
    /// has checked line endings) and the blank line that ends the head is excluded.
    ///
    /// `fold: Some(max)` accepts obs-fold continuation lines: each is joined to the previous
    /// value with one space, and a joined value longer than `max` bytes is an
    /// [`ErrorKind::FoldedValueTooLarge`] error. With `None` they are an [`ErrorKind::ObsFold`]
    /// error. Continuation lines count against `max_headers` like field lines: each costs
    /// work and, joined, memory. Error offsets are relative to `raw`.
    pub(crate) fn parse(
        raw: Bytes,
        start: usize,
        end: usize,
        max_headers: usize,
        fold: Option<usize>,
        arena: &mut BytesMut,
    ) -> Result<Headers> {
        match Self::parse_fast(&raw, start, end, max_headers, arena) {
            Some(h) => Ok(h),
            None => Self::parse_exact(raw, start, end, max_headers, fold),
        }
    }

    /// Byte-by-byte parse with exact error offsets and obs-fold; see [`Headers::parse`].
    fn parse_exact(
        raw: Bytes,
        start: usize,
        end: usize,
        max_headers: usize,
        fold: Option<usize>,
    ) -> Result<Headers> {
        let mut h = Headers {
            raw,
            extra: Vec::new(),
            entries: EntryList::Owned(Vec::with_capacity(16)),
        };
        let buf = h.raw.clone();
        let mut pos = start;
        let mut lines = 0;
        while pos < end {
            let nl = match memchr::memchr(b'\n', &buf[pos..end]) {
                Some(i) => pos + i,
                None => end,
            };
            // Line without its CR.
            let line_end = if nl > pos && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            let line = &buf[pos..line_end];
            if lines >= max_headers {
                return Err(Error::new(
                    ErrorKind::TooManyHeaders,
                    pos as u64,
                    format!("more than {max_headers} header lines (continuation lines count)"),
                ));
            }
            lines += 1;
            if matches!(line.first(), Some(b' ' | b'\t')) {
                let Some(max_value) = fold else {
                    return Err(Error::new(
                        ErrorKind::ObsFold,
                        pos as u64,
                        "folded header line (obs-fold) is not accepted here",
                    ));
                };
                h.unfold(line, pos, max_value)?;
            } else {
                let colon = memchr::memchr(b':', line).ok_or_else(|| {
                    Error::new(ErrorKind::BadHeader, pos as u64, "header line has no colon")
                })?;
                let name = &line[..colon];
                if let Some(bad) = name.iter().position(|&b| !TOKEN[b as usize]) {
                    return Err(Error::new(
                        ErrorKind::BadHeader,
                        (pos + bad) as u64,
                        format!("byte 0x{:02x} is not allowed in a header name", name[bad]),
                    ));
                }
                if name.is_empty() {
                    return Err(Error::new(
                        ErrorKind::BadHeader,
                        pos as u64,
                        "empty header name",
                    ));
                }
                let (lead, value) = trim_ows(&line[colon + 1..]);
                if has_ctl(value) {
                    let bad = value
                        .iter()
                        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
                        .unwrap_or(0);
                    return Err(Error::new(
                        ErrorKind::BadHeader,
                        (pos + colon + 1 + lead + bad) as u64,
                        format!("control byte 0x{:02x} in a header value", value[bad]),
                    ));
                }
                let vstart = pos + colon + 1 + lead;
                let name = Span::new(pos, pos + colon).ok_or_else(|| span_error(pos))?;
                let value =
                    Span::new(vstart, vstart + value.len()).ok_or_else(|| span_error(pos))?;
                h.entries.to_mut().push(Entry { name, value });
            }
            pos = nl + 1;
        }
        Ok(h)
    }

    /// The common case through `httparse::parse_headers` (SIMD, one pass): a block of at most
    /// [`FAST_HEADERS`] well-formed lines without obs-fold. Its rules for names (tchar) and
    /// values (HTAB, SP, VCHAR, obs-text; surrounding SP/HTAB trimmed) are ours, so the fields
    /// are the ones [`Headers::parse`] would find. `None` sends anything else, errors and
    /// folds included, through the byte-exact parser below, which also reports offsets.
    fn parse_fast(
        raw: &Bytes,
        start: usize,
        end: usize,
        max_headers: usize,
        arena: &mut BytesMut,
    ) -> Option<Headers> {
        let block = raw.get(..end.checked_add(2)?)?;
        let (n, entries) = parse_block(block, start, max_headers, arena)?;
        (start + n == block.len()).then(|| Headers::from_parsed(raw.clone(), entries))
    }

    /// The bytes the parsed fields point into (the whole head).
    pub(crate) fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Headers over `raw` from entries found by [`parse_block`] in the same bytes.
    pub(crate) fn from_parsed(raw: Bytes, entries: Entries) -> Headers {
        Headers {
            raw,
            extra: Vec::new(),
            entries: EntryList::Packed(entries.0),
        }
    }

    /// Joins a continuation line to the last value, through the side buffer. The value moves
    /// there on its first continuation and grows in place after that, so a long fold costs
    /// time and memory in proportion to its length, not to its length times its lines.
    fn unfold(&mut self, line: &[u8], pos: usize, max_value: usize) -> Result<()> {
        let (_, cont) = trim_ows(line);
        if has_ctl(cont) {
            return Err(Error::new(
                ErrorKind::BadHeader,
                pos as u64,
                "control byte in a folded header value",
            ));
        }
        let Some(last) = self.entries.last() else {
            return Err(Error::new(
                ErrorKind::BadHeader,
                pos as u64,
                "continuation line before any header",
            ));
        };
        if cont.is_empty() {
            return Ok(());
        }
        let sep = usize::from(last.value.len() > 0);
        let joined = last.value.len() + sep + cont.len();
        if joined > max_value {
            return Err(Error::new(
                ErrorKind::FoldedValueTooLarge,
                pos as u64,
                format!(
                    "folded header value grows to {joined} bytes, over the limit of {max_value}"
                ),
            ));
        }
        let n = self.raw.len();
        let tail = n + self.extra.len();
        let (start, end) = (last.value.start as usize, last.value.end as usize);
        let in_extra = start > n || (start == n && end > n);
        let start = if in_extra && end == tail {
            start
        } else if in_extra {
            self.extra.extend_from_within(start - n..end - n);
            tail
        } else {
            self.extra.extend_from_slice(&self.raw[start..end]);
            tail
        };
        if sep == 1 {
            self.extra.push(b' ');
        }
        self.extra.extend_from_slice(cont);
        let value = Span::new(start, n + self.extra.len()).ok_or_else(|| span_error(pos))?;
        self.entries
            .to_mut()
            .last_mut()
            .expect("checked above")
            .value = value;
        Ok(())
    }

    /// Appends `bytes` to the side buffer. Built headers only: a program that adds over
    /// 4 GiB of header text has a bug worth a panic.
    fn push_extra(&mut self, bytes: &[u8]) -> Span {
        let start = self.raw.len() + self.extra.len();
        self.extra.extend_from_slice(bytes);
        Span::new(start, start + bytes.len()).expect("headers over 4 GiB")
    }

    fn slice(&self, s: Span) -> &[u8] {
        let (start, end) = (s.start as usize, s.end as usize);
        let n = self.raw.len();
        if start >= n && !(start == n && end == n) {
            &self.extra[start - n..end - n]
        } else {
            &self.raw[start..end]
        }
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no header fields.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// The fields in order, as `(name, value)` byte slices; values have surrounding
    /// whitespace removed and folded lines joined with one space.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .map(move |e| (self.slice(e.name), self.slice(e.value)))
    }

    /// [`Headers::iter`] over the fields whose name is `a` or `b` bytes long: a cheap first
    /// cut when looking for a few known names.
    pub(crate) fn iter_names_of_len(
        &self,
        a: usize,
        b: usize,
    ) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .filter(move |e| {
                let n = (e.name.end - e.name.start) as usize;
                n == a || n == b
            })
            .map(move |e| (self.slice(e.name), self.slice(e.value)))
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of `name` as text, or `None` when absent or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// How many fields are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// True when a field named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// True when any value of `name`, read as a comma-separated list, has the element `token`
    /// (case-insensitive), as in `Allow: 204, trailers` or `Connection: close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| trim_ows(t).1.eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Adds a field at the end, keeping any fields of the same name.
    ///
    /// # Panics
    /// When `name` is not a token or `value` holds CR, LF or another control byte: a builder
    /// must not be able to produce a message that smuggles a header. Also when the fields
    /// added grow past 4 GiB.
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        assert!(is_token(name.as_bytes()), "invalid header name {name:?}");
        assert!(!has_ctl(value), "control byte in header value for {name}");
        let name = self.push_extra(name.as_bytes());
        let value = self.push_extra(trim_ows(value).1);
        self.entries.to_mut().push(Entry { name, value });
    }

    /// Sets `name` to one `value`: replaces the first field of that name in place and removes
    /// the others, or appends when absent. Panics like [`Headers::append`].
    pub fn insert(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        assert!(!has_ctl(value), "control byte in header value for {name}");
        match self.position(name) {
            Some(i) => {
                let v = self.push_extra(trim_ows(value).1);
                let entries = self.entries.to_mut();
                entries[i].value = v;
                let mut seen = false;
                let raw_len = self.raw.len();
                let extra = &self.extra;
                let raw = &self.raw;
                entries.retain(|e| {
                    let n = slice_in(raw, extra, raw_len, e.name);
                    if n.eq_ignore_ascii_case(name.as_bytes()) {
                        let keep = !seen;
                        seen = true;
                        keep
                    } else {
                        true
                    }
                });
            }
            None => self.append(name, value),
        }
    }

    /// Removes every field named `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        if self.position(name).is_none() {
            return 0;
        }
        let raw_len = self.raw.len();
        let (raw, extra) = (&self.raw, &self.extra);
        let entries = self.entries.to_mut();
        entries.retain(|e| {
            !slice_in(raw, extra, raw_len, e.name).eq_ignore_ascii_case(name.as_bytes())
        });
        before - entries.len()
    }

    /// Index of the first field named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Bytes that [`Headers::write_to`] writes.
    pub fn encoded_len(&self) -> usize {
        self.iter().map(|(n, v)| n.len() + v.len() + 4).sum()
    }

    /// Writes the fields as `Name: value\r\n` lines (no blank line after them).
    pub fn write_to(&self, out: &mut BytesMut) {
        for (n, v) in self.iter() {
            out.put_slice(n);
            out.put_slice(b": ");
            out.put_slice(v);
            out.put_slice(b"\r\n");
        }
    }
}

/// Fields found by [`parse_block`], packed in the arena, to become a [`Headers`] once the head's
/// `Bytes` is cut.
pub(crate) struct Entries(Bytes);

/// One pass over a header block that starts at `buf[start]` (just after a start line that
/// ends in CRLF): `httparse::parse_headers` finds the fields and the blank line that ends the
/// block, and the line ends it accepted are checked for CRLF at each line start (httparse also
/// takes a bare LF; it takes no LF inside a name or value, so these are all the LFs). Returns
/// the block length through the blank line and the fields as offsets into `buf`.
///
/// `None` when the block is incomplete, longer than [`FAST_HEADERS`] or `max_headers` fields,
/// or malformed in any way (bare LF, obs-fold, bad bytes): callers then take the byte-exact
/// path, which finds the same fields or reports the error with its offset. When this returns
/// `Some`, every line of `buf[start..start + n]` ends in CRLF, the only blank line is the last,
/// and the fields are the ones the byte-exact parser finds.
pub(crate) fn parse_block(
    buf: &[u8],
    start: usize,
    max_headers: usize,
    arena: &mut BytesMut,
) -> Option<(usize, Entries)> {
    // Every offset below is inside `buf`, so this one check makes the `as u32` casts exact.
    if u32::try_from(buf.len()).is_err() {
        return None;
    }
    let block = buf.get(start..)?;
    let mut slots = [httparse::EMPTY_HEADER; FAST_HEADERS];
    let cap = max_headers.min(FAST_HEADERS);
    let (n, parsed) = match httparse::parse_headers(block, &mut slots[..cap]) {
        Ok(httparse::Status::Complete(done)) => done,
        _ => return None,
    };
    // The blank line: CRLF, not a bare LF.
    if n < 2 || buf[start + n - 2] != b'\r' {
        return None;
    }
    let blank = start + n - 2;
    let base = buf.as_ptr() as usize;
    let mut crlf = blank == start || buf[blank - 2] == b'\r';
    let need = parsed.len() * PACKED;
    // Packed on the stack, then copied into the arena in one step.
    let mut packed = [0u8; FAST_HEADERS * PACKED];
    for (f, slot) in parsed.iter().zip(packed.chunks_exact_mut(PACKED)) {
        let name = f.name.as_ptr() as usize - base;
        // The line before this one ended in buf[name - 1] == LF; its CR is at name - 2.
        crlf &= name == start || buf[name - 2] == b'\r';
        let value = f.value.as_ptr() as usize - base;
        slot.copy_from_slice(&pack(
            (name, name + f.name.len()),
            (value, value + f.value.len()),
        ));
    }
    if !crlf {
        return None;
    }
    // A decoder's arena has a block ready (`ready_arena`); a one-off parse's grows to fit.
    arena.extend_from_slice(&packed[..need]);
    Some((n, Entries(arena.split().freeze())))
}

fn slice_in<'a>(raw: &'a [u8], extra: &'a [u8], n: usize, s: Span) -> &'a [u8] {
    let (start, end) = (s.start as usize, s.end as usize);
    if start >= n && !(start == n && end == n) {
        &extra[start - n..end - n]
    } else {
        &raw[start..end]
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n.as_ref(), v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, fold: bool) -> Result<Headers> {
        let b = Bytes::copy_from_slice(s.as_bytes());
        let n = b.len();
        Headers::parse(b, 0, n, 100, fold.then_some(1024), &mut BytesMut::new())
    }

    #[test]
    fn fast_path_finds_what_the_exact_parser_finds() {
        let many: String = (0..40).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let blocks = [
            "Host: a\r\nX-A:  1 \r\nx-a: 2\r\nEmpty:\r\nSpaces:   \r\n",
            "Tab:\t v \t\r\nObs: caf\u{e9}\r\nQ: \"a, b\"\r\n",
            "",
            many.as_str(),
        ];
        for b in blocks {
            let raw = Bytes::from(format!("{b}\r\n"));
            let end = raw.len() - 2;
            let exact = Headers::parse_exact(raw.clone(), 0, end, 100, None).unwrap();
            let parsed =
                Headers::parse(raw.clone(), 0, end, 100, None, &mut BytesMut::new()).unwrap();
            assert_eq!(parsed, exact, "{b:?}");
            let fast = Headers::parse_fast(&raw, 0, end, 100, &mut BytesMut::new());
            assert_eq!(
                fast.is_some(),
                b.matches("\r\n").count() <= FAST_HEADERS,
                "{b:?}"
            );
            if let Some(fast) = fast {
                assert_eq!(fast, exact, "{b:?}");
            }
        }
        for bad in [
            "A: \x01\r\n",
            "A : 1\r\n",
            "A: 1\r\n folded\r\n",
            "NoColon\r\n",
        ] {
            let raw = Bytes::from(format!("{bad}\r\n"));
            assert!(
                Headers::parse_fast(&raw, 0, raw.len() - 2, 100, &mut BytesMut::new()).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_in_order_with_duplicates() {
        let h = parse("Host: a\r\nX-A:  1 \r\nx-a: 2\r\nEmpty:\r\n", false).unwrap();
        let v: Vec<_> = h.iter().collect();
        assert_eq!(
            v,
            vec![
                (&b"Host"[..], &b"a"[..]),
                (b"X-A", b"1"),
                (b"x-a", b"2"),
                (b"Empty", b"")
            ]
        );
        assert_eq!(h.get_all("X-A").collect::<Vec<_>>(), vec![b"1", b"2"]);
        assert_eq!(h.get("HOST"), Some(&b"a"[..]));
    }

    #[test]
    fn folds_when_allowed_and_rejects_otherwise() {
        let s = "X-Violations-Found: 1\r\n\tfile.txt\r\n \t Threat\r\nServer: c\r\n";
        let h = parse(s, true).unwrap();
        assert_eq!(h.get("x-violations-found"), Some(&b"1 file.txt Threat"[..]));
        assert_eq!(h.get("server"), Some(&b"c"[..]));
        let e = parse(s, false).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::ObsFold, 23));
    }

    #[test]
    fn folds_onto_empty_values_and_after_earlier_folds() {
        let s = "A:\r\n x\r\nB: 1\r\n 2\r\n\t\r\n 3\r\nC: 4\r\n 5\r\n";
        let h = parse(s, true).unwrap();
        let v: Vec<_> = h.iter().collect();
        assert_eq!(
            v,
            vec![(&b"A"[..], &b"x"[..]), (b"B", b"1 2 3"), (b"C", b"4 5")]
        );
        // Joined values sit once each in the side buffer, not once per continuation line.
        assert_eq!(h.extra.len(), "x1 2 34 5".len());
    }

    #[test]
    fn spans_refuse_offsets_past_u32() {
        let big = u32::MAX as usize + 1;
        assert_eq!(Span::new(0, big), None);
        assert_eq!(Span::new(big, big), None);
        assert_eq!(
            Span::new(1, u32::MAX as usize),
            Some(Span {
                start: 1,
                end: u32::MAX
            })
        );
    }

    #[test]
    fn rejects_bad_lines_with_offsets() {
        let e = parse("Host: a\r\nNoColon\r\n", false).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadHeader, 9));
        let e = parse("Bad Name: a\r\n", false).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadHeader, 3));
        let e = parse("A: x\0y\r\n", false).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadHeader, 4));
        let e = Headers::parse(
            Bytes::from_static(b"A: 1\r\nB: 2\r\n"),
            0,
            12,
            1,
            None,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::TooManyHeaders, 6));
    }

    #[test]
    fn mutation_keeps_order() {
        let raw = Bytes::from_static(b"A: 1\r\nB: 2\r\nA: 3\r\n\r\n");
        let mut h = Headers::parse(raw, 0, 18, 100, None, &mut BytesMut::new()).unwrap();
        assert!(
            matches!(h.entries, EntryList::Packed(_)),
            "parsed fields stay packed"
        );
        assert_eq!(h.remove("none"), 0);
        assert!(
            matches!(h.entries, EntryList::Packed(_)),
            "no edit, no unpacking"
        );
        h.insert("a", "9");
        h.append("C", "4");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![(&b"A"[..], &b"9"[..]), (b"B", b"2"), (b"C", b"4")]
        );
        assert_eq!(h.remove("b"), 1);
        let mut out = BytesMut::new();
        h.write_to(&mut out);
        assert_eq!(&out[..], b"A: 9\r\nC: 4\r\n");
        assert_eq!(h.encoded_len(), out.len());
        assert!(h.has_token("a", "9"));
    }

    #[test]
    #[should_panic]
    fn append_refuses_header_injection() {
        Headers::new().append("X-A", "1\r\nX-B: 2");
    }
}
