//! An adaptation layer for HTTP proxies and gateways (feature `adapt`): a [`tower::Layer`]
//! that sends each `http` request to an ICAP REQMOD service before the inner service sees
//! it, and each response to a RESPMOD service after, and applies the verdict.
//!
//! This module owns the mapping of ICAP answers onto HTTP messages: 204 lets the original
//! pass (replaying the bytes held while the server decided), 200 replaces the message (a
//! block page reaches the user as the ICAP server wrote it; a REQMOD 200 carrying a response
//! answers the request without calling the inner service), 206 splices the returned start
//! onto the original from the offset the server names, and an error fails closed (a 503
//! page) or open (the original passes), per [`AdaptConfig`]. Bodies stream both ways: the
//! original flows to the ICAP server as it arrives and the answer flows on as it comes; the
//! copy held for a 204 is bounded by [`AdaptConfig::max_hold`], so memory per transaction
//! is bounded whatever the body size.

mod body;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::builder::{
    http_request_head_from, http_request_parts, http_response_head_from, http_response_parts,
};
use crate::client::ClientError;
use crate::client::{BodySource, Client, ClientRequest, ClientResponse};
use crate::options::Transfer;
use crate::proto::message::Response as IcapResponse;

pub use body::AdaptBody;

use crate::BoxError;
use body::{Returned, Tee};

/// What the layer did with one message, in the response's extensions as [`Dispositions`].
/// Not a judgement of the content (that is a [`dlp::Verdict`](crate::dlp::Verdict)): how the
/// message was handled, failures included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Not sent to ICAP: a bypass rule matched.
    Bypassed,
    /// ICAP 204: the original passed.
    Unmodified,
    /// ICAP 200: the message was replaced by the adapted one.
    Modified,
    /// ICAP 206: the returned start, then the original from an offset.
    Partial,
    /// REQMOD answered with a response (a block page): the request never reached the
    /// inner service.
    Blocked,
    /// The ICAP call failed and the original passed (`fail_open`).
    FailedOpen,
    /// The ICAP call failed and an error page was returned.
    FailedClosed,
}

impl Disposition {
    /// A short lower-case name, for access logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Bypassed => "bypassed",
            Disposition::Unmodified => "unmodified",
            Disposition::Modified => "modified",
            Disposition::Partial => "partial",
            Disposition::Blocked => "blocked",
            Disposition::FailedOpen => "failed-open",
            Disposition::FailedClosed => "failed-closed",
        }
    }
}

/// The verdicts of both directions, inserted in every response the layer returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dispositions {
    /// REQMOD's, when the request was considered for it.
    pub reqmod: Option<Disposition>,
    /// RESPMOD's, when the response was considered for it.
    pub respmod: Option<Disposition>,
}

/// Who sent the request, when the proxy knows: put it in the request's extensions and the
/// layer sends `X-Client-IP`, `X-Client-Username` and `X-Authenticated-User`, each where the
/// service's OPTIONS lists it in `X-Include`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The authenticated user name.
    pub user: Option<String>,
}

impl ClientInfo {
    /// Info with the client's address.
    pub fn new(ip: IpAddr) -> Self {
        ClientInfo {
            ip: Some(ip),
            user: None,
        }
    }

    /// Adds the authenticated user name.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// The layer's configuration: which services, how to fail, what to leave alone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdaptConfig {
    /// The REQMOD service (uploads), if any.
    pub reqmod: Option<Client>,
    /// The RESPMOD service (downloads), if any.
    pub respmod: Option<Client>,
    /// On an ICAP failure, let the original pass instead of answering 503.
    pub fail_open: bool,
    /// Bytes of the original kept for a 204 or 206 answer. 204 outside the preview is
    /// offered only for bodies of known length up to this; a longer body keeps only its
    /// start (enough for the preview), and an answer that needs more fails the adaptation.
    pub max_hold: usize,
    /// Methods whose requests are never adapted (neither REQMOD nor RESPMOD).
    pub bypass_methods: Vec<http::Method>,
    /// Content types (prefix match, case-insensitive) whose messages are not adapted.
    pub bypass_content_types: Vec<String>,
    /// Messages whose known length exceeds this are not adapted.
    pub bypass_larger_than: Option<u64>,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig {
            reqmod: None,
            respmod: None,
            fail_open: false,
            max_hold: 1024 * 1024,
            bypass_methods: Vec::new(),
            bypass_content_types: Vec::new(),
            bypass_larger_than: None,
        }
    }
}

impl AdaptConfig {
    /// Sends requests to `client` (REQMOD).
    pub fn reqmod(mut self, client: Client) -> Self {
        self.reqmod = Some(client);
        self
    }

    /// Sends responses to `client` (RESPMOD).
    pub fn respmod(mut self, client: Client) -> Self {
        self.respmod = Some(client);
        self
    }

    /// Lets the original pass when ICAP fails.
    pub fn fail_open(mut self, yes: bool) -> Self {
        self.fail_open = yes;
        self
    }

    /// Sets [`Self::max_hold`].
    pub fn max_hold(mut self, bytes: usize) -> Self {
        self.max_hold = bytes;
        self
    }

    /// Never adapts requests with this method.
    pub fn bypass_method(mut self, m: http::Method) -> Self {
        self.bypass_methods.push(m);
        self
    }

    /// Never adapts messages whose `Content-Type` starts with `prefix`.
    pub fn bypass_content_type(mut self, prefix: impl Into<String>) -> Self {
        self.bypass_content_types
            .push(prefix.into().to_ascii_lowercase());
        self
    }

    /// Never adapts messages longer than `bytes` (known length only).
    pub fn bypass_larger_than(mut self, bytes: u64) -> Self {
        self.bypass_larger_than = Some(bytes);
        self
    }

    fn bypass(&self, headers: &http::HeaderMap, len: Option<u64>) -> bool {
        if let (Some(max), Some(len)) = (self.bypass_larger_than, len) {
            if len > max {
                return true;
            }
        }
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        ct.is_some_and(|ct| {
            self.bypass_content_types
                .iter()
                .any(|p| ct.starts_with(p.as_str()))
        })
    }
}

/// The [`tower::Layer`] adapting through ICAP.
///
/// ```no_run
/// # async fn f() -> Result<(), icap::client::ClientError> {
/// use icap::adapt::{AdaptConfig, AdaptLayer};
/// use icap::client::Client;
///
/// let dlp = Client::builder().server("icap://127.0.0.1:1344/respmod").build()?;
/// let layer = AdaptLayer::new(AdaptConfig::default().respmod(dlp));
/// let svc = tower::ServiceBuilder::new().layer(layer).service_fn(
///     |_req: http::Request<icap::adapt::AdaptBody<http_body_util::Empty<bytes::Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(
///             http_body_util::Full::new(bytes::Bytes::from("hello")),
///         ))
///     },
/// );
/// # drop(svc);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AdaptLayer {
    cfg: Arc<AdaptConfig>,
}

impl AdaptLayer {
    /// A layer with this configuration.
    pub fn new(cfg: AdaptConfig) -> Self {
        AdaptLayer { cfg: Arc::new(cfg) }
    }
}

impl<S> tower::Layer<S> for AdaptLayer {
    type Service = Adapt<S>;
    fn layer(&self, inner: S) -> Adapt<S> {
        Adapt {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// The service [`AdaptLayer`] makes: `http::Request<B>` in, `http::Response<AdaptBody<RB>>`
/// out, the inner service getting `http::Request<AdaptBody<B>>`.
#[derive(Debug, Clone)]
pub struct Adapt<S> {
    inner: S,
    cfg: Arc<AdaptConfig>,
}

type Resp<RB> = http::Response<AdaptBody<RB>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Adapt<S>
where
    S: tower::Service<http::Request<AdaptBody<B>>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Resp<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The ready clone goes into the future, a fresh clone stays (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cfg = self.cfg.clone();
        Box::pin(adapt(cfg, inner, req))
    }
}

async fn adapt<S, B, RB>(
    cfg: Arc<AdaptConfig>,
    inner: S,
    req: http::Request<B>,
) -> Result<Resp<RB>, S::Error>
where
    S: tower::Service<http::Request<AdaptBody<B>>, Response = http::Response<RB>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let who = parts.extensions.get::<ClientInfo>().cloned();
    let method_bypassed = cfg.bypass_methods.contains(&parts.method);
    let req_head = http_request_head_from(&parts);
    let name = file_name(&parts.uri);
    let mut verdicts = Dispositions::default();

    // REQMOD
    let req_out = match &cfg.reqmod {
        Some(client) => {
            let len = body.size_hint().exact();
            if method_bypassed || cfg.bypass(&parts.headers, len) {
                verdicts.reqmod = Some(Disposition::Bypassed);
                http::Request::from_parts(parts, AdaptBody::original(body))
            } else {
                let span = tracing::info_span!(
                    "icap.adapt",
                    mode = "reqmod",
                    target = %parts.uri,
                    verdict = tracing::field::Empty
                );
                let has_body = !(body.is_end_stream() || len == Some(0));
                if has_body && ignored(client, name.as_deref()).await {
                    verdicts.reqmod = Some(Disposition::Bypassed);
                    span.record("verdict", Disposition::Bypassed.as_str());
                    let req = http::Request::from_parts(parts, AdaptBody::original(body));
                    return respond(&cfg, inner, req, req_head, who, name, verdicts).await;
                }
                let mut icap = ClientRequest::reqmod(req_head.clone());
                if let Some(n) = &name {
                    icap = icap.file_name(n.clone());
                }
                icap = with_client(icap, who.as_ref(), client).await;
                let (icap, back) = with_body(icap, body, has_body, len, cfg.max_hold);
                let r = client.send(icap).instrument(span.clone()).await;
                match reqmod_outcome(&cfg, r, back, parts).await {
                    ReqOutcome::Forward(req, v) => {
                        span.record("verdict", v.as_str());
                        verdicts.reqmod = Some(v);
                        req
                    }
                    ReqOutcome::Answer(resp, v) => {
                        span.record("verdict", v.as_str());
                        verdicts.reqmod = Some(v);
                        let mut resp = resp;
                        resp.extensions_mut().insert(verdicts);
                        return Ok(resp);
                    }
                }
            }
        }
        None => http::Request::from_parts(parts, AdaptBody::original(body)),
    };

    respond(&cfg, inner, req_out, req_head, who, name, verdicts).await
}

/// Calls the inner service and sends its response to RESPMOD.
async fn respond<S, B, RB>(
    cfg: &AdaptConfig,
    mut inner: S,
    req_out: http::Request<AdaptBody<B>>,
    req_head: crate::proto::head::HttpRequestHead,
    who: Option<ClientInfo>,
    name: Option<String>,
    mut verdicts: Dispositions,
) -> Result<Resp<RB>, S::Error>
where
    S: tower::Service<http::Request<AdaptBody<B>>, Response = http::Response<RB>>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    let method_bypassed = cfg.bypass_methods.contains(req_out.method());
    let resp = inner.call(req_out).await?;

    // RESPMOD
    let Some(client) = &cfg.respmod else {
        let mut resp = resp.map(AdaptBody::original);
        resp.extensions_mut().insert(verdicts);
        return Ok(resp);
    };
    let (rparts, rbody) = resp.into_parts();
    let len = rbody.size_hint().exact();
    if method_bypassed || cfg.bypass(&rparts.headers, len) {
        verdicts.respmod = Some(Disposition::Bypassed);
        let mut resp = http::Response::from_parts(rparts, AdaptBody::original(rbody));
        resp.extensions_mut().insert(verdicts);
        return Ok(resp);
    }
    let span = tracing::info_span!(
        "icap.adapt",
        mode = "respmod",
        target = %String::from_utf8_lossy(&req_head.target),
        verdict = tracing::field::Empty
    );
    let has_body = !(rbody.is_end_stream() || len == Some(0));
    if has_body && ignored(client, name.as_deref()).await {
        span.record("verdict", Disposition::Bypassed.as_str());
        verdicts.respmod = Some(Disposition::Bypassed);
        let mut resp = http::Response::from_parts(rparts, AdaptBody::original(rbody));
        resp.extensions_mut().insert(verdicts);
        return Ok(resp);
    }
    let mut icap = ClientRequest::respmod(http_response_head_from(&rparts)).http_request(req_head);
    if let Some(n) = &name {
        icap = icap.file_name(n.clone());
    }
    icap = with_client(icap, who.as_ref(), client).await;
    let (icap, back) = with_body(icap, rbody, has_body, len, cfg.max_hold);
    let r = client.send(icap).instrument(span.clone()).await;
    let (mut resp, v) = respmod_outcome(cfg, r, back, rparts).await;
    span.record("verdict", v.as_str());
    verdicts.respmod = Some(v);
    resp.extensions_mut().insert(verdicts);
    Ok(resp)
}

/// The last segment of the URL's path, for the service's `Transfer-*` lists.
fn file_name(uri: &http::Uri) -> Option<String> {
    let last = uri.path().rsplit('/').next()?;
    (!last.is_empty()).then(|| last.to_string())
}

/// Whether the service's OPTIONS (cached by the client) say `Transfer-Ignore` for this
/// name: such bodies are not sent at all. Options that cannot be had decide nothing here;
/// the call itself then fails and the fail policy applies.
async fn ignored(client: &Client, name: Option<&str>) -> bool {
    let Some(n) = name else { return false };
    matches!(client.options().await, Ok(o) if o.transfer_for(n) == Transfer::Ignore)
}

/// Adds what is known of the client, each header only when the service's `X-Include` asks
/// for it (RFC 3507 4.10.2): who browsed is personal data, sent where it is wanted only.
async fn with_client(
    mut icap: ClientRequest,
    who: Option<&ClientInfo>,
    client: &Client,
) -> ClientRequest {
    let Some(w) = who else { return icap };
    let Ok(opts) = client.options().await else {
        return icap;
    };
    if let Some(ip) = w.ip.filter(|_| opts.includes("X-Client-IP")) {
        icap = icap.client_ip(ip);
    }
    if let Some(u) = &w.user {
        if opts.includes("X-Client-Username") {
            icap = icap.header("X-Client-Username", u.as_bytes());
        }
        if opts.includes("X-Authenticated-User") {
            icap = icap.authenticated_user(u);
        }
    }
    icap
}

/// Attaches the body through a [`Tee`] that holds what it passes (up to `max_hold`) and
/// gives the rest of the original back when the client lets go of it.
fn with_body<B>(
    icap: ClientRequest,
    body: B,
    has_body: bool,
    len: Option<u64>,
    max_hold: usize,
) -> (ClientRequest, Option<oneshot::Receiver<Returned<B>>>)
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if !has_body {
        return (icap.allow_204(true), None);
    }
    let (tx, rx) = oneshot::channel();
    let tee = Tee::new(body, max_hold, tx);
    // 204 outside the preview only when the whole body fits what is held.
    let whole_fits = len.is_some_and(|l| l <= max_hold as u64);
    let icap = icap
        .body(BodySource::stream(tee))
        .allow_204(whole_fits)
        .allow_206();
    (icap, Some(rx))
}

/// The original again after a 204 (or from an offset after a 206): the held bytes, then the
/// rest, or `None` when the held copy no longer covers what is needed.
async fn original_from<B>(
    back: Option<oneshot::Receiver<Returned<B>>>,
    offset: u64,
) -> Option<AdaptBody<B>>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    match back {
        None => (offset == 0).then(AdaptBody::empty),
        Some(rx) => rx.await.ok()?.replay_from(offset),
    }
}

enum ReqOutcome<B, RB> {
    Forward(http::Request<AdaptBody<B>>, Disposition),
    Answer(Resp<RB>, Disposition),
}

async fn reqmod_outcome<B, RB>(
    cfg: &AdaptConfig,
    r: Result<ClientResponse, ClientError>,
    back: Option<oneshot::Receiver<Returned<B>>>,
    parts: http::request::Parts,
) -> ReqOutcome<B, RB>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let failed = |e: &dyn std::fmt::Display| tracing::warn!(error = %e, "REQMOD failed");
    match r {
        Ok(ans) if ans.head.status == 204 => match original_from(back, 0).await {
            Some(b) => {
                ReqOutcome::Forward(http::Request::from_parts(parts, b), Disposition::Unmodified)
            }
            None => {
                failed(&"204 after more than the held bytes");
                ReqOutcome::Answer(error_page(), Disposition::FailedClosed)
            }
        },
        Ok(ans) if ans.head.status == 200 || ans.head.status == 206 => {
            let partial = ans.head.status == 206;
            let head = ans.head;
            let answer = ans.body;
            if let Some(h) = &head.http_response {
                return match http_response_parts(h) {
                    Ok(p) => ReqOutcome::Answer(
                        http::Response::from_parts(p, answer_body(&head, answer, None)),
                        Disposition::Blocked,
                    ),
                    Err(e) => {
                        failed(&e);
                        ReqOutcome::Answer(error_page(), Disposition::FailedClosed)
                    }
                };
            }
            let new_parts = match head.http_request.as_ref().map(http_request_parts) {
                Some(Ok(mut p)) => {
                    p.extensions = parts.extensions;
                    p
                }
                // No head in a 200 keeps the original head (RFC 3507 4.8.2 requires one,
                // but a body-only answer is harmless to honour).
                None => parts,
                Some(Err(e)) => {
                    // Closed even with fail_open: the original went into the answer.
                    failed(&e);
                    return ReqOutcome::Answer(error_page(), Disposition::FailedClosed);
                }
            };
            let v = if partial {
                Disposition::Partial
            } else {
                Disposition::Modified
            };
            let body = answer_body(&head, answer, partial.then_some(back).flatten());
            ReqOutcome::Forward(http::Request::from_parts(new_parts, body), v)
        }
        Ok(ans) => {
            failed(&format_args!("unexpected ICAP status {}", ans.head.status));
            fail_req(cfg, back, parts).await
        }
        Err(e) => {
            failed(&e);
            fail_req(cfg, back, parts).await
        }
    }
}

async fn fail_req<B, RB>(
    cfg: &AdaptConfig,
    back: Option<oneshot::Receiver<Returned<B>>>,
    parts: http::request::Parts,
) -> ReqOutcome<B, RB>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    if cfg.fail_open {
        if let Some(b) = original_from(back, 0).await {
            return ReqOutcome::Forward(
                http::Request::from_parts(parts, b),
                Disposition::FailedOpen,
            );
        }
    }
    ReqOutcome::Answer(error_page(), Disposition::FailedClosed)
}

async fn respmod_outcome<RB>(
    cfg: &AdaptConfig,
    r: Result<ClientResponse, ClientError>,
    back: Option<oneshot::Receiver<Returned<RB>>>,
    parts: http::response::Parts,
) -> (Resp<RB>, Disposition)
where
    RB: http_body::Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let failed = |e: &dyn std::fmt::Display| tracing::warn!(error = %e, "RESPMOD failed");
    let fail = |back, parts| async move {
        if cfg.fail_open {
            if let Some(b) = original_from(back, 0).await {
                return (
                    http::Response::from_parts(parts, b),
                    Disposition::FailedOpen,
                );
            }
        }
        (error_page(), Disposition::FailedClosed)
    };
    match r {
        Ok(ans) if ans.head.status == 204 => match original_from(back, 0).await {
            Some(b) => (
                http::Response::from_parts(parts, b),
                Disposition::Unmodified,
            ),
            None => {
                failed(&"204 after more than the held bytes");
                (error_page(), Disposition::FailedClosed)
            }
        },
        Ok(ans) if ans.head.status == 200 || ans.head.status == 206 => {
            let partial = ans.head.status == 206;
            let head = ans.head;
            let new_parts = match head.http_response.as_ref().map(http_response_parts) {
                Some(Ok(mut p)) => {
                    p.extensions = parts.extensions;
                    p
                }
                None => parts,
                Some(Err(e)) => {
                    failed(&e);
                    return (error_page(), Disposition::FailedClosed);
                }
            };
            let v = if partial {
                Disposition::Partial
            } else {
                Disposition::Modified
            };
            let body = answer_body(&head, ans.body, partial.then_some(back).flatten());
            (http::Response::from_parts(new_parts, body), v)
        }
        Ok(ans) => {
            failed(&format_args!("unexpected ICAP status {}", ans.head.status));
            fail(back, parts).await
        }
        Err(e) => {
            failed(&e);
            fail(back, parts).await
        }
    }
}

fn answer_body<B>(
    head: &IcapResponse,
    answer: crate::client::AnswerBody,
    original: Option<oneshot::Receiver<Returned<B>>>,
) -> AdaptBody<B> {
    if head.body.is_none() && original.is_none() {
        return AdaptBody::empty();
    }
    AdaptBody::answer(answer, original)
}

/// The fail-closed page.
fn error_page<B>() -> http::Response<AdaptBody<B>> {
    const PAGE: &str = "<html><head><title>503 Service Unavailable</title></head><body>\
<h1>Service Unavailable</h1><p>The content could not be checked by the adaptation \
service, so it was not delivered.</p></body></html>\n";
    let mut r = http::Response::new(AdaptBody::full(Bytes::from_static(PAGE.as_bytes())));
    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(PAGE.len()),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}
