//! [`RequestBuilder`]: REQMOD, RESPMOD and OPTIONS requests.

use std::net::IpAddr;

use bytes::Bytes;

use super::http_parts::{http_request_head, http_response_head};
#[cfg(feature = "http")]
use super::http_parts::{http_request_head_from, http_response_head_from};
use super::{
    check_extra, check_request_head, check_response_head, invalid, strip_hop_by_hop, BuildError,
    Result, REQUEST_DERIVED,
};
use crate::proto::fields::Headers;
use crate::proto::head::{HttpRequestHead, HttpResponseHead, Method, Version};
use crate::proto::message::{BodyKind, Request};
use crate::uri::IcapUri;

/// The `Allow` values a request announces.
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
///
/// ```
/// use icap::{IcapUri, Request};
///
/// // A RESPMOD as squid sends it: the request that caused the response, the response head,
/// // a preview, and Allow: 204 so that a clean file needs no echo.
/// let uri = IcapUri::parse("icap://icap.example:1345/respmod")?;
/// let req = Request::respmod(&uri)
///     .client_ip("192.0.2.7".parse()?)
///     .http_request_parts("GET", "http://origin.example/a.zip", [("Host", "origin.example")])
///     .http_response_parts(
///         200,
///         "OK",
///         [("Content-Type", "application/zip"), ("Connection", "keep-alive")],
///     )
///     .allow_204()
///     .preview(1024)
///     .with_body()
///     .build()?;
/// let mut head = bytes::BytesMut::new();
/// req.write_to(&mut head);
/// assert_eq!(
///     &head[..],
///     &b"RESPMOD icap://icap.example:1345/respmod ICAP/1.0\r\n\
///        Host: icap.example:1345\r\n\
///        X-Client-IP: 192.0.2.7\r\n\
///        Allow: 204\r\n\
///        Preview: 1024\r\n\
///        Encapsulated: req-hdr=0, res-hdr=66, res-body=116\r\n\r\n\
///        GET http://origin.example/a.zip HTTP/1.1\r\nHost: origin.example\r\n\r\n\
///        HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\n\r\n"[..],
///     "Connection is hop-by-hop: it never travels inside an encapsulated head"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    error: Option<BuildError>,
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

    fn fail(mut self, e: BuildError) -> Self {
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
