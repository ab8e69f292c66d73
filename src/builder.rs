//! Builders for ICAP requests and responses that cannot produce an invalid message.
//!
//! This module owns what a message must contain to be legal, as opposed to how it is framed
//! (that is [`message`](crate::message) and [`encode`](crate::encode)): REQMOD carries an HTTP
//! request head, RESPMOD an HTTP response head, OPTIONS neither; a 204 has no body; every
//! response but 100 has an ISTag; `Host` comes from the [`IcapUri`]; hop-by-hop headers never
//! travel inside an encapsulated head (RFC 3507 4.4.2) and `Proxy-Authorization` /
//! `Proxy-Authenticate` are moved up into the ICAP head. `Encapsulated` is never written by
//! hand: [`Request::write_to`] computes it from the heads.
//!
//! Builder methods never panic on bad input: the first problem is remembered and returned by
//! `build()` as an [`ErrorKind::InvalidMessage`] error. Bodies are not part of a built
//! message; declare that one follows with `with_body()` and send it with an
//! [`Encoder`] (whole, with [`Encoder::whole_request`] / [`Encoder::whole_response`]) or
//! through a [`transaction`](crate::transaction).

use std::net::IpAddr;

use bytes::Bytes;

use crate::encode::Encoder;
use crate::error::{Error, ErrorKind, Result};
use crate::head::{HttpRequestHead, HttpResponseHead, Method, Version};
use crate::headers::{is_token, Headers};
use crate::message::{BodyKind, Request, Response};
use crate::uri::IcapUri;

/// HTTP header fields that are hop-by-hop (RFC 7230 6.1, RFC 2616 13.5.1) and so are never
/// encapsulated (RFC 3507 4.4.2). `Proxy-*` fields are handled apart: see [`RequestBuilder`].
pub const HOP_BY_HOP: &[&str] = &[
    "Connection",
    "Keep-Alive",
    "TE",
    "Transfer-Encoding",
    "Upgrade",
    "Trailer",
    "Trailers",
    "Proxy-Connection",
];

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidMessage, 0, msg)
}

/// CR, LF, NUL and the other controls (HTAB excepted) would let a value end its line early
/// and smuggle a header, so builders refuse them instead of letting `Headers` panic.
fn has_ctl(v: &[u8]) -> bool {
    v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

fn check_field(name: &str, value: &[u8]) -> Result<()> {
    if !is_token(name.as_bytes()) {
        return Err(invalid(format!("{name:?} is not a header name")));
    }
    if has_ctl(value) {
        return Err(invalid(format!("the value of {name} holds a control byte")));
    }
    Ok(())
}

fn check_request_head(h: &HttpRequestHead) -> Result<()> {
    let version_ok =
        |v: &[u8]| v.len() >= 6 && v.starts_with(b"HTTP/") && !v.contains(&b' ') && !has_ctl(v);
    if !is_token(&h.method) {
        return Err(invalid("the HTTP method is not a token"));
    }
    if h.target.is_empty() || h.target.contains(&b' ') || has_ctl(&h.target) {
        return Err(invalid(
            "the HTTP request target is empty or holds a space or control byte",
        ));
    }
    if !version_ok(&h.version) {
        return Err(invalid("the HTTP version is not HTTP/x.y"));
    }
    Ok(())
}

fn check_response_head(h: &HttpResponseHead) -> Result<()> {
    if !(h.version.len() >= 6 && h.version.starts_with(b"HTTP/") && !h.version.contains(&b' '))
        || has_ctl(&h.version)
    {
        return Err(invalid("the HTTP version is not HTTP/x.y"));
    }
    if !(100..1000).contains(&h.status) {
        return Err(invalid(format!(
            "HTTP status {} does not have three digits",
            h.status
        )));
    }
    if has_ctl(&h.reason) {
        return Err(invalid("the HTTP reason phrase holds a control byte"));
    }
    Ok(())
}

fn names_listed_in_connection(h: &Headers) -> Vec<String> {
    ["Connection", "Proxy-Connection"]
        .iter()
        .flat_map(|n| h.get_all(n).collect::<Vec<_>>())
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes hop-by-hop fields from an encapsulated head: the fixed list, the fields named by
/// `Connection`, and `Proxy-*`. When `lift` is given, `Proxy-Authorization` and
/// `Proxy-Authenticate` are appended to it (the ICAP head) instead of being dropped.
fn strip_hop_by_hop(h: &Headers, mut lift: Option<&mut Headers>) -> Headers {
    let listed = names_listed_in_connection(h);
    let mut out = Headers::new();
    for (n, v) in h.iter() {
        // Names in a Headers are tokens, hence ASCII.
        let name = std::str::from_utf8(n).unwrap_or_default();
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) || listed.contains(&lower) {
            continue;
        }
        if lower == "proxy-authorization" || lower == "proxy-authenticate" {
            match lift.as_deref_mut() {
                Some(icap) => icap.append(name, v),
                // In a response the proxy needs Proxy-Authenticate to relay a 407 page.
                None => out.append(name, v),
            }
            continue;
        }
        if lower.starts_with("proxy-") {
            continue;
        }
        out.append(name, v);
    }
    out
}

fn headers_from<N: AsRef<str>, V: AsRef<[u8]>>(
    fields: impl IntoIterator<Item = (N, V)>,
) -> Result<Headers> {
    let mut h = Headers::new();
    for (n, v) in fields {
        check_field(n.as_ref(), v.as_ref())?;
        h.append(n.as_ref(), v);
    }
    Ok(h)
}

/// Makes an HTTP request head from raw parts, checking each (no panics, no smuggling).
pub fn http_request_head<N: AsRef<str>, V: AsRef<[u8]>>(
    method: &str,
    target: &str,
    version: &str,
    headers: impl IntoIterator<Item = (N, V)>,
) -> Result<HttpRequestHead> {
    let head = HttpRequestHead {
        method: Bytes::copy_from_slice(method.as_bytes()),
        target: Bytes::copy_from_slice(target.as_bytes()),
        version: Bytes::copy_from_slice(version.as_bytes()),
        headers: headers_from(headers)?,
    };
    check_request_head(&head)?;
    Ok(head)
}

/// Makes an HTTP response head from raw parts, checking each.
pub fn http_response_head<N: AsRef<str>, V: AsRef<[u8]>>(
    version: &str,
    status: u16,
    reason: &str,
    headers: impl IntoIterator<Item = (N, V)>,
) -> Result<HttpResponseHead> {
    let head = HttpResponseHead {
        version: Bytes::copy_from_slice(version.as_bytes()),
        status,
        reason: Bytes::copy_from_slice(reason.as_bytes()),
        headers: headers_from(headers)?,
    };
    check_response_head(&head)?;
    Ok(head)
}

#[cfg(feature = "http")]
fn http_version(v: http::Version) -> &'static str {
    // Encapsulated heads are HTTP/1.x text whatever the version on the proxy's other side.
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(feature = "http")]
fn http_fields(h: &http::HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (n, v) in h {
        // `http` guarantees token names and values without CR, LF or NUL.
        if !has_ctl(v.as_bytes()) {
            out.append(n.as_str(), v.as_bytes());
        }
    }
    out
}

/// Makes an HTTP request head from `http` crate parts (feature `http`). HTTP/2 and HTTP/3
/// requests are written as HTTP/1.1, the only syntax an encapsulated head has.
#[cfg(feature = "http")]
pub fn http_request_head_from(parts: &http::request::Parts) -> HttpRequestHead {
    HttpRequestHead {
        method: Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
        target: Bytes::from(parts.uri.to_string()),
        version: Bytes::from_static(http_version(parts.version).as_bytes()),
        headers: http_fields(&parts.headers),
    }
}

/// Makes an HTTP response head from `http` crate parts (feature `http`), with the canonical
/// reason phrase.
#[cfg(feature = "http")]
pub fn http_response_head_from(parts: &http::response::Parts) -> HttpResponseHead {
    HttpResponseHead {
        version: Bytes::from_static(http_version(parts.version).as_bytes()),
        status: parts.status.as_u16(),
        reason: Bytes::from_static(parts.status.canonical_reason().unwrap_or("").as_bytes()),
        headers: http_fields(&parts.headers),
    }
}

/// Makes a quoted ISTag value (RFC 3507 4.7: a quoted string of at most 32 characters).
/// Quotes are added when missing.
fn istag_value(tag: &str) -> Result<String> {
    let inner = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    if inner.is_empty()
        || inner.len() > 32
        || !inner
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(invalid(format!(
            "ISTag {tag:?} is not 1 to 32 printable characters without quotes or backslashes"
        )));
    }
    Ok(format!("\"{inner}\""))
}

/// Request fields the builder sets itself, which `header()` refuses.
const REQUEST_DERIVED: &[&str] = &["Encapsulated", "Host", "Preview", "Allow"];
/// Response fields the builder sets itself (`Allow` and `Preview` are OPTIONS answers' own).
const RESPONSE_DERIVED: &[&str] = &["Encapsulated", "ISTag"];

fn check_extra(name: &str, value: &[u8], derived: &[&str]) -> Result<()> {
    check_field(name, value)?;
    if let Some(d) = derived.iter().find(|d| d.eq_ignore_ascii_case(name)) {
        return Err(invalid(format!(
            "{d} is set by the builder, not by header()"
        )));
    }
    Ok(())
}

/// One ICAP header line of a response being built: a field, or the place where the derived
/// ISTag or Encapsulated goes.
#[derive(Debug, Clone)]
enum Field {
    Value(String, Vec<u8>),
    IsTag,
    Encapsulated,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AllowSet {
    s204: bool,
    s206: bool,
    trailers: bool,
}

impl AllowSet {
    fn value(self) -> Option<String> {
        let mut v = Vec::new();
        if self.s204 {
            v.push("204");
        }
        if self.s206 {
            v.push("206");
        }
        if self.trailers {
            v.push("trailers");
        }
        (!v.is_empty()).then(|| v.join(", "))
    }
}

/// Builds an ICAP request. Start with [`Request::reqmod`], [`Request::respmod`] or
/// [`Request::options`].
///
/// ICAP headers are written in this order: `Host`, the fields added with the builder methods
/// in call order, `Allow`, `Preview`, any `Proxy-Authorization` lifted from the HTTP request,
/// and `Encapsulated` last (the order c-icap-client uses).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct RequestBuilder {
    method: Method,
    uri: IcapUri,
    headers: Headers,
    allow: AllowSet,
    preview: Option<u64>,
    http_request: Option<HttpRequestHead>,
    http_response: Option<HttpResponseHead>,
    body: bool,
    error: Option<Error>,
}

impl Request {
    /// A REQMOD request builder (RFC 3507 4.8): needs an HTTP request head.
    pub fn reqmod(uri: &IcapUri) -> RequestBuilder {
        RequestBuilder::new(Method::Reqmod, uri)
    }

    /// A RESPMOD request builder (RFC 3507 4.9): needs an HTTP response head, and should have
    /// the request head that caused it.
    pub fn respmod(uri: &IcapUri) -> RequestBuilder {
        RequestBuilder::new(Method::Respmod, uri)
    }

    /// An OPTIONS request builder (RFC 3507 4.10): no heads and no body.
    pub fn options(uri: &IcapUri) -> RequestBuilder {
        RequestBuilder::new(Method::Options, uri)
    }
}

impl RequestBuilder {
    fn new(method: Method, uri: &IcapUri) -> Self {
        let mut headers = Headers::new();
        headers.append("Host", uri.host_header());
        RequestBuilder {
            method,
            uri: uri.clone(),
            headers,
            allow: AllowSet::default(),
            preview: None,
            http_request: None,
            http_response: None,
            body: false,
            error: None,
        }
    }

    fn fail(mut self, e: Error) -> Self {
        self.error.get_or_insert(e);
        self
    }

    /// Adds an ICAP header field (e.g. `X-Client-IP`). `Host`, `Allow`, `Preview`, `ISTag` and
    /// `Encapsulated` are refused: the builder derives them.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        match check_extra(name, value.as_ref(), REQUEST_DERIVED) {
            Ok(()) => {
                self.headers.append(name, value);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// `User-Agent: value`.
    pub fn user_agent(self, value: &str) -> Self {
        self.header("User-Agent", value)
    }

    /// `X-Client-IP`: the address of the HTTP client, for the server's logs and policies.
    pub fn client_ip(self, ip: IpAddr) -> Self {
        self.header("X-Client-IP", ip.to_string())
    }

    /// `X-Server-IP`: the address of the origin server.
    pub fn server_ip(self, ip: IpAddr) -> Self {
        self.header("X-Server-IP", ip.to_string())
    }

    /// `X-Authenticated-User`, sent as given (squid sends base64 of `scheme://user`).
    pub fn authenticated_user(self, value: &str) -> Self {
        self.header("X-Authenticated-User", value)
    }

    /// `Connection: close`: this connection carries no further transaction.
    pub fn connection_close(self) -> Self {
        self.header("Connection", "close")
    }

    /// `Allow: 204`: the client keeps the whole message and accepts 204 outside a preview.
    pub fn allow_204(mut self) -> Self {
        self.allow.s204 = true;
        self
    }

    /// `Allow: 206`: the client accepts partial answers that reuse the original body.
    pub fn allow_206(mut self) -> Self {
        self.allow.s206 = true;
        self
    }

    /// `Allow: trailers`: the client accepts trailers after the last chunk.
    pub fn allow_trailers(mut self) -> Self {
        self.allow.trailers = true;
        self
    }

    /// `Preview: n`: send at most `n` body bytes, then wait for the server (RFC 3507 4.5).
    pub fn preview(mut self, n: u64) -> Self {
        self.preview = Some(n);
        self
    }

    /// The encapsulated HTTP request head. Hop-by-hop fields are removed and
    /// `Proxy-Authorization` moves to the ICAP head when the request is built.
    pub fn http_request(mut self, head: HttpRequestHead) -> Self {
        self.http_request = Some(head);
        self
    }

    /// The encapsulated HTTP response head, cleaned like [`Self::http_request`].
    pub fn http_response(mut self, head: HttpResponseHead) -> Self {
        self.http_response = Some(head);
        self
    }

    /// The encapsulated HTTP request head from raw parts (see [`http_request_head`]).
    pub fn http_request_parts<N: AsRef<str>, V: AsRef<[u8]>>(
        self,
        method: &str,
        target: &str,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        match http_request_head(method, target, "HTTP/1.1", headers) {
            Ok(h) => self.http_request(h),
            Err(e) => self.fail(e),
        }
    }

    /// The encapsulated HTTP response head from raw parts (see [`http_response_head`]).
    pub fn http_response_parts<N: AsRef<str>, V: AsRef<[u8]>>(
        self,
        status: u16,
        reason: &str,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        match http_response_head("HTTP/1.1", status, reason, headers) {
            Ok(h) => self.http_response(h),
            Err(e) => self.fail(e),
        }
    }

    /// The encapsulated HTTP request head from `http` crate parts (feature `http`).
    #[cfg(feature = "http")]
    pub fn http_request_from(self, parts: &http::request::Parts) -> Self {
        self.http_request(http_request_head_from(parts))
    }

    /// The encapsulated HTTP response head from `http` crate parts (feature `http`).
    #[cfg(feature = "http")]
    pub fn http_response_from(self, parts: &http::response::Parts) -> Self {
        self.http_response(http_response_head_from(parts))
    }

    /// Declares that an encapsulated body follows (`req-body` in REQMOD, `res-body` in
    /// RESPMOD). Without it the request has `null-body`.
    pub fn with_body(mut self) -> Self {
        self.body = true;
        self
    }

    /// Checks the parts and makes the request.
    pub fn build(self) -> Result<Request> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let method = self.method;
        let (body, ok) = match method {
            Method::Reqmod => (
                BodyKind::Request,
                self.http_request.is_some() && self.http_response.is_none(),
            ),
            Method::Respmod => (BodyKind::Response, self.http_response.is_some()),
            _ => (
                BodyKind::Options,
                self.http_request.is_none()
                    && self.http_response.is_none()
                    && !self.body
                    && self.preview.is_none(),
            ),
        };
        if !ok {
            return Err(invalid(match method {
                Method::Reqmod => {
                    "a REQMOD request carries an HTTP request head and no response head"
                }
                Method::Respmod => "a RESPMOD request carries an HTTP response head",
                _ => "an OPTIONS request carries no heads, body or preview",
            }));
        }
        let mut headers = self.headers;
        if let Some(v) = self.allow.value() {
            headers.append("Allow", v);
        }
        if let Some(p) = self.preview {
            headers.append("Preview", p.to_string());
        }
        let http_request = match self.http_request {
            Some(mut h) => {
                check_request_head(&h)?;
                h.headers = strip_hop_by_hop(&h.headers, Some(&mut headers));
                Some(h)
            }
            None => None,
        };
        let http_response = match self.http_response {
            Some(mut h) => {
                check_response_head(&h)?;
                h.headers = strip_hop_by_hop(&h.headers, Some(&mut headers));
                Some(h)
            }
            None => None,
        };
        Ok(Request {
            method,
            uri: Bytes::from(self.uri.to_string()),
            version: Version::ICAP_1_0,
            headers,
            http_request,
            http_response,
            body: self.body.then_some(body),
        })
    }
}

/// The ICAP error statuses a server sends (RFC 3507 4.3.3), with standard reason phrases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorStatus {
    /// 400 Bad Request.
    BadRequest,
    /// 404 Service Not Found.
    ServiceNotFound,
    /// 405 Method Not Allowed (for this service).
    MethodNotAllowed,
    /// 408 Request Timeout.
    RequestTimeout,
    /// 500 Server Error.
    ServerError,
    /// 501 Method Not Implemented.
    MethodNotImplemented,
    /// 502 Bad Gateway.
    BadGateway,
    /// 503 Service Overloaded.
    ServiceOverloaded,
    /// 505 ICAP Version Not Supported.
    VersionNotSupported,
}

impl ErrorStatus {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            ErrorStatus::BadRequest => 400,
            ErrorStatus::ServiceNotFound => 404,
            ErrorStatus::MethodNotAllowed => 405,
            ErrorStatus::RequestTimeout => 408,
            ErrorStatus::ServerError => 500,
            ErrorStatus::MethodNotImplemented => 501,
            ErrorStatus::BadGateway => 502,
            ErrorStatus::ServiceOverloaded => 503,
            ErrorStatus::VersionNotSupported => 505,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorStatus::BadRequest => "Bad Request",
            ErrorStatus::ServiceNotFound => "Service Not Found",
            ErrorStatus::MethodNotAllowed => "Method Not Allowed",
            ErrorStatus::RequestTimeout => "Request Timeout",
            ErrorStatus::ServerError => "Server Error",
            ErrorStatus::MethodNotImplemented => "Method Not Implemented",
            ErrorStatus::BadGateway => "Bad Gateway",
            ErrorStatus::ServiceOverloaded => "Service Overloaded",
            ErrorStatus::VersionNotSupported => "ICAP Version Not Supported",
        }
    }

    /// The variant for a code, if it is one of these.
    pub fn from_code(code: u16) -> Option<ErrorStatus> {
        use ErrorStatus::*;
        [
            BadRequest,
            ServiceNotFound,
            MethodNotAllowed,
            RequestTimeout,
            ServerError,
            MethodNotImplemented,
            BadGateway,
            ServiceOverloaded,
            VersionNotSupported,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

/// Builds an ICAP response. Start with [`Response::no_content`], [`Response::ok`],
/// [`Response::partial_content`] or [`Response::error`]; `100 Continue` is the ready-made
/// [`Response::continue_100`].
///
/// ICAP headers are written in the order c-icap uses: the fields added with the builder
/// methods in call order, `ISTag`, then `Encapsulated`.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ResponseBuilder {
    status: u16,
    reason: Bytes,
    istag: Result<String>,
    fields: Vec<Field>,
    options: bool,
    http_request: Option<HttpRequestHead>,
    http_response: Option<HttpResponseHead>,
    body: bool,
    error: Option<Error>,
}

impl Response {
    /// `ICAP/1.0 100 Continue` with no header at all, as c-icap sends it.
    pub fn continue_100() -> Response {
        Response::new(100, "Continue")
    }

    /// `204 No Content`: the original message stands. Carries no heads and no body.
    pub fn no_content(istag: &str) -> ResponseBuilder {
        ResponseBuilder::new(204, "No Content", istag)
    }

    /// `200 OK` with a modified request, a modified response or an HTTP error page.
    pub fn ok(istag: &str) -> ResponseBuilder {
        ResponseBuilder::new(200, "OK", istag)
    }

    /// `206 Partial Content` (RFC 3507 draft extension, c-icap's `Allow: 206`): the body is a
    /// possibly empty prefix, then `0; use-original-body=N`; see [`Encoder::partial_response`].
    pub fn partial_content(istag: &str) -> ResponseBuilder {
        let mut b = ResponseBuilder::new(206, "Partial Content", istag);
        b.body = true;
        b
    }

    /// `200 OK` answering an OPTIONS request: no HTTP heads; `with_body()` means `opt-body`.
    /// [`ServiceOptions`](crate::options::ServiceOptions) fills one from typed fields.
    pub fn options_answer(istag: &str) -> ResponseBuilder {
        let mut b = ResponseBuilder::new(200, "OK", istag);
        b.options = true;
        b
    }

    /// An error response, with `Connection: close`: after an error the server may not have
    /// read the whole request, so the connection cannot be trusted for another transaction.
    pub fn error(status: ErrorStatus, istag: &str) -> ResponseBuilder {
        ResponseBuilder::new(status.code(), status.reason(), istag).header("Connection", "close")
    }
}

impl ResponseBuilder {
    fn new(status: u16, reason: &'static str, istag: &str) -> Self {
        ResponseBuilder {
            status,
            reason: Bytes::from_static(reason.as_bytes()),
            istag: istag_value(istag),
            fields: Vec::new(),
            options: false,
            http_request: None,
            http_response: None,
            body: false,
            error: None,
        }
    }

    fn fail(mut self, e: Error) -> Self {
        self.error.get_or_insert(e);
        self
    }

    /// Replaces the reason phrase (c-icap says `204 Unmodified`).
    pub fn reason(mut self, reason: &str) -> Self {
        if reason.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return self.fail(invalid("the reason phrase holds a control byte"));
        }
        self.reason = Bytes::copy_from_slice(reason.as_bytes());
        self
    }

    /// Adds an ICAP header field (`Server`, `Date`, `X-Infection-Found` ...). `ISTag` and
    /// `Encapsulated` are refused: they are derived (place them with [`Self::istag_here`] and
    /// [`Self::encapsulated_here`]).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        match check_extra(name, value.as_ref(), RESPONSE_DERIVED) {
            Ok(()) => {
                self.fields
                    .push(Field::Value(name.to_string(), value.as_ref().to_vec()));
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Writes `ISTag` at this point of the header list instead of after the other fields.
    pub fn istag_here(mut self) -> Self {
        self.fields.retain(|f| !matches!(f, Field::IsTag));
        self.fields.push(Field::IsTag);
        self
    }

    /// Writes the computed `Encapsulated` at this point instead of last (RFC 3507's OPTIONS
    /// example has it in the middle). A 100 or a 204 still carries none.
    pub fn encapsulated_here(mut self) -> Self {
        self.fields.retain(|f| !matches!(f, Field::Encapsulated));
        self.fields.push(Field::Encapsulated);
        self
    }

    /// `Connection: close`.
    pub fn connection_close(self) -> Self {
        self.header("Connection", "close")
    }

    /// An encapsulated (modified) HTTP request: the answer to a REQMOD. Hop-by-hop fields are
    /// removed.
    pub fn http_request(mut self, head: HttpRequestHead) -> Self {
        self.http_request = Some(head);
        self
    }

    /// An encapsulated HTTP response: the answer to a RESPMOD, or a REQMOD answered with a
    /// response (a block page). Hop-by-hop fields are removed.
    pub fn http_response(mut self, head: HttpResponseHead) -> Self {
        self.http_response = Some(head);
        self
    }

    /// The encapsulated HTTP request head from raw parts.
    pub fn http_request_parts<N: AsRef<str>, V: AsRef<[u8]>>(
        self,
        method: &str,
        target: &str,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        match http_request_head(method, target, "HTTP/1.1", headers) {
            Ok(h) => self.http_request(h),
            Err(e) => self.fail(e),
        }
    }

    /// The encapsulated HTTP response head from raw parts.
    pub fn http_response_parts<N: AsRef<str>, V: AsRef<[u8]>>(
        self,
        status: u16,
        reason: &str,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        match http_response_head("HTTP/1.1", status, reason, headers) {
            Ok(h) => self.http_response(h),
            Err(e) => self.fail(e),
        }
    }

    /// The encapsulated HTTP request head from `http` crate parts (feature `http`).
    #[cfg(feature = "http")]
    pub fn http_request_from(self, parts: &http::request::Parts) -> Self {
        self.http_request(http_request_head_from(parts))
    }

    /// The encapsulated HTTP response head from `http` crate parts (feature `http`).
    #[cfg(feature = "http")]
    pub fn http_response_from(self, parts: &http::response::Parts) -> Self {
        self.http_response(http_response_head_from(parts))
    }

    /// An HTTP error page in place of the request or response (e.g. a 403 block page):
    /// an HTTP response head with `Content-Type` and a `Content-Length` of `body.len()`, and a
    /// body to follow. Send the same `body` after the head (the server answers 500 to a reply
    /// whose body is missing or of another length).
    pub fn http_error_page(
        self,
        status: u16,
        reason: &str,
        content_type: &str,
        body: &[u8],
    ) -> Self {
        let len = body.len().to_string();
        self.http_response_parts(
            status,
            reason,
            [
                ("Content-Type", content_type),
                ("Content-Length", len.as_str()),
            ],
        )
        .with_body()
    }

    /// Declares that an encapsulated body follows (`req-body` after a request head, else
    /// `res-body`).
    pub fn with_body(mut self) -> Self {
        self.body = true;
        self
    }

    /// Checks the parts and makes the response.
    pub fn build(self) -> Result<Response> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let istag = self.istag?;
        let heads = self.http_request.is_some() as u8 + self.http_response.is_some() as u8;
        match self.status {
            _ if self.options && heads > 0 => {
                return Err(invalid("an OPTIONS answer carries no HTTP heads"))
            }
            204 if heads > 0 || self.body => {
                return Err(invalid("a 204 carries no heads and no body"))
            }
            200 | 206 if heads > 1 => {
                return Err(invalid(
                    "a response carries a request head or a response head, not both",
                ))
            }
            200 if heads == 0 && !self.body && !self.options => {
                return Err(invalid(
                    "a 200 carries a modified request, a response, or a body",
                ))
            }
            s if s >= 400 && (heads > 0 || self.body) => {
                return Err(invalid("an error response carries no heads and no body"))
            }
            _ => {}
        }
        let http_request = match self.http_request {
            Some(mut h) => {
                check_request_head(&h)?;
                h.headers = strip_hop_by_hop(&h.headers, None);
                Some(h)
            }
            None => None,
        };
        let http_response = match self.http_response {
            Some(mut h) => {
                check_response_head(&h)?;
                h.headers = strip_hop_by_hop(&h.headers, None);
                Some(h)
            }
            None => None,
        };
        let kind = if self.options {
            BodyKind::Options
        } else if http_request.is_some() {
            BodyKind::Request
        } else {
            BodyKind::Response
        };
        let mut res = Response {
            version: Version::ICAP_1_0,
            status: self.status,
            reason: self.reason,
            headers: Headers::new(),
            http_request,
            http_response,
            body: self.body.then_some(kind),
        };
        let mut fields = self.fields;
        if !fields.iter().any(|f| matches!(f, Field::IsTag)) {
            fields.push(Field::IsTag);
        }
        // 100 and 204 carry no Encapsulated (message.rs leaves it out when absent).
        let encapsulated =
            (!matches!(res.status, 100 | 204)).then(|| res.encapsulated().to_string());
        for f in fields {
            match f {
                Field::Value(n, v) => res.headers.append(&n, v),
                Field::IsTag => res.headers.append("ISTag", &istag),
                Field::Encapsulated => {
                    if let Some(e) = &encapsulated {
                        res.headers.append("Encapsulated", e);
                    }
                }
            }
        }
        Ok(res)
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

impl Encoder {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uri() -> IcapUri {
        IcapUri::parse("icap://icap.example:1345/reqmod?a=1").unwrap()
    }

    fn wire_req(r: &Request) -> String {
        let mut e = Encoder::new();
        e.request_head(r).unwrap();
        String::from_utf8(e.to_bytes().to_vec()).unwrap()
    }

    fn wire_res(r: &Response) -> String {
        let mut e = Encoder::new();
        e.response_head(r).unwrap();
        String::from_utf8(e.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn hop_by_hop_removed_and_proxy_auth_lifted() {
        let req = Request::reqmod(&uri())
            .http_request_parts(
                "GET",
                "http://x/",
                [
                    ("Host", "x"),
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Secret", "1"),
                    ("Keep-Alive", "300"),
                    ("TE", "trailers"),
                    ("Transfer-Encoding", "chunked"),
                    ("Upgrade", "h2c"),
                    ("Trailer", "X"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                    ("Proxy-Foo", "1"),
                    ("Accept", "*/*"),
                ],
            )
            .build()
            .unwrap();
        assert_eq!(
            wire_req(&req),
            "REQMOD icap://icap.example:1345/reqmod?a=1 ICAP/1.0\r\n\
             Host: icap.example:1345\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
             Encapsulated: req-hdr=0, null-body=48\r\n\r\n\
             GET http://x/ HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cases = [
            Request::reqmod(&uri()).build(),
            Request::reqmod(&uri())
                .http_request_parts("GET", "/", [("Bad Name", "x")])
                .build(),
            Request::reqmod(&uri())
                .http_request_parts("GET", "/", [("X", "a\r\nY: b")])
                .build(),
            Request::reqmod(&uri())
                .http_request_parts("GET", "/ x", [("X", "a")])
                .build(),
            Request::reqmod(&uri())
                .http_request_parts("G(T", "/", [("X", "a")])
                .build(),
            Request::respmod(&uri())
                .http_request_parts("GET", "/", [("X", "a")])
                .build(),
            Request::options(&uri()).with_body().build(),
            Request::options(&uri()).preview(0).build(),
            Request::options(&uri())
                .header("Encapsulated", "null-body=0")
                .build(),
            Request::options(&uri()).header("X-A", "\0").build(),
        ];
        for (i, c) in cases.into_iter().enumerate() {
            assert_eq!(c.unwrap_err().kind(), ErrorKind::InvalidMessage, "case {i}");
        }
        let res = [
            Response::no_content("x").with_body().build(),
            Response::no_content("\"unterminated").build(),
            Response::no_content(&"x".repeat(33)).build(),
            Response::ok("x").build(),
            Response::ok("x")
                .http_request_parts("GET", "/", [("A", "b")])
                .http_response_parts(200, "OK", [("A", "b")])
                .build(),
            Response::error(ErrorStatus::BadRequest, "x")
                .with_body()
                .build(),
            Response::ok("x").reason("O\rK").with_body().build(),
            Response::ok("x")
                .http_response(HttpResponseHead {
                    status: 42,
                    ..HttpResponseHead::new(200, "OK", Headers::new())
                })
                .build(),
        ];
        for (i, c) in res.into_iter().enumerate() {
            assert_eq!(c.unwrap_err().kind(), ErrorKind::InvalidMessage, "case {i}");
        }
    }

    #[test]
    fn responses_byte_exact() {
        assert_eq!(
            wire_res(&Response::continue_100()),
            "ICAP/1.0 100 Continue\r\n\r\n"
        );
        let r = Response::no_content("CI0001").build().unwrap();
        assert_eq!(
            wire_res(&r),
            "ICAP/1.0 204 No Content\r\nISTag: \"CI0001\"\r\n\r\n"
        );
        let r = Response::no_content("\"CI0001\"")
            .reason("Unmodified")
            .build()
            .unwrap();
        assert_eq!(
            wire_res(&r),
            "ICAP/1.0 204 Unmodified\r\nISTag: \"CI0001\"\r\n\r\n"
        );
        let r = Response::error(ErrorStatus::ServiceNotFound, "t")
            .build()
            .unwrap();
        assert_eq!(
            wire_res(&r),
            "ICAP/1.0 404 Service Not Found\r\nConnection: close\r\nISTag: \"t\"\r\nEncapsulated: null-body=0\r\n\r\n"
        );
    }

    #[test]
    fn error_statuses() {
        let all: Vec<_> = [400, 404, 405, 408, 500, 501, 502, 503, 505]
            .into_iter()
            .map(|c| ErrorStatus::from_code(c).unwrap())
            .collect();
        for s in &all {
            let r = Response::error(*s, "t").build().unwrap();
            assert_eq!((r.status, &r.reason[..]), (s.code(), s.reason().as_bytes()));
        }
        assert_eq!(ErrorStatus::from_code(200), None);
        assert_eq!(
            ErrorStatus::VersionNotSupported.reason(),
            "ICAP Version Not Supported"
        );
    }
}
