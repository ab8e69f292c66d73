//! ICAP messages without their bodies: [`Request`] and [`Response`].
//!
//! A message here is everything before the chunked body: the ICAP start line and headers and
//! the encapsulated HTTP heads. The decoder yields one when all of those have arrived; the
//! encoder writes one, computing `Encapsulated` from the real sizes of the heads. Bodies are
//! streamed separately, as `Bytes` pieces, so a message value stays small whatever the body.

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::encapsulated::{Encapsulated, Section};
use crate::proto::fields::Headers;
use crate::proto::head::{write_status, HttpRequestHead, HttpResponseHead, Method, Version};

/// Which body a message carries, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// `req-body`: the body of the encapsulated HTTP request.
    Request,
    /// `res-body`: the body of the encapsulated HTTP response.
    Response,
    /// `opt-body`: an OPTIONS body.
    Options,
}

impl BodyKind {
    /// The Encapsulated section name.
    pub fn section(self) -> Section {
        match self {
            BodyKind::Request => Section::ReqBody,
            BodyKind::Response => Section::ResBody,
            BodyKind::Options => Section::OptBody,
        }
    }

    pub(crate) fn from_section(s: Section) -> Option<BodyKind> {
        match s {
            Section::ReqBody => Some(BodyKind::Request),
            Section::ResBody => Some(BodyKind::Response),
            Section::OptBody => Some(BodyKind::Options),
            _ => None,
        }
    }
}

/// An ICAP request up to its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// REQMOD, RESPMOD, OPTIONS or an extension method.
    pub method: Method,
    /// The ICAP URI as sent, e.g. `icap://dlp.example:1344/reqmod?x=1`.
    pub uri: Bytes,
    /// The protocol version.
    pub version: Version,
    /// ICAP header fields. When decoded, `Encapsulated` is among them as received; when
    /// encoding, any `Encapsulated` here is replaced by the computed value.
    pub headers: Headers,
    /// The encapsulated HTTP request head (`req-hdr`).
    pub http_request: Option<HttpRequestHead>,
    /// The encapsulated HTTP response head (`res-hdr`).
    pub http_response: Option<HttpResponseHead>,
    /// The body that follows, or `None` for `null-body` or no Encapsulated header.
    pub body: Option<BodyKind>,
}

/// An ICAP response up to its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The protocol version.
    pub version: Version,
    /// The status code: 100, 200, 204, 206, 4xx, 5xx.
    pub status: u16,
    /// The reason phrase as sent (`204 Unmodified` and `204 No Content` are both real).
    pub reason: Bytes,
    /// ICAP header fields; see [`Request::headers`] for Encapsulated.
    pub headers: Headers,
    /// An encapsulated HTTP request head: a REQMOD answered with a (modified) request.
    pub http_request: Option<HttpRequestHead>,
    /// An encapsulated HTTP response head: a RESPMOD result, or a REQMOD answered with a
    /// response (typically a block page).
    pub http_response: Option<HttpResponseHead>,
    /// The body that follows, if any.
    pub body: Option<BodyKind>,
}

impl Request {
    /// A request with no headers, heads or body.
    pub fn new(method: Method, uri: impl Into<Bytes>) -> Self {
        Request {
            method,
            uri: uri.into(),
            version: Version::ICAP_1_0,
            headers: Headers::new(),
            http_request: None,
            http_response: None,
            body: None,
        }
    }

    /// The `Preview` header as a number, when present and valid: digits only, as the decoder
    /// reads it (`+5` is not a number of bytes).
    pub fn preview(&self) -> Option<u64> {
        self.headers
            .get("Preview")
            .and_then(crate::proto::grammar::decimal)
    }

    /// True when the client accepts a 204 outside a preview (`Allow: 204`).
    pub fn allows_204(&self) -> bool {
        self.headers.has_token("Allow", "204")
    }

    /// True when the client accepts 206 partial answers (`Allow: 206`).
    pub fn allows_206(&self) -> bool {
        self.headers.has_token("Allow", "206")
    }

    /// The Encapsulated value matching this message's heads and body.
    pub fn encapsulated(&self) -> Encapsulated {
        layout(
            self.http_request.as_ref().map(|h| h.encoded_len()),
            self.http_response.as_ref().map(|h| h.encoded_len()),
            self.body,
        )
    }

    /// Writes the ICAP head and the encapsulated heads, with `Encapsulated` computed (kept in
    /// the position it has in `headers`, else written last). Bodies are framed by
    /// [`Encoder`](crate::Encoder).
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_slice(self.method.as_bytes());
        out.put_u8(b' ');
        out.put_slice(&self.uri);
        out.put_u8(b' ');
        self.version.write_to(out);
        out.put_slice(b"\r\n");
        write_icap_headers(
            &self.headers,
            self.needs_encapsulated(),
            self.encapsulated(),
            out,
        );
        write_heads(&self.http_request, &self.http_response, out);
    }

    fn needs_encapsulated(&self) -> bool {
        // An OPTIONS request without body or Encapsulated is what squid sends; keep it so.
        !(self.method == Method::Options
            && self.body.is_none()
            && !self.headers.contains("Encapsulated"))
    }

    /// Bytes [`Request::write_to`] writes.
    pub fn encoded_len(&self) -> usize {
        self.method.as_bytes().len()
            + self.uri.len()
            + 12
            + 2
            + icap_headers_len(
                &self.headers,
                self.needs_encapsulated(),
                self.encapsulated(),
            )
            + heads_len(&self.http_request, &self.http_response)
    }
}

impl Response {
    /// A response with the given status and reason and nothing else.
    pub fn new(status: u16, reason: impl Into<Bytes>) -> Self {
        assert!(
            (100..1000).contains(&status),
            "ICAP status must have three digits"
        );
        Response {
            version: Version::ICAP_1_0,
            status,
            reason: reason.into(),
            headers: Headers::new(),
            http_request: None,
            http_response: None,
            body: None,
        }
    }

    /// The Encapsulated value matching this message's heads and body.
    pub fn encapsulated(&self) -> Encapsulated {
        layout(
            self.http_request.as_ref().map(|h| h.encoded_len()),
            self.http_response.as_ref().map(|h| h.encoded_len()),
            self.body,
        )
    }

    /// True for 100 and 204, which carry no Encapsulated header unless one is given.
    fn needs_encapsulated(&self) -> bool {
        !(matches!(self.status, 100 | 204)
            && self.body.is_none()
            && self.http_request.is_none()
            && self.http_response.is_none()
            && !self.headers.contains("Encapsulated"))
    }

    /// Writes the ICAP head and encapsulated heads; see [`Request::write_to`].
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        self.version.write_to(out);
        out.put_u8(b' ');
        write_status(self.status, out);
        if !self.reason.is_empty() {
            out.put_u8(b' ');
            out.put_slice(&self.reason);
        }
        out.put_slice(b"\r\n");
        write_icap_headers(
            &self.headers,
            self.needs_encapsulated(),
            self.encapsulated(),
            out,
        );
        write_heads(&self.http_request, &self.http_response, out);
    }

    /// Bytes [`Response::write_to`] writes.
    pub fn encoded_len(&self) -> usize {
        8 + 4
            + if self.reason.is_empty() {
                0
            } else {
                1 + self.reason.len()
            }
            + 2
            + icap_headers_len(
                &self.headers,
                self.needs_encapsulated(),
                self.encapsulated(),
            )
            + heads_len(&self.http_request, &self.http_response)
    }
}

fn layout(req: Option<usize>, res: Option<usize>, body: Option<BodyKind>) -> Encapsulated {
    // On the stack: this runs for every encoded message, which allocates nothing.
    let mut list = [(Section::NullBody, 0u64); 3];
    let mut len = 0;
    let mut at = 0u64;
    if let Some(n) = req {
        list[len] = (Section::ReqHdr, at);
        len += 1;
        at += n as u64;
    }
    if let Some(n) = res {
        list[len] = (Section::ResHdr, at);
        len += 1;
        at += n as u64;
    }
    list[len] = (body.map_or(Section::NullBody, BodyKind::section), at);
    // Heads in this order with one body entry always form a well-ordered list.
    Encapsulated::from_entries(&list[..=len]).expect("computed layout is well ordered")
}

fn encapsulated_line_len(e: Encapsulated) -> usize {
    // Counted, not formatted into a String: this runs for every encoded message.
    struct Len(usize);
    impl std::fmt::Write for Len {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut n = Len(0);
    let _ = std::fmt::Write::write_fmt(&mut n, format_args!("{e}"));
    "Encapsulated: \r\n".len() + n.0
}

fn icap_headers_len(h: &Headers, needs: bool, e: Encapsulated) -> usize {
    let others: usize = h
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(b"Encapsulated"))
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum();
    others + if needs { encapsulated_line_len(e) } else { 0 } + 2
}

fn write_icap_headers(h: &Headers, needs: bool, e: Encapsulated, out: &mut BytesMut) {
    let mut written = !needs;
    for (n, v) in h.iter() {
        if n.eq_ignore_ascii_case(b"Encapsulated") {
            if !written {
                out.put_slice(b"Encapsulated: ");
                write_encapsulated(e, out);
                out.put_slice(b"\r\n");
                written = true;
            }
            continue;
        }
        out.put_slice(n);
        out.put_slice(b": ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    if !written {
        out.put_slice(b"Encapsulated: ");
        write_encapsulated(e, out);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Formats the value straight into `out` (no `String` per message).
fn write_encapsulated(e: Encapsulated, out: &mut BytesMut) {
    let _ = std::fmt::Write::write_fmt(out, format_args!("{e}"));
}

fn heads_len(req: &Option<HttpRequestHead>, res: &Option<HttpResponseHead>) -> usize {
    req.as_ref().map_or(0, |h| h.encoded_len()) + res.as_ref().map_or(0, |h| h.encoded_len())
}

fn write_heads(req: &Option<HttpRequestHead>, res: &Option<HttpResponseHead>, out: &mut BytesMut) {
    if let Some(h) = req {
        h.write_to(out);
    }
    if let Some(h) = res {
        h.write_to(out);
    }
}
