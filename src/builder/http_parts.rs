//! Encapsulated HTTP heads from raw parts, and to and from the `http` crate's `Parts`
//! (feature `http`), checked so that no value can end its line early.

use bytes::Bytes;

#[cfg(feature = "http")]
use super::invalid;
use super::{check_request_head, check_response_head, headers_from, Result};
#[cfg(feature = "http")]
use crate::proto::fields::Headers;
#[cfg(feature = "http")]
use crate::proto::grammar::has_ctl_but_htab;
use crate::proto::head::{HttpRequestHead, HttpResponseHead};

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
        if !has_ctl_but_htab(v.as_bytes()) {
            out.append(n.as_str(), v.as_bytes());
        }
    }
    out
}

/// The head a `Parts` was made from, kept in its extensions so that converting the unchanged
/// `Parts` back gives the head byte for byte (name case, reason phrase, the order of
/// interleaved fields), which `http`'s lower-cased, grouped `HeaderMap` cannot hold. `seen`
/// is what the conversion produced: when the `Parts` no longer match it, they were edited
/// and the head is made from them instead.
#[cfg(feature = "http")]
#[derive(Clone)]
struct Original<H> {
    head: H,
    seen: Seen,
}

#[cfg(feature = "http")]
#[derive(Clone, PartialEq)]
struct Seen {
    version: http::Version,
    headers: http::HeaderMap,
    line: (http::Method, http::Uri, Option<http::StatusCode>),
}

/// Makes an HTTP request head from `http` crate parts (feature `http`). HTTP/2 and HTTP/3
/// requests are written as HTTP/1.1, the only syntax an encapsulated head has. Parts made by
/// [`http_request_parts`] and not changed since give back the original head exactly.
#[cfg(feature = "http")]
pub fn http_request_head_from(parts: &http::request::Parts) -> HttpRequestHead {
    if let Some(o) = parts.extensions.get::<Original<HttpRequestHead>>() {
        let now = Seen {
            version: parts.version,
            headers: parts.headers.clone(),
            line: (parts.method.clone(), parts.uri.clone(), None),
        };
        if now == o.seen {
            return o.head.clone();
        }
    }
    HttpRequestHead {
        method: Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
        target: Bytes::from(parts.uri.to_string()),
        version: Bytes::from_static(http_version(parts.version).as_bytes()),
        headers: http_fields(&parts.headers),
    }
}

/// Makes an HTTP response head from `http` crate parts (feature `http`), with the canonical
/// reason phrase. Parts made by [`http_response_parts`] and not changed since give back the
/// original head exactly, its own reason phrase included.
#[cfg(feature = "http")]
pub fn http_response_head_from(parts: &http::response::Parts) -> HttpResponseHead {
    if let Some(o) = parts.extensions.get::<Original<HttpResponseHead>>() {
        let now = Seen {
            version: parts.version,
            headers: parts.headers.clone(),
            line: (http::Method::GET, http::Uri::default(), Some(parts.status)),
        };
        if now == o.seen {
            return o.head.clone();
        }
    }
    HttpResponseHead {
        version: Bytes::from_static(http_version(parts.version).as_bytes()),
        status: parts.status.as_u16(),
        reason: Bytes::from_static(parts.status.canonical_reason().unwrap_or("").as_bytes()),
        headers: http_fields(&parts.headers),
    }
}

#[cfg(feature = "http")]
fn version_from(v: &[u8]) -> Result<http::Version> {
    Ok(match v {
        b"HTTP/0.9" => http::Version::HTTP_09,
        b"HTTP/1.0" => http::Version::HTTP_10,
        b"HTTP/1.1" => http::Version::HTTP_11,
        b"HTTP/2" | b"HTTP/2.0" => http::Version::HTTP_2,
        b"HTTP/3" | b"HTTP/3.0" => http::Version::HTTP_3,
        other => {
            return Err(invalid(format!(
                "HTTP version {:?} has no http::Version",
                String::from_utf8_lossy(other)
            )))
        }
    })
}

#[cfg(feature = "http")]
fn header_map(h: &Headers) -> Result<http::HeaderMap> {
    let mut map = http::HeaderMap::with_capacity(h.len());
    for (n, v) in h.iter() {
        let name = http::HeaderName::from_bytes(n).map_err(|_| {
            invalid(format!(
                "header name {:?} is not valid for the http crate",
                String::from_utf8_lossy(n)
            ))
        })?;
        let value = http::HeaderValue::from_bytes(v).map_err(|_| {
            invalid(format!(
                "the value of {} is not valid for the http crate",
                String::from_utf8_lossy(n)
            ))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

/// Makes `http` crate request parts from an encapsulated request head (feature `http`), for
/// code built on `http` types (tower, hyper, axum). Every field is kept, repeated fields in
/// their order; a method, target, version or field the `http` crate refuses is a
/// [`BuildError`](super::BuildError) naming it. Converting the parts back with [`http_request_head_from`] gives
/// this head byte for byte as long as the parts are not changed.
///
/// ```
/// use icap::builder::{http_request_head, http_request_head_from, http_request_parts};
///
/// let head = http_request_head(
///     "POST",
///     "http://upload.example/form",
///     "HTTP/1.1",
///     [("Host", "upload.example"), ("Content-Length", "11")],
/// )?;
/// let parts = http_request_parts(&head)?;
/// assert_eq!(parts.method, http::Method::POST);
/// assert_eq!(parts.headers["content-length"], "11");
/// assert_eq!(http_request_head_from(&parts), head);
/// # Ok::<(), icap::builder::BuildError>(())
/// ```
#[cfg(feature = "http")]
pub fn http_request_parts(head: &HttpRequestHead) -> Result<http::request::Parts> {
    let method = http::Method::from_bytes(&head.method).map_err(|_| {
        invalid(format!(
            "HTTP method {:?} is not valid for the http crate",
            String::from_utf8_lossy(&head.method)
        ))
    })?;
    let uri = http::Uri::from_maybe_shared(head.target.clone()).map_err(|e| {
        invalid(format!(
            "HTTP request target {:?} is not a URI: {e}",
            String::from_utf8_lossy(&head.target)
        ))
    })?;
    let seen = Seen {
        version: version_from(&head.version)?,
        headers: header_map(&head.headers)?,
        line: (method, uri, None),
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = seen.line.0.clone();
    parts.uri = seen.line.1.clone();
    parts.version = seen.version;
    parts.headers = seen.headers.clone();
    parts.extensions.insert(Original {
        head: head.clone(),
        seen,
    });
    Ok(parts)
}

/// Makes `http` crate response parts from an encapsulated response head (feature `http`).
/// `http` has no reason phrase; the head's own comes back through
/// [`http_response_head_from`] as long as the parts are not changed. A status outside
/// 100..=999, a version or a field the `http` crate refuses is a [`BuildError`](super::BuildError).
///
/// ```
/// use icap::builder::{http_response_head, http_response_head_from, http_response_parts};
///
/// let head = http_response_head("HTTP/1.1", 403, "Blocked by policy", [("Content-Length", "0")])?;
/// let mut parts = http_response_parts(&head)?;
/// assert_eq!(parts.status, http::StatusCode::FORBIDDEN);
/// assert_eq!(http_response_head_from(&parts), head);
/// parts.headers.insert("x-dlp", http::HeaderValue::from_static("1"));
/// // Changed parts: made afresh, with the canonical reason and lower-case names.
/// assert_eq!(&http_response_head_from(&parts).reason[..], b"Forbidden");
/// # Ok::<(), icap::builder::BuildError>(())
/// ```
#[cfg(feature = "http")]
pub fn http_response_parts(head: &HttpResponseHead) -> Result<http::response::Parts> {
    let status = http::StatusCode::from_u16(head.status)
        .map_err(|_| invalid(format!("HTTP status {} is not valid", head.status)))?;
    let seen = Seen {
        version: version_from(&head.version)?,
        headers: header_map(&head.headers)?,
        line: (http::Method::GET, http::Uri::default(), Some(status)),
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = seen.version;
    parts.headers = seen.headers.clone();
    parts.extensions.insert(Original {
        head: head.clone(),
        seen,
    });
    Ok(parts)
}
