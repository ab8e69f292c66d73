//! Heads: start lines, the ICAP version, methods, and the encapsulated HTTP heads.
//!
//! A head is a start line, header lines and a blank line, every line ending in CRLF. This
//! module parses a whole head in one pass (`parse_head`: start line end, then the header
//! block), finds where a head ends when it arrives in pieces (resumably, so that a head
//! arriving one byte at a time is scanned once: framing, not a second grammar), parses start
//! lines (one function per grammar: ICAP request and status lines, HTTP request and status
//! lines), and parses encapsulated HTTP request and response heads, also on their own
//! ([`HttpRequestHead::parse`], [`HttpResponseHead::parse`]). Header lines themselves belong to `fields.rs`; which heads
//! a message carries belongs to `encapsulated.rs`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::fields::{parse_block, ready_arena, Fields, Headers};
use crate::proto::grammar::{has_ctl, is_token};
use crate::proto::limits::Limits;

/// An ICAP method. Extension methods are kept as their token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// `REQMOD`: request modification (RFC 3507 4.8).
    Reqmod,
    /// `RESPMOD`: response modification (RFC 3507 4.9).
    Respmod,
    /// `OPTIONS`: service configuration (RFC 3507 4.10).
    Options,
    /// Any other token; a server answers it with 501.
    Other(Bytes),
}

impl Method {
    /// Reads a method token; `None` when `s` is not a token.
    pub fn from_bytes(s: &[u8]) -> Option<Method> {
        Some(match s {
            b"REQMOD" => Method::Reqmod,
            b"RESPMOD" => Method::Respmod,
            b"OPTIONS" => Method::Options,
            _ if is_token(s) => Method::Other(Bytes::copy_from_slice(s)),
            _ => return None,
        })
    }

    /// The method as written on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Method::Reqmod => b"REQMOD",
            Method::Respmod => b"RESPMOD",
            Method::Options => b"OPTIONS",
            Method::Other(b) => b,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// An `ICAP/major.minor` version. Only 1.0 exists; others are parsed so that a server can
/// answer them with 505 instead of dropping the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Major version digit.
    pub major: u8,
    /// Minor version digit.
    pub minor: u8,
}

impl Version {
    /// ICAP/1.0.
    pub const ICAP_1_0: Version = Version { major: 1, minor: 0 };

    fn parse(s: &[u8]) -> Option<Version> {
        match s {
            [b'I', b'C', b'A', b'P', b'/', ma, b'.', mi]
                if ma.is_ascii_digit() && mi.is_ascii_digit() =>
            {
                Some(Version {
                    major: ma - b'0',
                    minor: mi - b'0',
                })
            }
            _ => None,
        }
    }

    pub(crate) fn write_to(self, out: &mut BytesMut) {
        out.put_slice(b"ICAP/");
        out.put_u8(b'0' + self.major);
        out.put_u8(b'.');
        out.put_u8(b'0' + self.minor);
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::ICAP_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ICAP/{}.{}", self.major, self.minor)
    }
}

/// Scans `buf[from..]` for the blank line that ends a head, checking that every line ends in
/// CRLF. Returns the head length (through the blank line) or `None` when more bytes are
/// needed; call again with `from = buf.len()` after appending.
///
/// Leading empty lines are not skipped here: the decoder drops them between messages.
pub(crate) fn scan_head(buf: &[u8], from: usize) -> Result<Option<usize>> {
    for nl in memchr::memchr_iter(b'\n', &buf[from..]) {
        let i = from + nl;
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(Error::new(
                ErrorKind::BareLf,
                i as u64,
                "line ends in a bare LF; ICAP lines end in CRLF",
            ));
        }
        if i >= 3 && buf[i - 2] == b'\n' {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

/// Position of the first CRLF (the end of the start line) in a scanned head, where every LF
/// follows a CR. Found by the LF: a bare CR before it stays in the line, where the start-line
/// checks reject it as a control byte, instead of ending the line and hiding the next byte.
fn line_end(raw: &[u8]) -> usize {
    memchr::memchr(b'\n', raw).map_or(raw.len(), |i| i.saturating_sub(1))
}

/// One pass over a whole head at the start of `buf`: the start line's end (its LF, after a
/// CR) and the header block through [`parse_block`]. Returns the head length, where the header
/// lines start, and the fields. `None` when the head is incomplete or malformed in any way:
/// callers then check its framing with [`scan_head`] and parse the start line and the block
/// again, in that order, so that the error reported is the first one of the head (a bare LF
/// first, as the framing finds it; then the start line's; then the block's).
#[inline]
pub(crate) fn parse_head(
    buf: &[u8],
    max_headers: usize,
    fold: Option<usize>,
    arena: &mut BytesMut,
) -> Option<(usize, usize, Fields)> {
    let lf = memchr::memchr(b'\n', buf)?;
    if lf == 0 || buf[lf - 1] != b'\r' {
        return None;
    }
    let (n, fields) = parse_block(buf, lf + 1, max_headers, fold, arena).ok()??;
    Some((n, lf + 1, fields))
}

/// Splits `line` at single spaces into three parts, the last of which may contain spaces
/// (a reason phrase) when `rest_has_spaces`.
///
/// Short parts (a method, a version, a status code) are searched with a plain loop, where
/// memchr's setup costs more than it saves; a request's URI or target with memchr.
fn split3(line: &[u8], rest_has_spaces: bool) -> Option<(&[u8], &[u8], &[u8])> {
    let a = line.iter().position(|&b| b == b' ')?;
    let after = &line[a + 1..];
    let b = if rest_has_spaces {
        after.iter().position(|&b| b == b' ')
    } else {
        memchr::memchr(b' ', after)
    };
    let (mid, rest) = match b {
        Some(b) => (&after[..b], &after[b + 1..]),
        None if rest_has_spaces => (after, &b""[..]),
        None => return None,
    };
    if !rest_has_spaces && rest.contains(&b' ') {
        return None;
    }
    Some((&line[..a], mid, rest))
}

/// HTTP methods common enough to hand out as static `Bytes`. A `match` on the bytes, which
/// compiles to a switch on the length and integer compares, not a loop of `memcmp` calls.
fn method_word(w: &[u8]) -> Option<&'static [u8]> {
    Some(match w {
        b"GET" => b"GET",
        b"POST" => b"POST",
        b"HEAD" => b"HEAD",
        b"PUT" => b"PUT",
        b"CONNECT" => b"CONNECT",
        b"OPTIONS" => b"OPTIONS",
        b"DELETE" => b"DELETE",
        b"PATCH" => b"PATCH",
        _ => return None,
    })
}

/// HTTP versions, likewise.
fn version_word(w: &[u8]) -> Option<&'static [u8]> {
    Some(match w {
        b"HTTP/1.1" => b"HTTP/1.1",
        b"HTTP/1.0" => b"HTTP/1.0",
        _ => return None,
    })
}

/// ICAP and HTTP reason phrases, likewise.
fn reason_word(w: &[u8]) -> Option<&'static [u8]> {
    Some(match w {
        b"OK" => b"OK",
        b"No Content" => b"No Content",
        b"Unmodified" => b"Unmodified",
        b"No modifications needed" => b"No modifications needed",
        b"Continue" => b"Continue",
        b"Forbidden" => b"Forbidden",
        b"Not Found" => b"Not Found",
        b"Found" => b"Found",
        b"Not Modified" => b"Not Modified",
        b"Moved Permanently" => b"Moved Permanently",
        _ => return None,
    })
}

/// `raw[start..end]` as `Bytes`: a static one when `common` knows it, else a slice of `raw`.
/// Equal either way; a static one costs no reference-count update (an atomic increment now
/// and decrement at drop) and does not keep the input buffer alive.
#[inline]
fn word(
    raw: &Bytes,
    start: usize,
    end: usize,
    common: fn(&[u8]) -> Option<&'static [u8]>,
) -> Bytes {
    match common(&raw[start..end]) {
        Some(c) => Bytes::from_static(c),
        None => raw.slice(start..end),
    }
}

fn bad_line(kind: ErrorKind, line: &[u8], what: &str) -> Error {
    Error::new(
        kind,
        0,
        format!(
            "{what}: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        ),
    )
}

fn status_code(s: &[u8]) -> Option<u16> {
    match s {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
        }
        _ => None,
    }
}

/// The parsed start line of an ICAP request. `pub` only because the decoder's sealed trait
/// names it; the module is private.
#[derive(Debug)]
pub struct RequestLine {
    pub(crate) method: Method,
    pub(crate) uri: Bytes,
    pub(crate) version: Version,
}

/// Parses `METHOD SP URI SP ICAP/x.y` from a scanned head; returns it with the header start.
/// `hstart`, when known, is where the header lines start (just after the start line's CRLF).
pub(crate) fn parse_request_line(
    raw: &Bytes,
    hstart: Option<usize>,
) -> Result<(RequestLine, usize)> {
    let end = hstart.map_or_else(|| line_end(raw), |h| h - 2);
    let line = &raw[..end];
    let (m, uri, v) = plain_request_line(line, b"ICAP/")
        .or_else(|| split3(line, false))
        .filter(|(_, u, _)| !u.is_empty() && !has_ctl(u))
        .ok_or_else(|| bad_line(ErrorKind::BadStartLine, line, "not an ICAP request line"))?;
    let method = Method::from_bytes(m)
        .ok_or_else(|| bad_line(ErrorKind::BadStartLine, line, "method is not a token"))?;
    let version = Version::parse(v).ok_or_else(|| {
        Error::new(
            ErrorKind::BadVersion,
            (m.len() + uri.len() + 2) as u64,
            format!("expected ICAP/x.y, found {:?}", String::from_utf8_lossy(v)),
        )
    })?;
    let uri = raw.slice(m.len() + 1..m.len() + 1 + uri.len());
    Ok((
        RequestLine {
            method,
            uri,
            version,
        },
        end + 2,
    ))
}

/// A request line of the common shape, `METHOD SP target SP PPPP/d.d` (`PPPP/` being
/// `prefix`) with a target free of spaces and control bytes, split from its ends: the version by
/// position, the method at the first space, the target checked in one pass. `None` for any other
/// shape, which [`split3`] then reads (and the callers report errors for). For a line of this
/// shape [`split3`] returns the same three parts: its second space is the one before the version.
#[inline]
fn plain_request_line<'a>(
    line: &'a [u8],
    prefix: &[u8; 5],
) -> Option<(&'a [u8], &'a [u8], &'a [u8])> {
    let (head, v) = line.split_at_checked(line.len().checked_sub(8)?)?;
    let [p0, p1, p2, p3, p4, ma, b'.', mi] = v else {
        return None;
    };
    if [*p0, *p1, *p2, *p3, *p4] != *prefix || !ma.is_ascii_digit() || !mi.is_ascii_digit() {
        return None;
    }
    let [head @ .., b' '] = head else {
        return None;
    };
    let a = head.iter().position(|&b| b == b' ')?;
    let (m, t) = (&head[..a], &head[a + 1..]);
    let bad = t
        .iter()
        .fold(false, |bad, &b| bad | (b <= b' ') | (b == 0x7f));
    (!t.is_empty() && !bad).then_some((m, t, v))
}

/// A status line of the common shape, `PPPP/d.d ddd reason` or `PPPP/d.d ddd` (`PPPP/` being
/// `prefix`), read by position: the version's digits, the status and the reason. `None` for any
/// other shape (or a control byte in the reason), which the status-line parsers then split
/// (and report errors for). The split reads a line of this shape the same way: the first space
/// follows the version, the second the three digits. One grammar, with its common case first.
#[inline]
fn plain_status_line<'a>(line: &'a [u8], prefix: &[u8; 5]) -> Option<(u8, u8, u16, &'a [u8])> {
    let [p0, p1, p2, p3, p4, ma, b'.', mi, b' ', a, b, c, rest @ ..] = line else {
        return None;
    };
    if [*p0, *p1, *p2, *p3, *p4] != *prefix || !ma.is_ascii_digit() || !mi.is_ascii_digit() {
        return None;
    }
    let status = status_code(&[*a, *b, *c])?;
    let reason = match rest {
        [] => rest,
        [b' ', r @ ..] => r,
        _ => return None,
    };
    (!has_ctl(reason)).then_some((ma - b'0', mi - b'0', status, reason))
}

/// The parsed start line of an ICAP response; `pub` as [`RequestLine`].
#[derive(Debug)]
pub struct StatusLine {
    pub(crate) version: Version,
    pub(crate) status: u16,
    pub(crate) reason: Bytes,
}

/// Parses `ICAP/x.y SP NNN SP reason` (the reason may be empty or absent).
pub(crate) fn parse_status_line(raw: &Bytes, hstart: Option<usize>) -> Result<(StatusLine, usize)> {
    let end = hstart.map_or_else(|| line_end(raw), |h| h - 2);
    let line = &raw[..end];
    if let Some((major, minor, status, _)) = plain_status_line(line, b"ICAP/") {
        let reason = word(raw, 13.min(end), end, reason_word);
        let version = Version { major, minor };
        return Ok((
            StatusLine {
                version,
                status,
                reason,
            },
            end + 2,
        ));
    }
    let (v, code, reason) = split3(line, true)
        .ok_or_else(|| bad_line(ErrorKind::BadStartLine, line, "not an ICAP status line"))?;
    let version = Version::parse(v).ok_or_else(|| {
        Error::new(
            ErrorKind::BadVersion,
            0,
            format!("expected ICAP/x.y, found {:?}", String::from_utf8_lossy(v)),
        )
    })?;
    let status = status_code(code).ok_or_else(|| {
        Error::new(
            ErrorKind::BadStatus,
            (v.len() + 1) as u64,
            format!(
                "status {:?} is not three digits",
                String::from_utf8_lossy(code)
            ),
        )
    })?;
    if has_ctl(reason) {
        return Err(bad_line(
            ErrorKind::BadStartLine,
            line,
            "control byte in reason",
        ));
    }
    let start = v.len() + code.len() + 2;
    let reason = word(raw, start.min(end), end, reason_word);
    Ok((
        StatusLine {
            version,
            status,
            reason,
        },
        end + 2,
    ))
}

/// An encapsulated HTTP request head (`req-hdr`).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequestHead {
    /// The request method, e.g. `GET`.
    pub method: Bytes,
    /// The request target as sent: absolute form from proxies, origin form otherwise.
    pub target: Bytes,
    /// The version token, e.g. `HTTP/1.1`.
    pub version: Bytes,
    /// The header fields.
    pub headers: Headers,
}

/// An encapsulated HTTP response head (`res-hdr`).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpResponseHead {
    /// The version token, e.g. `HTTP/1.1`.
    pub version: Bytes,
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: Bytes,
    /// The header fields.
    pub headers: Headers,
}

/// Checks that `raw` is exactly one head: lines in CRLF and the first blank line at its end.
fn exact_head(raw: &[u8], section: &str) -> Result<()> {
    match scan_head(raw, 0)? {
        Some(n) if n == raw.len() => Ok(()),
        Some(n) => Err(Error::new(
            ErrorKind::EncapsulatedMismatch,
            n as u64,
            format!(
                "Encapsulated gives the {section} section {} bytes, but its head ends after {n}",
                raw.len()
            ),
        )),
        None => Err(Error::new(
            ErrorKind::EncapsulatedMismatch,
            raw.len() as u64,
            format!(
                "the {section} section ({} bytes by Encapsulated) does not end with a blank line",
                raw.len()
            ),
        )),
    }
}

fn http_version(v: &[u8]) -> bool {
    v.len() >= 6 && v.starts_with(b"HTTP/") && !has_ctl(v)
}

/// The one parse of an HTTP head that must fill `raw` exactly: the start line by `line`, the
/// header block by [`parse_block`], in one pass when the head is well formed. Anything else
/// is looked at again in order (framing, start line, block) to report its first error.
fn http_head<L>(
    raw: &Bytes,
    section: &str,
    max_headers: usize,
    fold: Option<usize>,
    arena: &mut BytesMut,
    line: fn(&[u8]) -> Result<L>,
) -> Result<(L, Fields)> {
    if let Some((n, hstart, fields)) = parse_head(raw, max_headers, fold, arena) {
        if n == raw.len() {
            return Ok((line(&raw[..hstart - 2])?, fields));
        }
    }
    exact_head(raw, section)?;
    let end = line_end(raw);
    line(&raw[..end])?;
    match parse_block(raw, end + 2, max_headers, fold, arena)? {
        Some((n, fields)) if n == raw.len() => Ok((line(&raw[..end])?, fields)),
        _ => Err(Error::new(
            ErrorKind::BadHttpHead,
            0,
            format!("the {section} section is not one head"),
        )),
    }
}

/// Lengths of the method, target and version of an HTTP request line.
fn request_line(line: &[u8]) -> Result<(usize, usize, usize)> {
    let (m, t, v) = plain_request_line(line, b"HTTP/")
        .or_else(|| split3(line, false))
        .filter(|(m, t, v)| is_token(m) && !t.is_empty() && !has_ctl(t) && http_version(v))
        .ok_or_else(|| bad_line(ErrorKind::BadHttpHead, line, "not an HTTP request line"))?;
    Ok((m.len(), t.len(), v.len()))
}

/// Version length, status and reason length of an HTTP status line.
fn status_line(line: &[u8]) -> Result<(usize, u16, usize)> {
    if let Some((_, _, status, reason)) = plain_status_line(line, b"HTTP/") {
        return Ok((8, status, reason.len()));
    }
    let (v, code, reason) = split3(line, true)
        .filter(|(v, _, r)| http_version(v) && !has_ctl(r))
        .ok_or_else(|| bad_line(ErrorKind::BadHttpHead, line, "not an HTTP status line"))?;
    let status = status_code(code)
        .ok_or_else(|| bad_line(ErrorKind::BadHttpHead, line, "HTTP status is not 3 digits"))?;
    Ok((v.len(), status, reason.len()))
}

/// A thread's arena for the header offsets of heads parsed outside a decoder: reclaimed in
/// place once the heads parsed earlier are dropped, so a loop of parses allocates nothing.
#[inline(always)]
fn with_arena<R>(f: impl FnOnce(&mut BytesMut) -> R) -> R {
    thread_local! {
        static ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    ARENA.with(|a| {
        let mut a = a.borrow_mut();
        ready_arena(&mut a);
        f(&mut a)
    })
}

/// The error for a head over [`Limits::max_http_head`].
fn too_large(raw: &[u8], limits: &Limits) -> Option<Error> {
    (raw.len() > limits.max_http_head).then(|| {
        Error::new(
            ErrorKind::HttpHeadTooLarge,
            limits.max_http_head as u64,
            format!(
                "HTTP head of {} bytes, over the limit of {}",
                raw.len(),
                limits.max_http_head
            ),
        )
    })
}

impl HttpRequestHead {
    /// Parses an HTTP request head: the request line, header lines and the blank line, which
    /// must end `raw` (a head and nothing else, as an ICAP `req-hdr` section holds it; a proxy
    /// finds its end first). Every line ends in CRLF; obs-fold is an error, as RFC 7230 3.2.4
    /// has it for requests. `limits` gives [`Limits::max_http_head`] and
    /// [`Limits::max_headers`]. No byte is copied: the method, target, version and fields are
    /// views of `raw`. Errors carry an offset into `raw`: a head that ends before `raw` does (or
    /// not at all) is [`ErrorKind::EncapsulatedMismatch`], the check an ICAP section needs; a
    /// bare LF [`ErrorKind::BareLf`]; a bad request line [`ErrorKind::BadHttpHead`]; a bad field
    /// [`ErrorKind::BadHeader`] at the bad byte.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use icap::{HttpRequestHead, Limits};
    ///
    /// let raw = Bytes::from_static(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n");
    /// let head = HttpRequestHead::parse(raw, &Limits::default())?;
    /// assert_eq!((&head.method[..], &head.target[..]), (&b"GET"[..], &b"/a?b=1"[..]));
    /// assert_eq!(head.headers.get("host"), Some(&b"example.com"[..]));
    ///
    /// let bad = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n");
    /// let e = HttpRequestHead::parse(bad, &Limits::default()).unwrap_err();
    /// assert_eq!((e.kind(), e.offset()), (icap::ErrorKind::BadHeader, 23));
    /// # Ok::<(), icap::Error>(())
    /// ```
    pub fn parse(raw: Bytes, limits: &Limits) -> Result<Self> {
        if let Some(e) = too_large(&raw, limits) {
            return Err(e);
        }
        with_arena(|arena| Self::parse_in(raw, limits.max_headers, arena))
    }

    /// [`HttpRequestHead::parse`] with the offsets packed in a decoder's arena.
    #[inline]
    pub(crate) fn parse_in(raw: Bytes, max_headers: usize, arena: &mut BytesMut) -> Result<Self> {
        let ((ml, tl, vl), fields) =
            http_head(&raw, "req-hdr", max_headers, None, arena, request_line)?;
        Ok(HttpRequestHead {
            method: word(&raw, 0, ml, method_word),
            target: raw.slice(ml + 1..ml + 1 + tl),
            version: word(&raw, ml + tl + 2, ml + tl + 2 + vl, version_word),
            headers: Headers::from_fields(raw, fields),
        })
    }

    /// Makes a head from parts, e.g. `HttpRequestHead::new("GET", "http://x/", Headers::new())`.
    pub fn new(method: &str, target: &str, headers: Headers) -> Self {
        HttpRequestHead {
            method: Bytes::copy_from_slice(method.as_bytes()),
            target: Bytes::copy_from_slice(target.as_bytes()),
            version: Bytes::from_static(b"HTTP/1.1"),
            headers,
        }
    }

    /// Bytes [`HttpRequestHead::write_to`] writes.
    pub fn encoded_len(&self) -> usize {
        self.method.len()
            + self.target.len()
            + self.version.len()
            + 4
            + self.headers.encoded_len()
            + 2
    }

    /// Writes the head, blank line included.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.put_slice(&self.method);
        out.put_u8(b' ');
        out.put_slice(&self.target);
        out.put_u8(b' ');
        out.put_slice(&self.version);
        out.put_slice(b"\r\n");
        self.headers.write_to(out);
        out.put_slice(b"\r\n");
    }

    /// The start line, e.g. `GET / HTTP/1.1`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}",
            String::from_utf8_lossy(&self.method),
            String::from_utf8_lossy(&self.target),
            String::from_utf8_lossy(&self.version)
        )
    }
}

impl HttpResponseHead {
    /// Parses an HTTP response head: the status line, header lines and the blank line, which
    /// must end `raw` (as an ICAP `res-hdr` section holds it). Every line ends in CRLF; obs-fold
    /// continuation lines are joined with one space, up to [`Limits::max_folded_value`] bytes, as
    /// ICAP servers' responses carry them. `limits` also gives [`Limits::max_http_head`] and
    /// [`Limits::max_headers`]. No byte is copied but folded values. Errors as
    /// [`HttpRequestHead::parse`]'s.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use icap::{HttpResponseHead, Limits};
    ///
    /// let raw = Bytes::from_static(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\n");
    /// let head = HttpResponseHead::parse(raw, &Limits::default())?;
    /// assert_eq!((head.status, &head.reason[..]), (403, &b"Forbidden"[..]));
    /// assert_eq!(head.headers.get("content-length"), Some(&b"7"[..]));
    /// # Ok::<(), icap::Error>(())
    /// ```
    pub fn parse(raw: Bytes, limits: &Limits) -> Result<Self> {
        if let Some(e) = too_large(&raw, limits) {
            return Err(e);
        }
        with_arena(|arena| Self::parse_in(raw, limits.max_headers, limits.max_folded_value, arena))
    }

    /// [`HttpResponseHead::parse`] with the offsets packed in a decoder's arena.
    #[inline]
    pub(crate) fn parse_in(
        raw: Bytes,
        max_headers: usize,
        max_folded: usize,
        arena: &mut BytesMut,
    ) -> Result<Self> {
        let ((vl, status, rl), fields) = http_head(
            &raw,
            "res-hdr",
            max_headers,
            Some(max_folded),
            arena,
            status_line,
        )?;
        // Just after the code's space; with no reason that is the line's LF, an empty slice.
        let rstart = vl + 5;
        Ok(HttpResponseHead {
            version: word(&raw, 0, vl, version_word),
            status,
            reason: word(&raw, rstart, rstart + rl, reason_word),
            headers: Headers::from_fields(raw, fields),
        })
    }

    /// Makes a head from parts, e.g. `HttpResponseHead::new(403, "Forbidden", headers)`.
    pub fn new(status: u16, reason: &str, headers: Headers) -> Self {
        assert!(
            (100..1000).contains(&status),
            "HTTP status must have three digits"
        );
        HttpResponseHead {
            version: Bytes::from_static(b"HTTP/1.1"),
            status,
            reason: Bytes::copy_from_slice(reason.as_bytes()),
            headers,
        }
    }

    /// Bytes [`HttpResponseHead::write_to`] writes.
    pub fn encoded_len(&self) -> usize {
        self.version.len() + 5 + self.reason.len() + 2 + self.headers.encoded_len() + 2
    }

    /// Writes the head, blank line included.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.put_slice(&self.version);
        out.put_u8(b' ');
        write_status(self.status, out);
        out.put_u8(b' ');
        out.put_slice(&self.reason);
        out.put_slice(b"\r\n");
        self.headers.write_to(out);
        out.put_slice(b"\r\n");
    }

    /// The start line, e.g. `HTTP/1.1 403 Forbidden`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}",
            String::from_utf8_lossy(&self.version),
            self.status,
            String::from_utf8_lossy(&self.reason)
        )
        .trim_end()
        .to_string()
    }
}

pub(crate) fn write_status(status: u16, out: &mut BytesMut) {
    out.put_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
}

impl fmt::Debug for HttpRequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequestHead")
            .field("line", &self.line())
            .field("headers", &self.headers)
            .finish()
    }
}

impl fmt::Debug for HttpResponseHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponseHead")
            .field("line", &self.line())
            .field("headers", &self.headers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_is_resumable_and_strict() {
        let h = b"A b c\r\nX: 1\r\n\r\nrest";
        assert_eq!(scan_head(h, 0).unwrap(), Some(15));
        for cut in 0..15 {
            assert_eq!(scan_head(&h[..cut], 0).unwrap(), None);
            assert_eq!(
                scan_head(&h[..15], cut.saturating_sub(3)).unwrap(),
                Some(15)
            );
        }
        let e = scan_head(b"A b c\nX: 1\r\n\r\n", 0).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BareLf, 5));
    }

    #[test]
    fn start_lines() {
        let raw = Bytes::from_static(b"REQMOD icap://h/s?a=1 ICAP/1.0\r\n\r\n");
        let (l, hs) = parse_request_line(&raw, None).unwrap();
        assert_eq!(
            (l.method, &l.uri[..], l.version, hs),
            (
                Method::Reqmod,
                &b"icap://h/s?a=1"[..],
                Version::ICAP_1_0,
                32
            )
        );
        let raw = Bytes::from_static(b"ICAP/1.0 204 Unmodified\r\n\r\n");
        let (s, _) = parse_status_line(&raw, None).unwrap();
        assert_eq!((s.status, &s.reason[..]), (204, &b"Unmodified"[..]));
        let raw = Bytes::from_static(b"ICAP/1.0 100\r\n\r\n");
        let (s, _) = parse_status_line(&raw, None).unwrap();
        assert_eq!((s.status, &s.reason[..]), (100, &b""[..]));
        for bad in [
            &b"REQMOD  icap://h/ ICAP/1.0\r\n\r\n"[..],
            b"REQMOD\r\n\r\n",
            b"RE(MOD icap://x ICAP/1.0\r\n\r\n",
        ] {
            let e = parse_request_line(&Bytes::copy_from_slice(bad), None)
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::BadStartLine);
        }
        let e = parse_request_line(
            &Bytes::from_static(b"REQMOD icap://x HTTP/1.1\r\n\r\n"),
            None,
        )
        .err()
        .unwrap();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadVersion, 16));
        let e = parse_status_line(&Bytes::from_static(b"ICAP/1.0 2x4 OK\r\n\r\n"), None)
            .err()
            .unwrap();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::BadStatus, 9));
    }

    #[test]
    fn request_lines_of_the_common_shape_read_as_the_split_reads_them() {
        for line in [
            &b"GET / HTTP/1.1"[..],
            b"GET http://x/a?b=c%20d HTTP/1.0",
            b" / HTTP/1.1",
            b"M\x01 /caf\xe9 HTTP/1.1",
        ] {
            assert_eq!(
                plain_request_line(line, b"HTTP/"),
                split3(line, false),
                "{line:?}"
            );
            assert!(plain_request_line(line, b"HTTP/").is_some(), "{line:?}");
        }
        for line in [
            &b"GET  / HTTP/1.1"[..],
            b"GET / x HTTP/1.1",
            b"GET /\x01 HTTP/1.1",
            b"GET /\x7f HTTP/1.1",
            b"GET /\t HTTP/1.1",
            b"GET / HTTP/1.x",
            b"GET / HTTP/2",
            b"GET HTTP/1.1",
            b"GET / ICAP/1.0",
            b"HTTP/1.1",
        ] {
            assert_eq!(plain_request_line(line, b"HTTP/"), None, "{line:?}");
        }
        let raw = Bytes::from_static(b"RESPMOD icap://h/s?x ICAP/1.0\r\n\r\n");
        let (l, _) = parse_request_line(&raw, None).unwrap();
        assert_eq!(
            (l.method, &l.uri[..]),
            (Method::Respmod, &b"icap://h/s?x"[..])
        );
    }

    #[test]
    fn status_lines_of_the_common_shape_read_as_the_split_reads_them() {
        for line in [
            &b"HTTP/1.1 200 OK"[..],
            b"HTTP/1.0 403 Forbidden",
            b"HTTP/1.1 204",
            b"HTTP/1.1 204 ",
            b"HTTP/9.9 599 a b  c",
            b"HTTP/1.1 200 caf\xe9",
        ] {
            let fast = plain_status_line(line, b"HTTP/").expect("common shape");
            let (v, code, reason) = split3(line, true).unwrap();
            assert_eq!(
                (v.len(), Some(fast.2), fast.3),
                (8, status_code(code), reason),
                "{line:?}"
            );
        }
        for line in [
            &b"HTTP/1.1 200OK"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.x 200 OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 200 O\x01K",
            b"HTTP/2 200 OK",
            b"ICAP/1.0 200 OK",
        ] {
            assert_eq!(plain_status_line(line, b"HTTP/"), None, "{line:?}");
        }
        let raw = Bytes::from_static(b"ICAP/1.0 204\r\n\r\n");
        let (s, _) = parse_status_line(&raw, None).unwrap();
        assert_eq!(
            (s.version, s.status, &s.reason[..]),
            (Version::ICAP_1_0, 204, &b""[..])
        );
    }

    #[test]
    fn http_heads_round_trip() {
        let raw = Bytes::from_static(b"GET http://x/a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        let h = HttpRequestHead::parse_in(raw.clone(), 10, &mut BytesMut::new()).unwrap();
        assert_eq!(
            (&h.method[..], &h.target[..], &h.version[..]),
            (&b"GET"[..], &b"http://x/a?b"[..], &b"HTTP/1.1"[..])
        );
        let mut out = BytesMut::new();
        h.write_to(&mut out);
        assert_eq!(out, raw);
        assert_eq!(h.encoded_len(), raw.len());
        let raw = Bytes::from_static(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\n");
        let r = HttpResponseHead::parse_in(raw.clone(), 10, 1024, &mut BytesMut::new()).unwrap();
        assert_eq!((r.status, &r.reason[..]), (403, &b"Forbidden"[..]));
        let mut out = BytesMut::new();
        r.write_to(&mut out);
        assert_eq!(out, raw);
        assert_eq!(r.encoded_len(), raw.len());
    }

    #[test]
    fn one_pass_declines_what_framing_rejects() {
        let req = "GET http://x/a?b HTTP/1.1\r\nHost: x\r\nA:  1 \r\nEmpty:\r\n\r\n";
        let res = "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nX: y\r\n\r\n";
        let whole = |t: &[u8], is_req: bool| {
            let raw = Bytes::copy_from_slice(t);
            if is_req {
                HttpRequestHead::parse_in(raw, 10, &mut BytesMut::new()).is_ok()
            } else {
                HttpResponseHead::parse_in(raw, 10, 1024, &mut BytesMut::new()).is_ok()
            }
        };
        // Every CRLF made a bare LF, every line end made a bare CR, a byte too many or too
        // few: the one pass declines, and the head is an error.
        for (text, is_req) in [(req, true), (res, false)] {
            let b = text.as_bytes();
            assert!(whole(b, is_req));
            assert_eq!(
                parse_head(b, 10, None, &mut BytesMut::new()).map(|(n, h, _)| (n, h)),
                Some((b.len(), memchr::memchr(b'\n', b).unwrap() + 1))
            );
            for i in (0..b.len()).filter(|&i| b[i] == b'\r') {
                let mut lf = b.to_vec();
                lf.remove(i);
                assert!(
                    parse_head(&lf, 10, None, &mut BytesMut::new()).is_none_or(|(k, _, _)| k < i),
                    "{i}"
                );
                assert!(!whole(&lf, is_req), "{i}");
                let mut cr = b.to_vec();
                cr.remove(i + 1);
                assert!(!whole(&cr, is_req), "{i}");
            }
            assert!(!whole(&b[..b.len() - 1], is_req));
            assert!(!whole(format!("{text}x").as_bytes(), is_req));
            assert!(parse_head(b, 1, None, &mut BytesMut::new()).is_none());
        }
    }

    #[test]
    fn public_parsers_check_their_limits() {
        let raw = Bytes::from_static(b"HTTP/1.1 200 OK\r\nA: 1\r\n 2\r\nB: 3\r\n\r\n");
        let h = HttpResponseHead::parse(raw.clone(), &Limits::default()).unwrap();
        assert_eq!(
            h.headers.iter().collect::<Vec<_>>(),
            vec![(&b"A"[..], &b"1 2"[..]), (b"B", b"3")]
        );
        let e = HttpResponseHead::parse(raw.clone(), &Limits::default().with_max_headers(2))
            .unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::TooManyHeaders, 27));
        let e = HttpResponseHead::parse(raw.clone(), &Limits::default().with_max_folded_value(2))
            .unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::FoldedValueTooLarge, 23));
        let e =
            HttpResponseHead::parse(raw, &Limits::default().with_max_http_head(30)).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::HttpHeadTooLarge, 30));
        let raw = Bytes::from_static(b"GET / HTTP/1.1\r\nA: 1\r\n 2\r\n\r\n");
        let e = HttpRequestHead::parse(raw, &Limits::default()).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::ObsFold, 22));
    }

    #[test]
    fn http_head_must_fill_its_section() {
        let e = HttpRequestHead::parse_in(
            Bytes::from_static(b"GET / HTTP/1.1\r\n\r\nxx"),
            10,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (ErrorKind::EncapsulatedMismatch, 18)
        );
        let e = HttpRequestHead::parse_in(
            Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            10,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::EncapsulatedMismatch);
        let e = HttpRequestHead::parse_in(
            Bytes::from_static(b"GET /\r\n\r\n"),
            10,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadHttpHead);
    }
}
