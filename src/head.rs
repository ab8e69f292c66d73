//! Heads: start lines, the ICAP version, methods, and the encapsulated HTTP heads.
//!
//! A head is a start line, header lines and a blank line, every line ending in CRLF. This
//! module finds where a head ends (resumably, so that a head arriving one byte
//! at a time is scanned once), splits start lines, and parses encapsulated HTTP request and
//! response heads. Header lines themselves belong to [`headers`](crate::headers); which heads
//! a message carries belongs to [`encapsulated`](crate::encapsulated).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};
use crate::headers::{is_token, parse_block, Entries, Headers};

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

/// One pass over a whole head at the start of `buf` whose lines all end in CRLF: the start
/// line's end (found by its LF) and the header block through [`parse_block`]. Returns the head
/// length, where the header lines start, and the fields. `None` when the head is incomplete,
/// has a bare LF, or anything [`parse_block`] leaves to the byte-exact path; callers then scan
/// and parse as before, which reports the same error at the same offset.
pub(crate) fn parse_head_fast(
    buf: &[u8],
    max_headers: usize,
    arena: &mut BytesMut,
) -> Option<(usize, usize, Entries)> {
    let lf = memchr::memchr(b'\n', buf)?;
    if lf == 0 || buf[lf - 1] != b'\r' {
        return None;
    }
    let (n, entries) = parse_block(buf, lf + 1, max_headers, arena)?;
    Some((lf + 1 + n, lf + 1, entries))
}

/// [`parse_head_fast`] on an encapsulated head that must fill `raw` exactly.
fn exact_head_fast(
    raw: &[u8],
    max_headers: usize,
    arena: &mut BytesMut,
) -> Option<(usize, Entries)> {
    let (n, hstart, entries) = parse_head_fast(raw, max_headers, arena)?;
    (n == raw.len()).then_some((hstart, entries))
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

/// HTTP methods common enough to hand out as static `Bytes`.
const METHODS: &[&[u8]] = &[
    b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"DELETE", b"PATCH",
];
/// HTTP versions, likewise.
const HTTP_VERSIONS: &[&[u8]] = &[b"HTTP/1.1", b"HTTP/1.0"];
/// ICAP and HTTP reason phrases, likewise.
const REASONS: &[&[u8]] = &[
    b"OK",
    b"No Content",
    b"Unmodified",
    b"No modifications needed",
    b"Continue",
    b"Forbidden",
    b"Not Found",
    b"Found",
    b"Not Modified",
    b"Moved Permanently",
];

/// `raw[start..end]` as `Bytes`: a static one when it is one of `common`, else a slice of
/// `raw`. Equal either way; a static one costs no reference-count update (an atomic
/// increment now and decrement at drop) and does not keep the input buffer alive.
fn word(raw: &Bytes, start: usize, end: usize, common: &[&'static [u8]]) -> Bytes {
    let w = &raw[start..end];
    match common.iter().find(|c| **c == w) {
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

/// True when `s` holds a control byte. A fold without early exit, so that it vectorises:
/// targets and URIs are the long part of a start line.
fn has_ctl(s: &[u8]) -> bool {
    s.iter()
        .fold(false, |bad, &b| bad | (b < 0x20) | (b == 0x7f))
}

fn status_code(s: &[u8]) -> Option<u16> {
    match s {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
        }
        _ => None,
    }
}

/// The parsed start line of an ICAP request.
pub(crate) struct RequestLine {
    pub method: Method,
    pub uri: Bytes,
    pub version: Version,
}

/// Parses `METHOD SP URI SP ICAP/x.y` from a scanned head; returns it with the header start.
/// `hstart`, when known, is where the header lines start (just after the start line's CRLF).
pub(crate) fn parse_request_line(
    raw: &Bytes,
    hstart: Option<usize>,
) -> Result<(RequestLine, usize)> {
    let end = hstart.map_or_else(|| line_end(raw), |h| h - 2);
    let line = &raw[..end];
    let (m, uri, v) = split3(line, false)
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

/// The parsed start line of an ICAP response.
pub(crate) struct StatusLine {
    pub version: Version,
    pub status: u16,
    pub reason: Bytes,
}

/// Parses `ICAP/x.y SP NNN SP reason` (the reason may be empty or absent).
pub(crate) fn parse_status_line(raw: &Bytes, hstart: Option<usize>) -> Result<(StatusLine, usize)> {
    let end = hstart.map_or_else(|| line_end(raw), |h| h - 2);
    let line = &raw[..end];
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
    let reason = word(raw, start.min(end), end, REASONS);
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
fn exact_head(raw: &[u8], section: &str, max_headers: usize) -> Result<()> {
    let _ = max_headers;
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

impl HttpRequestHead {
    /// Parses an encapsulated request head that must fill `raw` exactly.
    pub(crate) fn parse(raw: Bytes, max_headers: usize, arena: &mut BytesMut) -> Result<Self> {
        match Self::parse_fast(raw, max_headers, arena) {
            Ok(h) => Ok(h),
            Err(raw) => Self::parse_exact(raw, max_headers, arena),
        }
    }

    /// One pass for a well-formed head; gives `raw` back for anything else.
    fn parse_fast(
        raw: Bytes,
        max_headers: usize,
        arena: &mut BytesMut,
    ) -> std::result::Result<Self, Bytes> {
        let Some((hstart, entries)) = exact_head_fast(&raw, max_headers, arena) else {
            return Err(raw);
        };
        let line = &raw[..hstart - 2];
        let Some((m, t, v)) = split3(line, false)
            .filter(|(m, t, v)| is_token(m) && !t.is_empty() && !has_ctl(t) && http_version(v))
        else {
            return Err(raw);
        };
        let (ml, tl, vl) = (m.len(), t.len(), v.len());
        Ok(HttpRequestHead {
            method: word(&raw, 0, ml, METHODS),
            target: raw.slice(ml + 1..ml + 1 + tl),
            version: word(&raw, ml + tl + 2, ml + tl + 2 + vl, HTTP_VERSIONS),
            headers: Headers::from_parsed(raw, entries),
        })
    }

    /// Scan, then parse, with exact error offsets.
    fn parse_exact(raw: Bytes, max_headers: usize, arena: &mut BytesMut) -> Result<Self> {
        exact_head(&raw, "req-hdr", max_headers)?;
        let end = line_end(&raw);
        let line = &raw[..end];
        let (m, t, v) = split3(line, false)
            .filter(|(m, t, v)| is_token(m) && !t.is_empty() && !has_ctl(t) && http_version(v))
            .ok_or_else(|| bad_line(ErrorKind::BadHttpHead, line, "not an HTTP request line"))?;
        let (ml, tl, vl) = (m.len(), t.len(), v.len());
        let headers = Headers::parse(
            raw.clone(),
            end + 2,
            raw.len() - 2,
            max_headers,
            None,
            arena,
        )?;
        Ok(HttpRequestHead {
            method: word(&raw, 0, ml, METHODS),
            target: raw.slice(ml + 1..ml + 1 + tl),
            version: word(&raw, ml + tl + 2, ml + tl + 2 + vl, HTTP_VERSIONS),
            headers,
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
    /// Parses an encapsulated response head that must fill `raw` exactly. Folded header lines
    /// are accepted (joined with one space, up to `max_folded` bytes), as in ICAP responses.
    pub(crate) fn parse(
        raw: Bytes,
        max_headers: usize,
        max_folded: usize,
        arena: &mut BytesMut,
    ) -> Result<Self> {
        match Self::parse_fast(raw, max_headers, arena) {
            Ok(h) => Ok(h),
            Err(raw) => Self::parse_exact(raw, max_headers, max_folded, arena),
        }
    }

    /// One pass for a well-formed head; gives `raw` back for anything else.
    fn parse_fast(
        raw: Bytes,
        max_headers: usize,
        arena: &mut BytesMut,
    ) -> std::result::Result<Self, Bytes> {
        let Some((hstart, entries)) = exact_head_fast(&raw, max_headers, arena) else {
            return Err(raw);
        };
        let end = hstart - 2;
        let line = &raw[..end];
        let Some((v, code, reason)) =
            split3(line, true).filter(|(v, _, r)| http_version(v) && !has_ctl(r))
        else {
            return Err(raw);
        };
        let Some(status) = status_code(code) else {
            return Err(raw);
        };
        let (vl, rl) = (v.len(), reason.len());
        let rstart = (vl + 5).min(end);
        Ok(HttpResponseHead {
            version: word(&raw, 0, vl, HTTP_VERSIONS),
            status,
            reason: word(&raw, rstart, rstart + rl, REASONS),
            headers: Headers::from_parsed(raw, entries),
        })
    }

    /// Scan, then parse, with exact error offsets; folded lines go through here.
    fn parse_exact(
        raw: Bytes,
        max_headers: usize,
        max_folded: usize,
        arena: &mut BytesMut,
    ) -> Result<Self> {
        exact_head(&raw, "res-hdr", max_headers)?;
        let end = line_end(&raw);
        let line = &raw[..end];
        let (v, code, reason) = split3(line, true)
            .filter(|(v, _, r)| http_version(v) && !has_ctl(r))
            .ok_or_else(|| bad_line(ErrorKind::BadHttpHead, line, "not an HTTP status line"))?;
        let status = status_code(code)
            .ok_or_else(|| bad_line(ErrorKind::BadHttpHead, line, "HTTP status is not 3 digits"))?;
        let (vl, rl) = (v.len(), reason.len());
        let headers = Headers::parse(
            raw.clone(),
            end + 2,
            raw.len() - 2,
            max_headers,
            Some(max_folded),
            arena,
        )?;
        let rstart = (vl + 5).min(end);
        Ok(HttpResponseHead {
            version: word(&raw, 0, vl, HTTP_VERSIONS),
            status,
            reason: word(&raw, rstart, rstart + rl, REASONS),
            headers,
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
    fn http_heads_round_trip() {
        let raw = Bytes::from_static(b"GET http://x/a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        let h = HttpRequestHead::parse(raw.clone(), 10, &mut BytesMut::new()).unwrap();
        assert_eq!(
            (&h.method[..], &h.target[..], &h.version[..]),
            (&b"GET"[..], &b"http://x/a?b"[..], &b"HTTP/1.1"[..])
        );
        let mut out = BytesMut::new();
        h.write_to(&mut out);
        assert_eq!(out, raw);
        assert_eq!(h.encoded_len(), raw.len());
        let raw = Bytes::from_static(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\n");
        let r = HttpResponseHead::parse(raw.clone(), 10, 1024, &mut BytesMut::new()).unwrap();
        assert_eq!((r.status, &r.reason[..]), (403, &b"Forbidden"[..]));
        let mut out = BytesMut::new();
        r.write_to(&mut out);
        assert_eq!(out, raw);
        assert_eq!(r.encoded_len(), raw.len());
    }

    #[test]
    fn one_pass_agrees_with_scan_then_parse() {
        let req = "GET http://x/a?b HTTP/1.1\r\nHost: x\r\nA:  1 \r\nEmpty:\r\n\r\n";
        let res = "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nX: y\r\n\r\n";
        let n = req.len();
        let fast = HttpRequestHead::parse_fast(Bytes::from(req), 10, &mut BytesMut::new()).unwrap();
        let exact =
            HttpRequestHead::parse_exact(Bytes::from(req), 10, &mut BytesMut::new()).unwrap();
        assert_eq!(fast, exact);
        let fast =
            HttpResponseHead::parse_fast(Bytes::from(res), 10, &mut BytesMut::new()).unwrap();
        let exact = HttpResponseHead::parse_exact(Bytes::from(res), 10, 1024, &mut BytesMut::new())
            .unwrap();
        assert_eq!(fast, exact);
        // Every CRLF made a bare LF, every line end made a bare CR, a byte too many or too
        // few: the one pass declines, so the scan reports the error as before.
        let whole = |t: &[u8], is_req: bool| {
            let raw = Bytes::copy_from_slice(t);
            if is_req {
                HttpRequestHead::parse_fast(raw, 10, &mut BytesMut::new()).is_ok()
            } else {
                HttpResponseHead::parse_fast(raw, 10, &mut BytesMut::new()).is_ok()
            }
        };
        for (text, is_req) in [(req, true), (res, false)] {
            let b = text.as_bytes();
            assert!(whole(b, is_req));
            for i in (0..b.len()).filter(|&i| b[i] == b'\r') {
                let mut lf = b.to_vec();
                lf.remove(i);
                assert!(
                    parse_head_fast(&lf, 10, &mut BytesMut::new()).is_none_or(|(k, _, _)| k < i),
                    "{i}"
                );
                assert!(!whole(&lf, is_req), "{i}");
                let mut cr = b.to_vec();
                cr.remove(i + 1);
                assert!(!whole(&cr, is_req), "{i}");
            }
            assert!(exact_head_fast(&b[..b.len() - 1], 10, &mut BytesMut::new()).is_none());
            assert!(
                exact_head_fast(format!("{text}x").as_bytes(), 10, &mut BytesMut::new()).is_none()
            );
            assert_eq!(
                parse_head_fast(b, 1, &mut BytesMut::new()).map(|(k, _, _)| k),
                None
            );
        }
        assert_eq!(
            parse_head_fast(req.as_bytes(), 10, &mut BytesMut::new())
                .unwrap()
                .0,
            n
        );
    }

    #[test]
    fn http_head_must_fill_its_section() {
        let e = HttpRequestHead::parse(
            Bytes::from_static(b"GET / HTTP/1.1\r\n\r\nxx"),
            10,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (ErrorKind::EncapsulatedMismatch, 18)
        );
        let e = HttpRequestHead::parse(
            Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            10,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::EncapsulatedMismatch);
        let e = HttpRequestHead::parse(
            Bytes::from_static(b"GET /\r\n\r\n"),
            10,
            &mut BytesMut::new(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadHttpHead);
    }
}
