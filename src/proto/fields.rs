//! Header fields: an ordered, case-insensitive multimap held as one `Bytes` plus offsets.
//!
//! A parsed head keeps its bytes in one shared [`Bytes`]; each header is two offset pairs into
//! it, packed into a decoder's reusable arena, so parsing copies no name or value and, once
//! warm, allocates nothing. Headers a program adds later (and folded values, which must be
//! joined) live in a small side buffer, so the same type serves parsed and built heads. This
//! module owns header-line syntax, with one parser for it (`parse_block`: fast on valid
//! blocks, exact about the first error of invalid ones); start lines belong to
//! `head.rs`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::error::{Error, ErrorKind, Result};
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
use crate::proto::grammar::simd;
use crate::proto::grammar::{has_ctl_but_htab, is_token, trim_ows, TOKEN};

/// Byte range into the head (`raw`) or, with [`EXTRA`] set on both ends, into the side buffer
/// (`extra`). `u32` keeps an entry at 16 bytes; [`Span::new`] refuses offsets that do not fit
/// instead of wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// The bit that marks a [`Span`] into the side buffer: a flag, not an offset past `raw`, so that
/// the parser can join a folded value before it knows where the head ends.
const EXTRA: u32 = 1 << 31;

impl Span {
    /// A span of the head; `None` when an offset does not fit in 31 bits (only a head over
    /// 2 GiB, which the limits would have to allow, gets there).
    fn new(start: usize, end: usize) -> Option<Span> {
        let start = u32::try_from(start).ok().filter(|&s| s < EXTRA)?;
        let end = u32::try_from(end).ok().filter(|&e| e < EXTRA)?;
        Some(Span { start, end })
    }

    /// A span of the side buffer.
    fn extra(start: usize, end: usize) -> Option<Span> {
        let s = Span::new(start, end)?;
        Some(Span {
            start: s.start | EXTRA,
            end: s.end | EXTRA,
        })
    }

    fn in_extra(self) -> bool {
        self.start & EXTRA != 0
    }

    /// The offsets without the flag, into whichever buffer the span belongs to.
    fn range(self) -> std::ops::Range<usize> {
        (self.start & !EXTRA) as usize..(self.end & !EXTRA) as usize
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
        "header field lies more than 2 GiB into its head",
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

    fn iter(&self) -> EntryIter<'_> {
        match self {
            EntryList::Packed(b) => EntryIter::Packed(b.chunks_exact(PACKED)),
            EntryList::Owned(v) => EntryIter::Owned(v.iter()),
        }
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

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the header lines of `raw[start..end]` followed by the blank line at
    /// `raw[end..end + 2]`, through [`parse_block`] (see there for `fold` and the errors, whose
    /// offsets are relative to `raw`).
    pub(crate) fn parse(
        raw: Bytes,
        start: usize,
        end: usize,
        max_headers: usize,
        fold: Option<usize>,
        arena: &mut BytesMut,
    ) -> Result<Headers> {
        let block = &raw[..(end + 2).min(raw.len())];
        match parse_block(block, start, max_headers, fold, arena)? {
            Some((n, fields)) if n == block.len() => Ok(Headers::from_fields(raw, fields)),
            _ => Err(Error::new(
                ErrorKind::BadHeader,
                end as u64,
                "header block does not end with a blank line",
            )),
        }
    }

    /// Headers over `raw` from fields [`parse_block`] found in the same bytes.
    pub(crate) fn from_fields(raw: Bytes, fields: Fields) -> Headers {
        Headers {
            raw,
            extra: fields.extra,
            entries: EntryList::Packed(fields.entries),
        }
    }

    /// Appends `bytes` to the side buffer. Built headers only: a program that adds over
    /// 2 GiB of header text has a bug worth a panic.
    fn push_extra(&mut self, bytes: &[u8]) -> Span {
        let start = self.extra.len();
        self.extra.extend_from_slice(bytes);
        Span::extra(start, start + bytes.len()).expect("headers over 2 GiB")
    }

    fn slice(&self, s: Span) -> &[u8] {
        slice_in(&self.raw, &self.extra, s)
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
    /// added grow past 2 GiB.
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        assert!(is_token(name.as_bytes()), "invalid header name {name:?}");
        assert!(
            !has_ctl_but_htab(value),
            "control byte in header value for {name}"
        );
        let name = self.push_extra(name.as_bytes());
        let value = self.push_extra(trim_ows(value).1);
        self.entries.to_mut().push(Entry { name, value });
    }

    /// Sets `name` to one `value`: replaces the first field of that name in place and removes
    /// the others, or appends when absent. Panics like [`Headers::append`].
    pub fn insert(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        assert!(
            !has_ctl_but_htab(value),
            "control byte in header value for {name}"
        );
        match self.position(name) {
            Some(i) => {
                let v = self.push_extra(trim_ows(value).1);
                let entries = self.entries.to_mut();
                entries[i].value = v;
                let mut seen = false;
                let extra = &self.extra;
                let raw = &self.raw;
                entries.retain(|e| {
                    let n = slice_in(raw, extra, e.name);
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
        let (raw, extra) = (&self.raw, &self.extra);
        let entries = self.entries.to_mut();
        entries.retain(|e| !slice_in(raw, extra, e.name).eq_ignore_ascii_case(name.as_bytes()));
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

/// Fields found by `parse_block`: offsets packed in the arena and the joined values of folded
/// lines, to become a [`Headers`] once the head's `Bytes` is cut. `pub` only because the sealed
/// decoding trait names it; the module is private, so no caller can.
pub struct Fields {
    entries: Bytes,
    extra: Vec<u8>,
}

/// Index of the first byte at or after `i` that cannot be part of a field value (a control byte:
/// CR, LF, HTAB, NUL ... or DEL), or `buf.len()`. HTAB stops it too, to keep the test one
/// comparison; the caller steps over it. Values are the bulk of a head.
///
/// On x86-64, sixteen bytes a step as an SSE2 bit mask ([`simd::ctl_mask`]); elsewhere the
/// first 16 bytes eight a step as one `u64` (SWAR, [`ctl_in_word`]), which ends a short value
/// at once, and past them sixteen bytes a step are only tested ([`ctl_in_block`]: a fold the
/// compiler vectorises), the block that holds the stop then looked at as two words. Near the
/// end of `buf`, words and then bytes ([`ctl_from`]).
#[inline(always)]
fn value_stop(buf: &[u8], mut i: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        while let Some(block) = buf.get(i..i + 16) {
            let m = simd::ctl_mask(block.try_into().expect("16 bytes"));
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 16;
        }
        ctl_from(buf, i)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        for _ in 0..2 {
            let Some(word) = buf.get(i..i + 8) else {
                return ctl_from(buf, i);
            };
            if let Some(k) = ctl_in_word(word) {
                return i + k;
            }
            i += 8;
        }
        while let Some(block) = buf.get(i..i + 16) {
            if ctl_in_block(block.try_into().expect("16 bytes")) {
                let (lo, hi) = block.split_at(8);
                return match ctl_in_word(lo) {
                    Some(k) => i + k,
                    None => i + 8 + ctl_in_word(hi).unwrap_or(8),
                };
            }
            i += 16;
        }
        ctl_from(buf, i)
    }
}

/// [`value_stop`] near the end of `buf`: a word at a time, then a byte at a time.
#[inline]
fn ctl_from(buf: &[u8], mut i: usize) -> usize {
    while let Some(word) = buf.get(i..i + 8) {
        if let Some(k) = ctl_in_word(word) {
            return i + k;
        }
        i += 8;
    }
    while let Some(&b) = buf.get(i) {
        if b < 0x20 || b == 0x7f {
            return i;
        }
        i += 1;
    }
    i
}

/// True when `block` holds a control byte (below 0x20) or DEL. A fold without early exit over
/// a fixed-size array: the compiler makes it two vector compares and one `pmovmskb` (SSE2) or
/// their NEON kin, with no `unsafe` and no intrinsics. Only the test vectorises this way: a
/// fold that gathers the flags into a bit mask, or that finds the index, compiles to a byte
/// at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn ctl_in_block(block: &[u8; 16]) -> bool {
    block
        .iter()
        .fold(false, |stop, &b| stop | (b < 0x20) | (b == 0x7f))
}

/// Index of the first control byte (below 0x20, or DEL) of an 8-byte `word`, as one `u64`
/// (SWAR).
#[inline(always)]
fn ctl_in_word(word: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
    // High bit of each byte below 0x20, and of each DEL (0x7f xor 0x7f is zero). Borrows may
    // flag bytes above the first flagged one, never below it: the lowest flag is exact.
    let ctl = w.wrapping_sub(0x20 * LO) & !w;
    let d = w ^ (0x7f * LO);
    let del = d.wrapping_sub(LO) & !d;
    let m = (ctl | del) & HI;
    (m != 0).then(|| (m.trailing_zeros() / 8) as usize)
}

/// Index of the first byte at or after `i` that is not `tchar` (the end of a name), or
/// `buf.len()`. On x86-64 the common name (letters, digits, `-`) up to its colon is found
/// sixteen bytes at once ([`simd::not_name_fast_mask`]); from the first other byte on, near the
/// end of the buffer and on other targets, the `tchar` table decides ([`name_end_table`]).
#[inline(always)]
fn name_end(buf: &[u8], i: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if let Some(block) = buf.get(i..i + 16) {
        let block: &[u8; 16] = block.try_into().expect("16 bytes");
        let m = simd::not_name_fast_mask(block);
        if m == 0 {
            return name_end_table(buf, i + 16);
        }
        let k = m.trailing_zeros() as usize;
        if block[k] == b':' {
            return i + k;
        }
        return name_end_table(buf, i + k);
    }
    name_end_table(buf, i)
}

/// [`name_end`] by the `tchar` table: eight lookups a step gathered into a bit mask, one
/// branch per eight name bytes instead of one per byte.
#[inline]
fn name_end_table(buf: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = buf.get(i..i + 8) {
        let m = chunk
            .iter()
            .enumerate()
            .fold(0u32, |m, (k, &b)| m | (u32::from(TOKEN[b as usize]) << k));
        if m != 0xff {
            return i + (!m).trailing_zeros() as usize;
        }
        i += 8;
    }
    while let Some(&b) = buf.get(i) {
        if !TOKEN[b as usize] {
            return i;
        }
        i += 1;
    }
    i
}

/// The one parser of header blocks. Reads the header lines that start at `buf[start]` (just
/// after a start line's CRLF) through the blank line that ends them. Returns where the block
/// ends (just after the blank line) and the fields, with offsets into `buf`; `Ok(None)` when
/// `buf` ends before the blank line.
///
/// Names are `tchar`s; values may hold HTAB, SP, VCHAR and obs-text, and lose surrounding SP and
/// HTAB. `fold: Some(max)` accepts obs-fold continuation lines: each is joined to the previous
/// value with one space, and a joined value longer than `max` bytes is an
/// [`ErrorKind::FoldedValueTooLarge`] error; with `None` they are an [`ErrorKind::ObsFold`]
/// error. Continuation lines count against `max_headers` like field lines: each costs work and,
/// joined, memory. Errors carry the offset (into `buf`) of the bad line, or of the bad byte in a
/// name or value. An error may be reported before the rest of the block has arrived; callers
/// that must report a head's framing errors first (a bare LF further on) check its framing with
/// [`scan_head`](crate::proto::head::scan_head) when this fails.
///
/// Valid lines cost one pass: the name through a `tchar` table, the value eight bytes a step
/// until its CR ([`value_stop`]); the packed offsets go straight into `arena`. Only a failed
/// line is looked at again, to name the error ([`field_error`]).
pub(crate) fn parse_block(
    buf: &[u8],
    start: usize,
    max_headers: usize,
    fold: Option<usize>,
    arena: &mut BytesMut,
) -> Result<Option<(usize, Fields)>> {
    // Offsets must fit a `Span`: past that, a field is an error (a head this long needs limits
    // raised past 2 GiB).
    let whole = buf.len();
    let buf = &buf[..whole.min(EXTRA as usize - 1)];
    arena.clear();
    let mut extra = Vec::new();
    let r = fields(buf, start, max_headers, fold, arena, &mut extra);
    match r {
        Ok(Some(n)) => Ok(Some((
            n,
            Fields {
                entries: arena.split().freeze(),
                extra,
            },
        ))),
        Ok(None) if buf.len() < whole => Err(span_error(buf.len())),
        other => {
            arena.clear();
            other.map(|_| None)
        }
    }
}

/// [`parse_block`]'s loop: packs each field into `arena`, joins folded values in `extra`.
#[inline(always)]
fn fields(
    buf: &[u8],
    mut pos: usize,
    max_headers: usize,
    fold: Option<usize>,
    arena: &mut BytesMut,
    extra: &mut Vec<u8>,
) -> Result<Option<usize>> {
    let mut lines = 0;
    loop {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'\r') => match buf.get(pos + 1) {
                None => return Ok(None),
                Some(b'\n') => return Ok(Some(pos + 2)),
                // A CR that ends nothing: the name check below rejects it.
                Some(_) => {}
            },
            Some(b' ' | b'\t') => {
                if lines == max_headers {
                    return Err(too_many(pos, max_headers));
                }
                lines += 1;
                match fold_line(buf, pos, fold, arena, extra)? {
                    Some(next) => {
                        pos = next;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            Some(_) => {}
        }
        if lines == max_headers {
            return Err(too_many(pos, max_headers));
        }
        lines += 1;
        let colon = name_end(buf, pos);
        if colon == pos || buf.get(colon) != Some(&b':') {
            return field_error(buf, pos);
        }
        let mut v = colon + 1;
        while let Some(b' ' | b'\t') = buf.get(v) {
            v += 1;
        }
        let mut cr = value_stop(buf, v);
        while buf.get(cr) == Some(&b'\t') {
            cr = value_stop(buf, cr + 1);
        }
        match (buf.get(cr), buf.get(cr + 1)) {
            (Some(b'\r'), Some(b'\n')) => {}
            (None, _) | (Some(b'\r'), None) => return Ok(None),
            _ => return field_error(buf, pos),
        }
        let mut end = cr;
        while end > v && matches!(buf[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        arena.extend_from_slice(&pack((pos, colon), (v, end)));
        pos = cr + 2;
    }
}

fn too_many(pos: usize, max_headers: usize) -> Error {
    Error::new(
        ErrorKind::TooManyHeaders,
        pos as u64,
        format!("more than {max_headers} header lines (continuation lines count)"),
    )
}

/// The error of the field line at `buf[pos]`, which the one pass rejected: no colon (the line's
/// offset), a byte that is not `tchar` in the name or a control byte in the value (that byte's
/// offset), an empty name (the line's), or a line that ends in a bare LF (the LF's). `Ok(None)`
/// when the line has not ended yet.
#[cold]
fn field_error(buf: &[u8], pos: usize) -> Result<Option<usize>> {
    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i) else {
        return Ok(None);
    };
    let line_end = if nl > pos && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &buf[pos..line_end];
    let Some(colon) = memchr::memchr(b':', line) else {
        return Err(Error::new(
            ErrorKind::BadHeader,
            pos as u64,
            "header line has no colon",
        ));
    };
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
    if let Some(bad) = value
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(Error::new(
            ErrorKind::BadHeader,
            (pos + colon + 1 + lead + bad) as u64,
            format!("control byte 0x{:02x} in a header value", value[bad]),
        ));
    }
    Err(Error::new(
        ErrorKind::BareLf,
        nl as u64,
        "line ends in a bare LF; header lines end in CRLF",
    ))
}

/// An obs-fold continuation line at `buf[pos]`: joined to the last field's value through
/// `extra`. The value moves there on its first continuation and grows in place after that, so
/// a long fold costs time and memory in proportion to its length, not to its length times its
/// lines. Returns where the next line starts, or `None` when this one has not ended yet.
#[cold]
fn fold_line(
    buf: &[u8],
    pos: usize,
    fold: Option<usize>,
    arena: &mut BytesMut,
    extra: &mut Vec<u8>,
) -> Result<Option<usize>> {
    let Some(max_value) = fold else {
        return Err(Error::new(
            ErrorKind::ObsFold,
            pos as u64,
            "folded header line (obs-fold) is not accepted here",
        ));
    };
    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i) else {
        return Ok(None);
    };
    if buf[nl - 1] != b'\r' {
        return Err(Error::new(
            ErrorKind::BareLf,
            nl as u64,
            "line ends in a bare LF; header lines end in CRLF",
        ));
    }
    let (_, cont) = trim_ows(&buf[pos..nl - 1]);
    if has_ctl_but_htab(cont) {
        return Err(Error::new(
            ErrorKind::BadHeader,
            pos as u64,
            "control byte in a folded header value",
        ));
    }
    let Some(at) = arena.len().checked_sub(PACKED) else {
        return Err(Error::new(
            ErrorKind::BadHeader,
            pos as u64,
            "continuation line before any header",
        ));
    };
    if cont.is_empty() {
        return Ok(Some(nl + 1));
    }
    let last = unpack(&arena[at..]);
    let sep = usize::from(last.value.len() > 0);
    let joined = last.value.len() + sep + cont.len();
    if joined > max_value {
        return Err(Error::new(
            ErrorKind::FoldedValueTooLarge,
            pos as u64,
            format!("folded header value grows to {joined} bytes, over the limit of {max_value}"),
        ));
    }
    let r = last.value.range();
    let start = if last.value.in_extra() && r.end == extra.len() {
        r.start
    } else {
        let start = extra.len();
        if last.value.in_extra() {
            extra.extend_from_within(r);
        } else {
            extra.extend_from_slice(&buf[r]);
        }
        start
    };
    if sep == 1 {
        extra.push(b' ');
    }
    extra.extend_from_slice(cont);
    let value = Span::extra(start, extra.len()).ok_or_else(|| span_error(pos))?;
    let packed = pack(
        (last.name.start as usize, last.name.end as usize),
        (value.start as usize, value.end as usize),
    );
    arena[at..].copy_from_slice(&packed);
    Ok(Some(nl + 1))
}

fn slice_in<'a>(raw: &'a [u8], extra: &'a [u8], s: Span) -> &'a [u8] {
    if s.in_extra() {
        &extra[s.range()]
    } else {
        &raw[s.range()]
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

    /// The header lines `s`, followed by the blank line that ends a block.
    fn parse(s: &str, fold: bool) -> Result<Headers> {
        let b = Bytes::from(format!("{s}\r\n"));
        Headers::parse(
            b,
            0,
            s.len(),
            100,
            fold.then_some(1024),
            &mut BytesMut::new(),
        )
    }

    #[test]
    fn one_parser_for_every_block() {
        let many: String = (0..100).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let h = parse(&many, false).unwrap();
        assert_eq!(h.len(), 100);
        assert_eq!(h.get("x-99"), Some(&b"99"[..]));
        let h = parse(
            "Tab:\t v \tw\t\r\nObs: caf\u{e9}\r\nQ: \"a, b\"\r\nE:\r\nS:   \r\n",
            false,
        )
        .unwrap();
        let v: Vec<_> = h.iter().collect();
        assert_eq!(
            v,
            vec![
                (&b"Tab"[..], &b"v \tw"[..]),
                (b"Obs", "caf\u{e9}".as_bytes()),
                (b"Q", b"\"a, b\""),
                (b"E", b""),
                (b"S", b"")
            ]
        );
        // Every cut short of the blank line's LF needs more bytes; the whole block is complete.
        let block = b"Host: a\r\nX-Long-Name: a value longer than sixteen bytes\r\n\r\nbody";
        for cut in 0..block.len() - 4 {
            let r = parse_block(&block[..cut], 0, 100, None, &mut BytesMut::new()).unwrap();
            assert!(r.is_none(), "{cut}");
        }
        let (n, f) = parse_block(block, 0, 100, None, &mut BytesMut::new())
            .unwrap()
            .unwrap();
        assert_eq!(n, block.len() - 4);
        assert_eq!(f.entries.len(), 2 * PACKED);
    }

    /// Fields as owned `(name, value)` pairs, or an error's kind and offset.
    type Outcome = std::result::Result<Vec<(Vec<u8>, Vec<u8>)>, (ErrorKind, u64)>;

    /// The byte loop the decoder used for errors before the one pass (kept here as the oracle
    /// for kinds and offsets): each line of `block` (CRLF-terminated, then the blank line) in
    /// turn.
    fn oracle(block: &[u8], max_headers: usize, fold: Option<usize>) -> Outcome {
        let end = block.len() - 2;
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut pos, mut lines) = (0, 0);
        while pos < end {
            let nl = pos + block[pos..].iter().position(|&b| b == b'\n').unwrap();
            let line = &block[pos..nl - 1];
            if lines >= max_headers {
                return Err((ErrorKind::TooManyHeaders, pos as u64));
            }
            lines += 1;
            let ctl = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
            if matches!(line.first(), Some(b' ' | b'\t')) {
                let Some(max) = fold else {
                    return Err((ErrorKind::ObsFold, pos as u64));
                };
                let cont = trim_ows(line).1;
                if cont.iter().any(|&b| ctl(b)) {
                    return Err((ErrorKind::BadHeader, pos as u64));
                }
                let Some(last) = out.last_mut() else {
                    return Err((ErrorKind::BadHeader, pos as u64));
                };
                if !cont.is_empty() {
                    if !last.1.is_empty() {
                        last.1.push(b' ');
                    }
                    last.1.extend_from_slice(cont);
                    if last.1.len() > max {
                        return Err((ErrorKind::FoldedValueTooLarge, pos as u64));
                    }
                }
            } else {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    return Err((ErrorKind::BadHeader, pos as u64));
                };
                if let Some(bad) = line[..colon].iter().position(|&b| !TOKEN[b as usize]) {
                    return Err((ErrorKind::BadHeader, (pos + bad) as u64));
                }
                if colon == 0 {
                    return Err((ErrorKind::BadHeader, pos as u64));
                }
                let (lead, value) = trim_ows(&line[colon + 1..]);
                if let Some(bad) = value.iter().position(|&b| ctl(b)) {
                    return Err((ErrorKind::BadHeader, (pos + colon + 1 + lead + bad) as u64));
                }
                out.push((line[..colon].to_vec(), value.to_vec()));
            }
            pos = nl + 1;
        }
        Ok(out)
    }

    #[test]
    fn agrees_with_the_byte_loop_on_generated_blocks() {
        // Lines from bytes that matter to the grammar (no LF: every line ends in CRLF, as the
        // framing scan guarantees before an error is reported), in blocks of up to 5 lines.
        const BYTES: &[u8] = b"aZ09-!~:: \t\t\r\x00\x01\x7f\x80\xff(\"";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..50_000 {
            let mut block = Vec::new();
            for _ in 0..next(6) {
                let len = 1 + next(24);
                if next(3) == 0 {
                    block.extend_from_slice(b"Name: ");
                }
                for _ in 0..len {
                    block.push(BYTES[next(BYTES.len() as u64) as usize]);
                }
                block.extend_from_slice(b"\r\n");
            }
            block.extend_from_slice(b"\r\n");
            let (max_headers, fold) = (
                next(6) as usize,
                [None, Some(8), Some(64)][next(3) as usize],
            );
            let want = oracle(&block, max_headers, fold);
            let got = match parse_block(&block, 0, max_headers, fold, &mut BytesMut::new()) {
                Ok(Some((n, f))) => {
                    assert_eq!(n, block.len(), "{block:?}");
                    let h = Headers::from_fields(Bytes::from(block.clone()), f);
                    Ok(h.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect())
                }
                Ok(None) => panic!("complete block reported partial: {block:?}"),
                Err(e) => Err((e.kind(), e.offset())),
            };
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&block));
        }
    }

    #[test]
    fn name_bytes_are_checked_at_every_position() {
        // A byte that is not `tchar` anywhere in a name, within and past the sixteen-byte
        // block the common name is read in and near the buffer's end: the error names that
        // byte. Other `tchar`s (read by the table after the block) pass.
        for len in 1..40 {
            for at in 0..len {
                for bad in [b'(', b'"', b'/', b'@', b'[', b'{', 0x80, 0xff, 0x00, 0x7f] {
                    let mut line = vec![b'n'; len];
                    line[at] = bad;
                    line.extend_from_slice(b": v\r\n\r\n");
                    let n = line.len();
                    let e =
                        Headers::parse(Bytes::from(line), 0, n - 2, 10, None, &mut BytesMut::new())
                            .unwrap_err();
                    assert_eq!(
                        (e.kind(), e.offset()),
                        (ErrorKind::BadHeader, at as u64),
                        "len {len}, byte 0x{bad:02x} at {at}"
                    );
                }
                for good in [b'_', b'.', b'!', b'~', b'`', b'|', b'Z', b'a', b'9', b'-'] {
                    let mut line = vec![b'N'; len];
                    line[at] = good;
                    let name = line.clone();
                    line.extend_from_slice(b":v\r\n\r\n");
                    let n = line.len();
                    let h =
                        Headers::parse(Bytes::from(line), 0, n - 2, 10, None, &mut BytesMut::new())
                            .unwrap();
                    assert_eq!(h.iter().next(), Some((&name[..], &b"v"[..])));
                }
            }
        }
    }

    #[test]
    fn value_bytes_are_checked_at_every_position() {
        // A control byte (or DEL) anywhere in a value, across the first two eight-byte words,
        // the sixteen-byte blocks after them and the words and bytes near the buffer's end:
        // the error names that byte. HTAB and obs-text pass.
        for len in 0..72 {
            for at in 0..len {
                for bad in [0u8, 0x01, b'\r', 0x1f, 0x7f] {
                    let mut v = vec![b'v'; len];
                    v[at] = bad;
                    let mut line = b"Name: ".to_vec();
                    line.extend_from_slice(&v);
                    line.extend_from_slice(b"\r\n\r\n");
                    let n = line.len();
                    let e =
                        Headers::parse(Bytes::from(line), 0, n - 2, 10, None, &mut BytesMut::new())
                            .unwrap_err();
                    let want = 6 + at;
                    assert_eq!((e.kind(), e.offset()), (ErrorKind::BadHeader, want as u64));
                }
                for good in [b'\t', 0x80, 0xff, b' ', b'~'] {
                    let mut v = vec![b'v'; len];
                    v[at] = good;
                    let mut line = b"Name: v".to_vec();
                    line.extend_from_slice(&v);
                    line.extend_from_slice(b"v\r\n\r\n");
                    let n = line.len();
                    let h =
                        Headers::parse(Bytes::from(line), 0, n - 2, 10, None, &mut BytesMut::new())
                            .unwrap();
                    assert_eq!(h.get("name").map(|x| x.len()), Some(len + 2));
                }
            }
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
    fn spans_refuse_offsets_past_31_bits() {
        let big = EXTRA as usize;
        assert_eq!(Span::new(0, big), None);
        assert_eq!(Span::new(big, big), None);
        assert_eq!(Span::extra(0, big), None);
        let s = Span::new(1, big - 1).unwrap();
        assert_eq!(
            (s.in_extra(), s.range(), s.len()),
            (false, 1..big - 1, big - 2)
        );
        let s = Span::extra(1, 3).unwrap();
        assert_eq!((s.in_extra(), s.range(), s.len()), (true, 1..3, 2));
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
            Bytes::from_static(b"A: 1\r\nB: 2\r\n\r\n"),
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
