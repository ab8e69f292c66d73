//! The service model: what a service receives ([`IncomingRequest`], with its [`PeerInfo`])
//! and returns ([`Reply`], [`ReplyBody`]), and how the server keeps a service with its
//! declared [`ServiceOptions`].
//!
//! A service is any `tower::Service<IncomingRequest, Response = Reply>` whose error converts
//! into a [`BoxError`]; an error is logged and answered `500 Server Error`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use tokio::io::AsyncRead;
use tower::ServiceExt;

use super::body::Body;
use crate::builder::{ErrorStatus, ResponseBuilder};
use crate::options::ServiceOptions;
use crate::proto::fields::Headers;
use crate::proto::message::{Request, Response};
use crate::BoxError;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The client's address, when there is one (not on a Unix socket).
    pub addr: Option<SocketAddr>,
    /// True on a TLS connection.
    pub secure: bool,
}

impl PeerInfo {
    /// A peer at `addr`, on a connection without TLS.
    pub fn new(addr: SocketAddr) -> Self {
        PeerInfo {
            addr: Some(addr),
            secure: false,
        }
    }

    /// A peer without an address (a Unix socket, a pipe).
    pub fn unknown() -> Self {
        PeerInfo::default()
    }

    /// Says whether the connection is TLS.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }
}

impl std::fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("(unknown peer)"),
        }
    }
}

/// A REQMOD or RESPMOD as a service receives it: the heads, who sent it, and the body,
/// owned (it may be moved, spawned or wrapped).
///
/// A service is a plain function of it, so it can be tested without a server:
///
/// ```
/// use icap::BoxError;
/// use icap::server::{Body, IncomingRequest, PeerInfo, Reply};
/// use icap::{IcapUri, Request};
/// use tower::{service_fn, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
/// let blocker = service_fn(|mut req: IncomingRequest| async move {
///     while let Some(piece) = req.body.data().await? {
///         if piece.windows(6).any(|w| w == b"secret") {
///             return Ok::<_, BoxError>(Reply::page(403, "Forbidden", "text/plain", "no\n")?);
///         }
///     }
///     Ok(Reply::unmodified())
/// });
/// let uri = IcapUri::parse("icap://dlp.example/reqmod")?;
/// let head = Request::reqmod(&uri)
///     .http_request_parts("POST", "http://up.example/f", [("Host", "up.example")])
///     .with_body()
///     .build()?;
/// let req = IncomingRequest::new(head, PeerInfo::unknown(), Body::from_bytes("top secret"));
/// let reply = blocker.oneshot(req).await?;
/// assert!(matches!(reply, Reply::Respond(ref res, _) if res.http_response.as_ref().unwrap().status == 403));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct IncomingRequest {
    /// The ICAP request head and encapsulated HTTP heads.
    pub head: Request,
    /// The client.
    pub peer: PeerInfo,
    /// The encapsulated body (empty for `null-body`).
    pub body: Body,
}

impl IncomingRequest {
    /// A request as the server would hand it over: for testing a service without a server.
    pub fn new(head: Request, peer: PeerInfo, body: Body) -> Self {
        IncomingRequest { head, peer, body }
    }

    /// The body, to read it while keeping the heads at hand.
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// The heads and the body apart.
    pub fn into_parts(self) -> (Request, PeerInfo, Body) {
        (self.head, self.peer, self.body)
    }
}

impl std::ops::Deref for IncomingRequest {
    type Target = Request;
    fn deref(&self) -> &Request {
        &self.head
    }
}

/// A response body the service hands back.
pub enum ReplyBody {
    /// No body.
    Empty,
    /// A body in memory.
    Full(Bytes),
    /// A body streamed from a reader, sent in chunks as it is read.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

impl std::fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyBody::Empty => f.write_str("Empty"),
            ReplyBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ReplyBody::Reader(_) => f.write_str("Reader"),
        }
    }
}

/// A service's answer. The server writes the service's ISTag (from its [`ServiceOptions`])
/// into every answer, replacing any the response carries.
#[derive(Debug)]
pub enum Reply {
    /// The message needs no change: a 204 where the client allows it (or in answer to a
    /// preview), else a 200 that echoes the original message. The headers are added to the
    /// ICAP response (for instance `X-Infection-Found` in a monitoring mode).
    Unmodified(Headers),
    /// A final response (200 with a modified message or a block page, or an error status)
    /// and its body; `response.body` must be `Some` exactly when a body is given (an empty
    /// one is `ReplyBody::Full` of no bytes), and a `Full` body must have the length its
    /// HTTP head's `Content-Length` says. A reply that breaks this is answered 500.
    Respond(Response, ReplyBody),
    /// A 206: `prefix` replaces the start of the body, and the original body continues it
    /// from offset `original_from`. Needs `Allow: 206`.
    Partial(Response, Bytes, u64),
}

/// The ISTag the answer builders start with; the server replaces it by the service's.
const PLACEHOLDER_ISTAG: &str = "-";

impl Reply {
    /// The message stands as it is.
    pub fn unmodified() -> Reply {
        Reply::Unmodified(Headers::new())
    }

    /// A `200 OK` builder for a modified message (the server fills in the ISTag).
    pub fn ok() -> ResponseBuilder {
        Response::ok(PLACEHOLDER_ISTAG)
    }

    /// A `206 Partial Content` builder for [`Reply::Partial`] (the server fills in the ISTag).
    pub fn partial_content() -> ResponseBuilder {
        Response::partial_content(PLACEHOLDER_ISTAG)
    }

    /// An ICAP error answer (the connection closes after it).
    pub fn error(status: ErrorStatus) -> Reply {
        let res = Response::error(status, PLACEHOLDER_ISTAG)
            .build()
            .expect("an error response with a fixed ISTag is valid");
        Reply::Respond(res, ReplyBody::Empty)
    }

    /// A 200 carrying an HTTP error page in place of the message (`status` 403 for a block
    /// page), with `Content-Type`, `Content-Length` and the bytes of `page`. Fails only on a
    /// reason or content type that is not a valid header value.
    pub fn page(
        status: u16,
        reason: &str,
        content_type: &str,
        page: impl Into<Bytes>,
    ) -> crate::Result<Reply> {
        let page = page.into();
        let res = Reply::ok()
            .http_error_page(status, reason, content_type, &page)
            .build()?;
        Ok(Reply::Respond(res, ReplyBody::Full(page)))
    }
}

/// The future a boxed service returns.
pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

/// Whether a service can serve now (see `Server::availability`).
pub(crate) type Availability = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// A service of any type behind one call: what a route keeps.
trait CallService: Send {
    /// Calls a clone of the service once ready, in one boxed future.
    fn call_clone(&self, req: IncomingRequest) -> ReplyFuture;
}

/// The service of a route, typed.
struct Typed<S>(S);

impl<S> CallService for Typed<S>
where
    S: tower::Service<IncomingRequest, Response = Reply> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn call_clone(&self, req: IncomingRequest) -> ReplyFuture {
        // One allocation per call, the service's own future inside it, rather than a boxed
        // clone, a boxed future and a box around both (`BoxCloneService` and `oneshot`).
        let svc = self.0.clone();
        Box::pin(async move { svc.oneshot(req).await.map_err(Into::into) })
    }
}

/// A service at a path, with the options it declares.
pub(crate) struct Route {
    pub(crate) options: ServiceOptions,
    service: Mutex<Box<dyn CallService>>,
    pub(crate) available: Option<Availability>,
    /// The ICAP header fields of its 200 echoes (`Server`, `ISTag`), made at the first.
    pub(crate) echo_fields: OnceLock<Headers>,
}

impl Route {
    pub(crate) fn new<S>(options: ServiceOptions, service: S) -> Self
    where
        S: tower::Service<IncomingRequest, Response = Reply> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Route {
            options,
            service: Mutex::new(Box::new(Typed(service))),
            available: None,
            echo_fields: OnceLock::new(),
        }
    }

    /// False while the service says it cannot serve (OPTIONS is then answered 503).
    pub(crate) fn is_available(&self) -> bool {
        self.available.as_ref().is_none_or(|f| f())
    }

    /// Calls a clone of the service (tower's pattern for shared services: each call waits
    /// for readiness on its own clone, so a concurrency limit counts calls).
    pub(crate) fn call(&self, req: IncomingRequest) -> ReplyFuture {
        self.service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .call_clone(req)
    }
}
