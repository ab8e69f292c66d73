//! Builders for ICAP requests and responses that cannot produce an invalid message.
//!
//! This module owns what a message must contain to be legal, as opposed to how it is framed
//! (that is [`Request`](crate::Request), [`Response`](crate::Response) and the
//! [`Encoder`](crate::Encoder)): REQMOD carries an HTTP
//! request head, RESPMOD an HTTP response head, OPTIONS neither; a 204 has no body; every
//! response but 100 has an ISTag; `Host` comes from the [`IcapUri`](crate::IcapUri); hop-by-hop headers never
//! travel inside an encapsulated head (RFC 3507 4.4.2) and `Proxy-Authorization` /
//! `Proxy-Authenticate` are moved up into the ICAP head. `Encapsulated` is never written by
//! hand: [`Request::write_to`](crate::Request::write_to) computes it from the heads.
//!
//! Builder methods never panic on bad input: the first problem is remembered and returned by
//! `build()` as a [`BuildError`]. Bodies are not part of a built
//! message; declare that one follows with `with_body()` and send it with an
//! [`Encoder`](crate::Encoder) (whole, with [`Encoder::whole_request`](crate::Encoder::whole_request)
//! / [`Encoder::whole_response`](crate::Encoder::whole_response)) or
//! through a transaction ([`ClientTransaction`](crate::ClientTransaction),
//! [`ServerTransaction`](crate::ServerTransaction)).
//!
//! The builders live in rooms by concept: [`RequestBuilder`] with its entry points
//! (`Request::reqmod`, `respmod`, `options`: request.rs), [`ResponseBuilder`] and
//! [`ErrorStatus`] with theirs (`Response::ok`, `no_content` ...: response.rs), encapsulated
//! HTTP heads from raw parts or the `http` crate and back (http_parts.rs). The entry points
//! sit beside their builder rather than beside the message, so that the codec below never
//! depends on the builders above it. This file holds what they share: the checks that keep
//! a message legal and [`BuildError`].

use crate::proto::error::{Error, ErrorKind};
use crate::proto::fields::Headers;
use crate::proto::grammar::{has_ctl_but_htab, is_token};
use crate::proto::head::{HttpRequestHead, HttpResponseHead};

mod http_parts;
mod request;
mod response;

pub use http_parts::{http_request_head, http_response_head};
#[cfg(feature = "http")]
pub use http_parts::{
    http_request_head_from, http_request_parts, http_response_head_from, http_response_parts,
};
pub use request::RequestBuilder;
pub use response::{ErrorStatus, ResponseBuilder};

/// A message a builder refused to make: a bad header name or value, a missing or extra head,
/// a body where none is allowed. It says which part is wrong; it is a usage error, not a
/// wire error, so it carries no byte offset.
///
/// ```
/// use icap::{IcapUri, Request};
///
/// let uri = IcapUri::parse("icap://127.0.0.1/reqmod")?;
/// let err = Request::reqmod(&uri).build().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid ICAP message: a REQMOD request carries an HTTP request head and no response head"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ICAP message: {message}")]
#[non_exhaustive]
pub struct BuildError {
    message: String,
}

impl BuildError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        BuildError {
            message: message.into(),
        }
    }

    /// What is wrong with the message, in a sentence.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// For code that handles codec and builder errors in one `icap::Result`: the builder's
/// sentence as an [`ErrorKind::InvalidMessage`] at offset 0 (no byte was decoded).
impl From<BuildError> for Error {
    fn from(e: BuildError) -> Error {
        Error::new(ErrorKind::InvalidMessage, 0, e.message)
    }
}

/// Shorthand for the builders' results.
type Result<T, E = BuildError> = std::result::Result<T, E>;

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

fn invalid(msg: impl Into<String>) -> BuildError {
    BuildError {
        message: msg.into(),
    }
}

fn check_field(name: &str, value: &[u8]) -> Result<()> {
    if !is_token(name.as_bytes()) {
        return Err(invalid(format!("{name:?} is not a header name")));
    }
    if has_ctl_but_htab(value) {
        return Err(invalid(format!("the value of {name} holds a control byte")));
    }
    Ok(())
}

fn check_request_head(h: &HttpRequestHead) -> Result<()> {
    let version_ok = |v: &[u8]| {
        v.len() >= 6 && v.starts_with(b"HTTP/") && !v.contains(&b' ') && !has_ctl_but_htab(v)
    };
    if !is_token(&h.method) {
        return Err(invalid("the HTTP method is not a token"));
    }
    if h.target.is_empty() || h.target.contains(&b' ') || has_ctl_but_htab(&h.target) {
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
        || has_ctl_but_htab(&h.version)
    {
        return Err(invalid("the HTTP version is not HTTP/x.y"));
    }
    if !(100..1000).contains(&h.status) {
        return Err(invalid(format!(
            "HTTP status {} does not have three digits",
            h.status
        )));
    }
    if has_ctl_but_htab(&h.reason) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode::Encoder;
    use crate::proto::message::{Request, Response};
    use crate::uri::IcapUri;

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
            let e = c.unwrap_err();
            assert!(
                e.to_string().starts_with("invalid ICAP message: ") && !e.message().is_empty(),
                "case {i}: {e}"
            );
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
            let e = c.unwrap_err();
            assert!(
                e.to_string().starts_with("invalid ICAP message: ") && !e.message().is_empty(),
                "case {i}: {e}"
            );
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
