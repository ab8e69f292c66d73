//! [`ResponseBuilder`] and the error statuses a server answers with ([`ErrorStatus`]).

use bytes::Bytes;

use super::http_parts::{http_request_head, http_response_head};
#[cfg(feature = "http")]
use super::http_parts::{http_request_head_from, http_response_head_from};
use super::{
    check_extra, check_request_head, check_response_head, invalid, istag_value, strip_hop_by_hop,
    BuildError, Result, RESPONSE_DERIVED,
};
use crate::proto::fields::Headers;
use crate::proto::head::{HttpRequestHead, HttpResponseHead, Version};
use crate::proto::message::{BodyKind, Response};

/// The ICAP error statuses a server sends (RFC 3507 4.3.3), with standard reason phrases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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

/// One ICAP header line of a response being built: a field, or the place where the derived
/// ISTag or Encapsulated goes.
#[derive(Debug, Clone)]
enum Field {
    Value(String, Vec<u8>),
    IsTag,
    Encapsulated,
}

/// Builds an ICAP response. Start with [`Response::no_content`], [`Response::ok`],
/// [`Response::partial_content`] or [`Response::error`]; `100 Continue` is the ready-made
/// [`Response::continue_100`].
///
/// ICAP headers are written in the order c-icap uses: the fields added with the builder
/// methods in call order, `ISTag`, then `Encapsulated`.
///
/// ```
/// use bytes::Bytes;
/// use icap::{Encoder, Response};
///
/// // A DLP block: the upload is answered with a 403 page instead of being forwarded.
/// let page = Bytes::from_static(b"<h1>Blocked</h1>");
/// let res = Response::ok("dlp-7")
///     .header("X-Violations-Found", "1")
///     .http_error_page(403, "Forbidden", "text/html", &page)
///     .build()?;
/// let mut enc = Encoder::new();
/// enc.whole_response(&res, Some(page))?;
/// assert_eq!(
///     &enc.to_bytes()[..],
///     &b"ICAP/1.0 200 OK\r\n\
///        X-Violations-Found: 1\r\n\
///        ISTag: \"dlp-7\"\r\n\
///        Encapsulated: res-hdr=0, res-body=71\r\n\r\n\
///        HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 16\r\n\r\n\
///        10\r\n<h1>Blocked</h1>\r\n0\r\n\r\n"[..]
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    error: Option<BuildError>,
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
    /// possibly empty prefix, then `0; use-original-body=N`; see [`Encoder::partial_response`](crate::Encoder::partial_response).
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

    fn fail(mut self, e: BuildError) -> Self {
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
