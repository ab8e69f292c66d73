//! The async ICAP client (feature `client`): tokio front end for [`ClientTransaction`].
//!
//! A [`Client`] talks to one ICAP service offered by one or more servers (the second and
//! later ones are load-balancing and failover partners). It keeps a pool of kept-alive
//! connections per server, never more than the server's `Max-Connections`; caches each
//! server's OPTIONS for its `Options-TTL` (dropped when an answer shows another ISTag) and
//! lets them decide the preview size and `Transfer-*` handling; streams request bodies from
//! memory, files or any `AsyncRead` without loading them; and fails over to the next server
//! on connection errors, resets, timeouts, protocol errors and 5xx answers, with bounded
//! retries inside one deadline.
//!
//! Server health follows squid's model (`icap_service_failure_limit`,
//! `icap_service_revival_delay`): [`ClientConfig::failure_limit`] failures within
//! [`ClientConfig::failure_window`] mark a server down; a down server gets no traffic until,
//! [`ClientConfig::revival_delay`] later, an OPTIONS probe answers well. [`Client::health`]
//! shows where each server stands.
//!
//! [`Client::scan`] is the scanner's entry point: it wraps a file as an HTTP upload (REQMOD)
//! or download (RESPMOD), sends it, and draws a [`Verdict`] by the rules of a vendor
//! [`Profile`]. Errors never become `Allowed` unless [`ClientConfig::fail_open`] says so.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout_at;

use crate::builder::RequestBuilder;
use crate::decode::ResponseDecoder;
use crate::error::{ClientError, Error, TlsFailure};
use crate::head::Method;
use crate::limits::Limits;
use crate::message::{Request, Response};
use crate::options::{ServiceOptions, Transfer};
use crate::tls::ClientTls;
use crate::transaction::{ClientEvent, ClientTransaction, RequestBody, Reuse};
use crate::uri::IcapUri;
use crate::verdict::{canonical, judge, Answer, BodyHash, Profile, Verdict};

/// How the next server is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest connections in use.
    LeastLoaded,
}

/// How big a preview to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewPolicy {
    /// What the server's OPTIONS asks for (and no preview when it asks for none).
    #[default]
    FromOptions,
    /// Always this many bytes (capped by the body size).
    Fixed(u64),
    /// Never.
    Off,
}

/// Settings of a [`Client`]. `ClientConfig::default()` suits a scanner.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// TCP connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// TLS handshake timeout. Default 10 s.
    pub tls_timeout: Duration,
    /// Longest time one attempt (OPTIONS if needed, send and answer, on one server) may take;
    /// a server that runs out of it is not tried again within the same call. Default 2 min.
    pub transaction_timeout: Duration,
    /// Longest time one call ([`Client::send`], [`Client::scan`] ...) may take, every attempt
    /// and failover included. Default 5 min.
    pub deadline: Duration,
    /// How long an idle pooled connection is kept. Default 30 s.
    pub idle_timeout: Duration,
    /// Connections per server when its OPTIONS names no `Max-Connections`. Default 16.
    pub max_connections_per_server: usize,
    /// Further attempts after a failed one, on the next servers. Default 2.
    pub retries: usize,
    /// How long a server that just failed is tried after the others. Default 10 s.
    pub backoff: Duration,
    /// Failures within [`Self::failure_window`] that mark a server down (squid's
    /// `icap_service_failure_limit`); 0 never marks one down. Default 3.
    pub failure_limit: u32,
    /// How long a failure is remembered towards [`Self::failure_limit`] (in ten slots, as
    /// squid does: a failure may be forgotten up to a tenth of it early). Default 60 s.
    pub failure_window: Duration,
    /// How long a down server waits before an OPTIONS probe may bring it back (squid's
    /// `icap_service_revival_delay`); again after each failed probe. Default 30 s.
    pub revival_delay: Duration,
    /// Most bytes one answer may bring (ICAP and HTTP heads, chunk framing and body, as
    /// read) beyond the size of the body sent, which an echo or a cleaned copy carries back.
    /// An answer that grows past it fails with [`ClientError::AnswerTooLarge`]. Default 16 MiB.
    pub max_answer: u64,
    /// Send `Allow: 204`. Default true.
    pub allow_204: bool,
    /// Preview size policy. Default: from OPTIONS.
    pub preview: PreviewPolicy,
    /// Load balancing. Default round robin.
    pub balance: Balance,
    /// TLS settings for `icaps://` servers.
    pub tls: ClientTls,
    /// Decoder limits for answers.
    pub limits: Limits,
    /// `User-Agent` of requests.
    pub user_agent: String,
    /// Bytes of a returned body kept in memory in [`Exchange::body`] (the rest is counted and
    /// hashed, or written to a sink; [`Exchange::body_truncated`] says so). Default 64 KiB.
    pub keep_body: usize,
    /// Turn scan errors into `Allowed` verdicts (fail-open). Default false: fail-closed.
    pub fail_open: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            tls_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(120),
            deadline: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            max_connections_per_server: 16,
            retries: 2,
            backoff: Duration::from_secs(10),
            failure_limit: 3,
            failure_window: Duration::from_secs(60),
            revival_delay: Duration::from_secs(30),
            max_answer: 16 << 20,
            allow_204: true,
            preview: PreviewPolicy::FromOptions,
            balance: Balance::RoundRobin,
            tls: ClientTls::default(),
            limits: Limits::default(),
            user_agent: concat!("icap/", env!("CARGO_PKG_VERSION")).into(),
            keep_body: 64 * 1024,
            fail_open: false,
        }
    }
}

/// Bytes of request queued for writing below which more body is read first (one body read).
const WRITE_BATCH: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open connection, with its decoder (pipelined bytes stay in it) and its share of the
/// server's connection limit.
struct Conn {
    io: Box<dyn Io>,
    decoder: ResponseDecoder,
    tls_version: Option<String>,
    _permit: OwnedSemaphorePermit,
    idle_since: Instant,
}

struct CachedOptions {
    options: ServiceOptions,
    fetched: Instant,
}

/// One server of the service.
struct Endpoint {
    uri: IcapUri,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    /// The connection limit in force (config default, lowered by Max-Connections).
    limit: AtomicUsize,
    options: Mutex<Option<CachedOptions>>,
    health: Mutex<Health>,
}

/// Where a server stands (see [`ServerHealth`] for the meaning of the fields).
struct Health {
    down: bool,
    since: Instant,
    /// Failures within the window, grouped as squid does into at most [`SLOTS`] slots of a
    /// tenth of the window each (when the slot began, failures in it), oldest first: bounded
    /// memory however fast a server fails.
    recent: VecDeque<(Instant, u32)>,
    total_failures: u64,
    last_error: Option<String>,
    /// When down: when the next probe may go.
    next_probe: Instant,
    /// A probe is under way (one at a time).
    probing: bool,
    avoid_until: Option<Instant>,
}

impl Health {
    fn new() -> Self {
        let now = Instant::now();
        Health {
            down: false,
            since: now,
            recent: VecDeque::new(),
            total_failures: 0,
            last_error: None,
            next_probe: now,
            probing: false,
            avoid_until: None,
        }
    }

    fn forget_old(&mut self, window: Duration) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| t.elapsed() >= window)
        {
            self.recent.pop_front();
        }
    }

    fn remember(&mut self, now: Instant, window: Duration) {
        match self.recent.back_mut() {
            Some((start, n)) if now.duration_since(*start) < window / SLOTS as u32 => {
                *n = n.saturating_add(1)
            }
            _ => {
                if self.recent.len() == SLOTS {
                    self.recent.pop_front();
                }
                self.recent.push_back((now, 1));
            }
        }
    }

    fn recent_failures(&self) -> u32 {
        self.recent
            .iter()
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    }
}

/// Slots of the failure memory.
const SLOTS: usize = 10;

/// Clears the probing mark however the probe ends (a probe run by a call can be dropped
/// with it).
struct ProbeClaim<'a>(&'a Endpoint);

impl Drop for ProbeClaim<'_> {
    fn drop(&mut self) {
        self.0.health().probing = false;
    }
}

impl Endpoint {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().expect("not poisoned")
    }

    fn is_down(&self) -> bool {
        self.health().down
    }

    /// The right to probe this down server now, when its revival delay has passed and no
    /// other probe is under way. Whoever gets true runs the probe and holds a [`ProbeClaim`]
    /// while it does.
    fn claim_probe(&self) -> bool {
        let mut h = self.health();
        if h.down && !h.probing && h.next_probe <= Instant::now() {
            h.probing = true;
            true
        } else {
            false
        }
    }

    /// Counts a failure of the server; the limit-th within the window marks it down.
    fn failed(&self, cfg: &ClientConfig, e: &ClientError) {
        let now = Instant::now();
        let mut h = self.health();
        h.total_failures += 1;
        h.last_error = Some(e.to_string());
        h.avoid_until = Some(after(now, cfg.backoff));
        if h.down || cfg.failure_limit == 0 {
            return;
        }
        h.forget_old(cfg.failure_window);
        h.remember(now, cfg.failure_window);
        if h.recent_failures() >= cfg.failure_limit {
            self.go_down(&mut h, cfg, now);
        }
    }

    fn go_down(&self, h: &mut Health, cfg: &ClientConfig, now: Instant) {
        h.down = true;
        h.since = now;
        h.next_probe = after(now, cfg.revival_delay);
        // Pooled connections to a failing server are not to be trusted after it comes back.
        self.idle.lock().expect("not poisoned").clear();
    }

    /// An OPTIONS answer (probe or connectivity test) decides, as in squid: good brings the
    /// server back with its failures forgotten, bad marks it down (for another revival delay
    /// if it was); with no failure limit, bad only puts it last for the back-off.
    fn options_result(&self, cfg: &ClientConfig, r: &Result<ServiceOptions, ClientError>) {
        let now = Instant::now();
        let mut h = self.health();
        match r {
            Ok(_) => {
                if h.down {
                    h.down = false;
                    h.since = now;
                }
                h.recent.clear();
                h.avoid_until = None;
            }
            Err(e) => {
                h.total_failures += 1;
                h.last_error = Some(e.to_string());
                if h.down {
                    h.next_probe = after(now, cfg.revival_delay);
                } else if cfg.failure_limit == 0 {
                    h.avoid_until = Some(after(now, cfg.backoff));
                } else {
                    self.go_down(&mut h, cfg, now);
                }
            }
        }
    }

    fn down_error(&self) -> ClientError {
        let h = self.health();
        ClientError::Down {
            server: self.name(),
            down_for: h.since.elapsed(),
            last_error: h.last_error.clone().unwrap_or_default(),
        }
    }

    fn report(&self, cfg: &ClientConfig) -> ServerHealth {
        let mut h = self.health();
        h.forget_old(cfg.failure_window);
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |t: Instant| {
            if t >= now {
                wall.checked_add(t - now).unwrap_or(wall)
            } else {
                wall.checked_sub(now - t).unwrap_or(wall)
            }
        };
        ServerHealth {
            server: self.uri.clone(),
            up: !h.down,
            since: at(h.since),
            recent_failures: h.recent_failures(),
            total_failures: h.total_failures,
            last_error: h.last_error.clone(),
            next_probe: h.down.then(|| at(h.next_probe)),
            probing: h.probing,
            connections_in_use: self.in_use(),
        }
    }

    fn in_use(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
            - self
                .permits
                .available_permits()
                .min(self.limit.load(Ordering::Relaxed))
    }

    fn avoided(&self) -> bool {
        self.health()
            .avoid_until
            .is_some_and(|t| t > Instant::now())
    }

    fn name(&self) -> String {
        self.uri.to_string()
    }
}

/// The body of a request: re-readable sources allow retries on another server.
pub enum BodySource {
    /// No body (`null-body`).
    None,
    /// A body in memory.
    Bytes(Bytes),
    /// A file, opened (again) for each attempt and streamed.
    File(PathBuf),
    /// A reader with an optional known length; read once, so no retry after it was used.
    Reader(
        Mutex<Option<Box<dyn AsyncRead + Send + Unpin>>>,
        Option<u64>,
    ),
}

impl std::fmt::Debug for BodySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodySource::None => f.write_str("None"),
            BodySource::Bytes(b) => write!(f, "Bytes({})", b.len()),
            BodySource::File(p) => write!(f, "File({})", p.display()),
            BodySource::Reader(_, n) => write!(f, "Reader({n:?})"),
        }
    }
}

impl BodySource {
    /// A one-shot reader of known or unknown length.
    pub fn reader(r: impl AsyncRead + Send + Unpin + 'static, len: Option<u64>) -> Self {
        BodySource::Reader(Mutex::new(Some(Box::new(r))), len)
    }

    async fn len(&self) -> io::Result<Option<u64>> {
        Ok(match self {
            BodySource::None => Some(0),
            BodySource::Bytes(b) => Some(b.len() as u64),
            BodySource::File(p) => Some(tokio::fs::metadata(p).await?.len()),
            BodySource::Reader(_, n) => *n,
        })
    }

    async fn open(&self) -> io::Result<Option<Box<dyn AsyncRead + Send + Unpin>>> {
        Ok(match self {
            BodySource::None => None,
            BodySource::Bytes(b) => Some(Box::new(io::Cursor::new(b.clone()))),
            BodySource::File(p) => Some(Box::new(tokio::fs::File::open(p).await?)),
            BodySource::Reader(r, _) => {
                Some(r.lock().expect("not poisoned").take().ok_or_else(|| {
                    io::Error::other("a reader body was already sent and cannot be read again")
                })?)
            }
        })
    }

    fn retryable(&self) -> bool {
        !matches!(self, BodySource::Reader(..))
    }
}

/// What came back from one transaction.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The server that answered.
    pub server: IcapUri,
    /// The final response (204, 200, 206, or an error status; never 100).
    pub response: Response,
    /// The start of the returned body, up to [`ClientConfig::keep_body`] bytes.
    pub body: Bytes,
    /// True when the returned body was longer than [`ClientConfig::keep_body`]: [`Self::body`]
    /// holds only its start, [`Self::body_digest`] covers all of it.
    pub body_truncated: bool,
    /// Length and hash of the whole returned body, when one came.
    pub body_digest: Option<(u64, u64)>,
    /// For a 206: the original body continues the new one from this offset.
    pub use_original_body: Option<u64>,
    /// Length and hash of the body that was sent.
    pub sent_digest: Option<(u64, u64)>,
    /// The TLS version, on `icaps://`.
    pub tls_version: Option<String>,
    /// Time from the first byte sent to the end of the answer.
    pub elapsed: Duration,
}

/// Whether a REQMOD or a RESPMOD carries the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The file is the body of an HTTP upload (POST).
    #[default]
    Reqmod,
    /// The file is the body of an HTTP response to a GET of a URL naming it.
    Respmod,
}

/// A file to scan.
pub struct ScanRequest {
    /// REQMOD (upload) or RESPMOD (download).
    pub mode: Mode,
    /// How blocks are recognised.
    pub profile: Profile,
    /// The file's name: used in the embedded URL and for the `Transfer-*` rules.
    pub file_name: String,
    /// `Content-Type` of the embedded message. Default `application/octet-stream`.
    pub content_type: String,
    /// The content.
    pub body: BodySource,
    /// `X-Client-IP`.
    pub client_ip: Option<std::net::IpAddr>,
    /// `X-Server-IP`.
    pub server_ip: Option<std::net::IpAddr>,
    /// `X-Authenticated-User`.
    pub user: Option<String>,
    /// More ICAP headers.
    pub headers: Vec<(String, String)>,
    /// The embedded URL; default `http://upload.icap.invalid/<file_name>` (REQMOD) or
    /// `http://download.icap.invalid/<file_name>` (RESPMOD).
    pub url: Option<String>,
    /// Called with the number of body bytes sent so far.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for ScanRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanRequest")
            .field("mode", &self.mode)
            .field("profile", &self.profile)
            .field("file_name", &self.file_name)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl ScanRequest {
    /// A scan of `body` named `file_name` in `mode`, generic profile.
    pub fn new(mode: Mode, file_name: impl Into<String>, body: BodySource) -> Self {
        ScanRequest {
            mode,
            profile: Profile::Generic,
            file_name: file_name.into(),
            content_type: "application/octet-stream".into(),
            body,
            client_ip: None,
            server_ip: None,
            user: None,
            headers: Vec::new(),
            url: None,
            progress: None,
        }
    }
}

/// A scan's result.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    /// The verdict and why.
    pub verdict: Verdict,
    /// The exchange it was drawn from (`None` when fail-open turned an error into Allowed,
    /// or when `Transfer-Ignore` said not to send the file).
    pub exchange: Option<Exchange>,
    /// The error a fail-open verdict stands for.
    pub error: Option<String>,
}

/// One server's answer to the connectivity test.
#[derive(Debug)]
pub struct ServerReport {
    /// The server.
    pub server: IcapUri,
    /// Its options, or why they could not be had.
    pub result: Result<ServiceOptions, ClientError>,
    /// The TLS version negotiated, on `icaps://`.
    pub tls_version: Option<String>,
    /// Time for connect, handshake and OPTIONS.
    pub round_trip: Duration,
}

/// One server's health, from [`Client::health`].
#[derive(Debug, Clone)]
pub struct ServerHealth {
    /// The server.
    pub server: IcapUri,
    /// Whether it gets traffic. A down server waits for a good OPTIONS probe.
    pub up: bool,
    /// When it last went up or down (the client's creation, if never).
    pub since: SystemTime,
    /// Failures within [`ClientConfig::failure_window`], the count that marks it down (as in
    /// squid, remembered in ten slots, so a failure may be forgotten up to a tenth of the
    /// window early).
    pub recent_failures: u32,
    /// Failures since the client was made, probes included.
    pub total_failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// When down: the earliest time of the next probe.
    pub next_probe: Option<SystemTime>,
    /// A probe is under way.
    pub probing: bool,
    /// Connections in use now.
    pub connections_in_use: usize,
}

/// An ICAP client for one service on one or more servers. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    tls: Option<tokio_rustls::TlsConnector>,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "servers",
                &self
                    .inner
                    .endpoints
                    .iter()
                    .map(|e| e.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Client {
    /// A client for the service at `servers` (URIs like `icaps://dlp1.example:11344/reqmod`;
    /// the same service path on each).
    pub fn new<S: AsRef<str>>(servers: &[S], cfg: ClientConfig) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Config(Error::new(
                crate::ErrorKind::BadUri,
                0,
                "no ICAP server given",
            )));
        }
        let mut endpoints = Vec::new();
        let mut any_tls = false;
        for s in servers {
            let uri = IcapUri::parse(s.as_ref()).map_err(ClientError::Config)?;
            any_tls |= uri.is_tls();
            endpoints.push(Endpoint {
                uri,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(cfg.max_connections_per_server)),
                limit: AtomicUsize::new(cfg.max_connections_per_server),
                options: Mutex::new(None),
                health: Mutex::new(Health::new()),
            });
        }
        let tls = if any_tls {
            Some(tokio_rustls::TlsConnector::from(
                cfg.tls.build().map_err(ClientError::TlsConfig)?,
            ))
        } else {
            None
        };
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                tls,
                endpoints,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// The configured servers.
    pub fn servers(&self) -> Vec<IcapUri> {
        self.inner.endpoints.iter().map(|e| e.uri.clone()).collect()
    }

    /// Each server's health, in the configured order.
    pub fn health(&self) -> Vec<ServerHealth> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.report(&self.inner.cfg))
            .collect()
    }

    /// The connectivity test: OPTIONS on each server over a new connection, with the TLS
    /// version and round-trip time; one report per server, failures included. Like a probe,
    /// it marks a server that fails down (unless [`ClientConfig::failure_limit`] is 0) and
    /// brings one that answers back up; call it periodically as a health check.
    pub async fn test_connection(&self) -> Vec<ServerReport> {
        let mut out = Vec::new();
        for ep in &self.inner.endpoints {
            let start = Instant::now();
            let mut tls_version = None;
            let until = after(start, self.inner.cfg.transaction_timeout);
            let result = async {
                let conn = self.inner.connect(ep, until).await?;
                tls_version = conn.tls_version.clone();
                self.inner.fetch_options(ep, conn, until).await
            }
            .await;
            ep.options_result(&self.inner.cfg, &result);
            out.push(ServerReport {
                server: ep.uri.clone(),
                result,
                tls_version,
                round_trip: start.elapsed(),
            });
        }
        out
    }

    /// The service's options from the first server up that answers (cached per server),
    /// within [`ClientConfig::deadline`].
    pub async fn options(&self) -> Result<ServiceOptions, ClientError> {
        let cfg = &self.inner.cfg;
        let until = after(Instant::now(), cfg.deadline);
        let mut errors = Vec::new();
        for i in self.plan(until, false, &mut errors).await {
            let ep = &self.inner.endpoints[i];
            let now = Instant::now();
            if now >= until {
                break;
            }
            match self
                .inner
                .options(ep, until.min(after(now, cfg.transaction_timeout)))
                .await
            {
                Ok(o) => return Ok(o),
                Err(e) => {
                    if counts_against_server(&e) {
                        ep.failed(cfg, &e);
                    }
                    errors.push(e);
                }
            }
        }
        Err(ClientError::AllServersFailed(errors))
    }

    /// The servers a call may use, in the order to try them. Down servers are left out (with
    /// a [`ClientError::Down`] in `skipped`) unless their probe is due: then it runs in the
    /// background while others are up, or here, within `until`, when none is. `advance`
    /// moves the round robin on.
    async fn plan(
        &self,
        until: Instant,
        advance: bool,
        skipped: &mut Vec<ClientError>,
    ) -> Vec<usize> {
        let order = self.inner.order(advance);
        let mut up = Vec::new();
        let mut down = Vec::new();
        for i in order {
            if self.inner.endpoints[i].is_down() {
                down.push(i);
            } else {
                up.push(i);
            }
        }
        for &i in &down {
            let ep = &self.inner.endpoints[i];
            if up.is_empty() {
                if ep.claim_probe() {
                    let _claim = ProbeClaim(ep);
                    let probe_until =
                        until.min(after(Instant::now(), self.inner.cfg.transaction_timeout));
                    self.inner.probe(ep, probe_until).await;
                    if !ep.is_down() {
                        up.push(i);
                        continue;
                    }
                }
            } else if ep.claim_probe() {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    let ep = &inner.endpoints[i];
                    let _claim = ProbeClaim(ep);
                    let until = after(Instant::now(), inner.cfg.transaction_timeout);
                    inner.probe(ep, until).await;
                });
            }
            skipped.push(ep.down_error());
        }
        up
    }

    /// Sends a request made by `build` for the chosen server (so `Host` and the URI match
    /// it) with `body`, failing over to the next server as configured, and returns the
    /// final answer, all within [`ClientConfig::deadline`]. `build` receives the server URI
    /// and the preview size to announce (from the server's OPTIONS and the configured
    /// policy).
    pub async fn send(
        &self,
        build: impl Fn(&IcapUri, Option<u64>) -> Result<Request, Error>,
        body: &BodySource,
        file_name: Option<&str>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<Exchange, ClientError> {
        let until = after(Instant::now(), self.inner.cfg.deadline);
        let call = Call {
            body,
            file_name,
            skip_ignored: false,
            progress,
            until,
        };
        self.send_inner(&build, &call, None)
            .await
            .map(Sent::exchange)
    }

    /// Like [`Client::send`], writing the returned body to `sink` as it arrives (a modified
    /// file of any size, in bounded memory); [`Exchange::body`] still keeps its start. Once
    /// bytes have gone to the sink, a failure is not retried on another server.
    pub async fn send_to(
        &self,
        build: impl Fn(&IcapUri, Option<u64>) -> Result<Request, Error>,
        body: &BodySource,
        file_name: Option<&str>,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Exchange, ClientError> {
        let until = after(Instant::now(), self.inner.cfg.deadline);
        let call = Call {
            body,
            file_name,
            skip_ignored: false,
            progress,
            until,
        };
        self.send_inner(&build, &call, Some(sink))
            .await
            .map(Sent::exchange)
    }

    /// The attempts of one call: servers in the planned order, then round again while
    /// retries are left, skipping servers that went down or timed out meanwhile. Failures
    /// before any answer byte reached the caller are retried (a sink that got bytes, or a
    /// one-shot reader body, end it).
    async fn send_inner<'o>(
        &self,
        build: &impl Fn(&IcapUri, Option<u64>) -> Result<Request, Error>,
        call: &Call<'_>,
        mut sink: Option<&mut (dyn AsyncWrite + Unpin + Send + 'o)>,
    ) -> Result<Sent, ClientError> {
        let cfg = &self.inner.cfg;
        let mut errors = Vec::new();
        let mut skipped = Vec::new();
        let plan = self.plan(call.until, true, &mut skipped).await;
        let mut spent = vec![false; self.inner.endpoints.len()];
        let mut sunk = 0u64;
        let mut attempts = 0;
        let attempts_allowed = cfg.retries.saturating_add(1);
        let mut turn = plan
            .iter()
            .cycle()
            .take(plan.len().saturating_mul(attempts_allowed));
        while attempts < attempts_allowed {
            if attempts > 0 && (!call.body.retryable() || sunk > 0) {
                break;
            }
            let Some(&i) = turn.find(|&&i| !spent[i] && !self.inner.endpoints[i].is_down()) else {
                break;
            };
            let ep = &self.inner.endpoints[i];
            let now = Instant::now();
            if now >= call.until {
                errors.push(ClientError::Timeout {
                    server: ep.name(),
                    phase: "the call (deadline passed before trying this server)",
                });
                break;
            }
            attempts += 1;
            let until = call.until.min(after(now, cfg.transaction_timeout));
            match self
                .inner
                .attempt(ep, build, call, until, sink.as_deref_mut(), &mut sunk)
                .await
            {
                Ok(x) => return Ok(x),
                Err(e) => {
                    if counts_against_server(&e) {
                        ep.failed(cfg, &e);
                    }
                    if !retryable(&e) {
                        return Err(e);
                    }
                    // A server that did not answer in time, or answered without end, will
                    // not do better now: the rest of the deadline is for the others.
                    if matches!(
                        e,
                        ClientError::Timeout { .. } | ClientError::AnswerTooLarge { .. }
                    ) {
                        spent[i] = true;
                    }
                    errors.push(e);
                }
            }
        }
        errors.extend(skipped);
        if errors.is_empty() {
            // Every planned server went down (other calls' failures) before its turn.
            errors.extend(plan.iter().map(|&i| self.inner.endpoints[i].down_error()));
        }
        if errors.len() == 1 {
            Err(errors.pop().expect("one error"))
        } else {
            Err(ClientError::AllServersFailed(errors))
        }
    }

    /// Scans a file: wraps it as the body of an HTTP upload (REQMOD) or download (RESPMOD),
    /// sends it with preview and `Allow: 204` as the server's options say, and draws the
    /// verdict by the rules of `req.profile`, all within [`ClientConfig::deadline`].
    pub async fn scan(&self, req: ScanRequest) -> Result<ScanOutcome, ClientError> {
        match self.scan_inner(&req).await {
            Ok(o) => Ok(o),
            Err(e) if self.inner.cfg.fail_open => Ok(ScanOutcome {
                verdict: Verdict::Allowed {
                    reason: format!("fail-open after error: {e}"),
                },
                exchange: None,
                error: Some(e.to_string()),
            }),
            Err(e) => Err(e),
        }
    }

    async fn scan_inner(&self, req: &ScanRequest) -> Result<ScanOutcome, ClientError> {
        let until = after(Instant::now(), self.inner.cfg.deadline);
        let len = req.body.len().await.map_err(ClientError::Body)?;
        let (http_req, http_res) = embedded_heads(req, len);
        let sent_head = match req.mode {
            Mode::Reqmod => canonical(&http_req.line(), &http_req.headers),
            Mode::Respmod => {
                let r = http_res.as_ref().expect("RESPMOD has a response head");
                canonical(&r.line(), &r.headers)
            }
        };
        let build = |uri: &IcapUri, preview: Option<u64>| -> Result<Request, Error> {
            let mut b: RequestBuilder = match req.mode {
                Mode::Reqmod => Request::reqmod(uri).http_request(http_req.clone()),
                Mode::Respmod => Request::respmod(uri)
                    .http_request(http_req.clone())
                    .http_response(http_res.clone().expect("RESPMOD has a response head")),
            };
            b = b.user_agent(&self.inner.cfg.user_agent).with_body();
            if self.inner.cfg.allow_204 {
                b = b.allow_204();
            }
            if let Some(p) = preview {
                b = b.preview(p);
            }
            if let Some(ip) = req.client_ip {
                b = b.client_ip(ip);
            }
            if let Some(ip) = req.server_ip {
                b = b.server_ip(ip);
            }
            if let Some(u) = &req.user {
                b = b.authenticated_user(u);
            }
            for (n, v) in &req.headers {
                b = b.header(n, v);
            }
            b.build().map_err(Error::from)
        };
        let call = Call {
            body: &req.body,
            file_name: Some(&req.file_name),
            skip_ignored: true,
            progress: req.progress.as_deref(),
            until,
        };
        let x = match self.send_inner(&build, &call, None).await? {
            Sent::Answered(x) => *x,
            Sent::Ignored => {
                return Ok(ScanOutcome {
                    verdict: Verdict::Allowed {
                        reason: format!(
                            "not sent: the service's Transfer-Ignore covers {}",
                            req.file_name
                        ),
                    },
                    exchange: None,
                    error: None,
                })
            }
        };
        let method = match req.mode {
            Mode::Reqmod => Method::Reqmod,
            Mode::Respmod => Method::Respmod,
        };
        let answer = Answer {
            method: &method,
            response: &x.response,
            sent_body: x.sent_digest,
            returned_body: x.body_digest,
            body_prefix: &x.body,
            sent_head: Some(sent_head),
        };
        let verdict = judge(&req.profile.rules(), &answer);
        Ok(ScanOutcome {
            verdict,
            exchange: Some(x),
            error: None,
        })
    }
}

/// The HTTP heads a file travels in: an upload for REQMOD, a download for RESPMOD.
fn embedded_heads(
    req: &ScanRequest,
    len: Option<u64>,
) -> (crate::HttpRequestHead, Option<crate::HttpResponseHead>) {
    let safe: String = req
        .file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("file")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let len_s = len.map(|n| n.to_string());
    match req.mode {
        Mode::Reqmod => {
            let url = req
                .url
                .clone()
                .unwrap_or_else(|| format!("http://upload.icap.invalid/{safe}"));
            let host = host_of(&url);
            let mut h: crate::Headers = [
                ("Host", host.as_str()),
                ("Content-Type", req.content_type.as_str()),
            ]
            .into_iter()
            .collect();
            h.append(
                "Content-Disposition",
                format!("attachment; filename=\"{safe}\""),
            );
            if let Some(n) = &len_s {
                h.append("Content-Length", n);
            }
            (crate::HttpRequestHead::new("POST", &url, h), None)
        }
        Mode::Respmod => {
            let url = req
                .url
                .clone()
                .unwrap_or_else(|| format!("http://download.icap.invalid/{safe}"));
            let host = host_of(&url);
            let reqh = crate::HttpRequestHead::new(
                "GET",
                &url,
                [("Host", host.as_str())].into_iter().collect(),
            );
            let mut h: crate::Headers = [("Content-Type", req.content_type.as_str())]
                .into_iter()
                .collect();
            h.append(
                "Content-Disposition",
                format!("attachment; filename=\"{safe}\""),
            );
            if let Some(n) = &len_s {
                h.append("Content-Length", n);
            }
            (reqh, Some(crate::HttpResponseHead::new(200, "OK", h)))
        }
    }
}

fn host_of(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or("localhost")
        .to_string()
}

/// `d` after `now`; a duration too long for the clock (`Duration::MAX` as "no limit")
/// means a century.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// What one call carries to each of its attempts.
struct Call<'a> {
    body: &'a BodySource,
    /// For the `Transfer-*` rules.
    file_name: Option<&'a str>,
    /// A scan: files the service's `Transfer-Ignore` covers are not sent.
    skip_ignored: bool,
    progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
    /// The call's deadline.
    until: Instant,
}

/// How an attempt ended well.
enum Sent {
    Answered(Box<Exchange>),
    /// Not sent: the server's `Transfer-Ignore` covers the file.
    Ignored,
}

impl Sent {
    fn exchange(self) -> Exchange {
        match self {
            Sent::Answered(x) => *x,
            Sent::Ignored => unreachable!("only scans skip ignored files"),
        }
    }
}

/// Errors worth trying on another server (or again): the server or the path to it failed,
/// not the request. A server that breaks the protocol may be broken or hostile; its partner
/// may well answer.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. }
        | ClientError::Timeout { .. }
        | ClientError::Io { .. }
        | ClientError::Tls { .. }
        | ClientError::Protocol { .. }
        | ClientError::AnswerTooLarge { .. } => true,
        ClientError::Status { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Failures that count towards marking the server down: the same as the retryable ones
/// (a 4xx, a bad configuration or our own unreadable body are no fault of the server).
fn counts_against_server(e: &ClientError) -> bool {
    retryable(e)
}

/// Maps an I/O error to a TLS failure when rustls is behind it.
fn tls_failure(e: &io::Error, had_identity: bool) -> Option<(TlsFailure, String)> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let f = match inner {
        R::InvalidCertificate(C::UnknownIssuer) | R::InvalidCertificate(C::BadSignature) => {
            TlsFailure::UntrustedServer
        }
        R::InvalidCertificate(C::ApplicationVerificationFailure) => TlsFailure::PinMismatch,
        R::InvalidCertificate(C::Expired)
        | R::InvalidCertificate(C::NotValidYet)
        | R::InvalidCertificate(C::ExpiredContext { .. })
        | R::InvalidCertificate(C::NotValidYetContext { .. }) => TlsFailure::Expired,
        R::InvalidCertificate(C::NotValidForName)
        | R::InvalidCertificate(C::NotValidForNameContext { .. }) => TlsFailure::NameMismatch,
        R::AlertReceived(A::CertificateRequired) => TlsFailure::CertificateRequired,
        R::AlertReceived(A::HandshakeFailure) if !had_identity => TlsFailure::CertificateRequired,
        R::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::AccessDenied,
        ) if had_identity => TlsFailure::ClientCertificateRejected,
        R::AlertReceived(A::ProtocolVersion) | R::PeerIncompatible(_) => {
            TlsFailure::ProtocolVersion
        }
        _ => TlsFailure::Handshake,
    };
    Some((f, inner.to_string()))
}

impl Inner {
    /// Indices of the servers in the order to try, by the balance policy, those that failed
    /// lately last. `advance` moves the round robin on by one.
    fn order(&self, advance: bool) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = if advance {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        } % n;
        let mut v: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if self.cfg.balance == Balance::LeastLoaded {
            v.sort_by_key(|&i| self.endpoints[i].in_use());
        }
        // Stable: avoided servers go last but are still tried when nothing else is left.
        v.sort_by_key(|&i| self.endpoints[i].avoided());
        v
    }

    /// OPTIONS on a new connection to a down server; the answer decides whether it is back.
    async fn probe(&self, ep: &Endpoint, until: Instant) {
        let r = async {
            let conn = self.connect(ep, until).await?;
            self.fetch_options(ep, conn, until).await
        }
        .await;
        ep.options_result(&self.cfg, &r);
    }

    async fn connect(&self, ep: &Endpoint, until: Instant) -> Result<Conn, ClientError> {
        let server = ep.name();
        let permit = timeout_at(until.into(), ep.permits.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout {
                server: server.clone(),
                phase: "waiting for a connection slot (Max-Connections)",
            })?
            .expect("semaphore never closed");
        let addr = (ep.uri.host().trim_matches(['[', ']']), ep.uri.port());
        let connect_until = until.min(after(Instant::now(), self.cfg.connect_timeout));
        let tcp = match timeout_at(connect_until.into(), TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    server,
                    phase: "connect",
                })
            }
            Ok(Err(e)) => return Err(ClientError::Connect { server, source: e }),
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        let (io, tls_version): (Box<dyn Io>, _) = if ep.uri.is_tls() {
            let connector = self
                .tls
                .as_ref()
                .expect("TLS is set up when an icaps server exists");
            let host = ep.uri.host().trim_matches(['[', ']']).to_string();
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| {
                ClientError::Config(Error::new(crate::ErrorKind::BadUri, 0, e.to_string()))
            })?;
            let tls_until = until.min(after(Instant::now(), self.cfg.tls_timeout));
            let tls = match timeout_at(tls_until.into(), connector.connect(name, tcp)).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        server,
                        phase: "TLS handshake",
                    })
                }
                Ok(Err(e)) => return Err(self.io_error(&server, e)),
                Ok(Ok(t)) => t,
            };
            let v = tls.get_ref().1.protocol_version().map(|v| format!("{v:?}"));
            (Box::new(tls), v)
        } else {
            (Box::new(tcp), None)
        };
        Ok(Conn {
            io,
            decoder: ResponseDecoder::new(self.cfg.limits),
            tls_version,
            _permit: permit,
            idle_since: Instant::now(),
        })
    }

    fn io_error(&self, server: &str, e: io::Error) -> ClientError {
        match tls_failure(&e, self.cfg.tls.identity.is_some()) {
            Some((failure, message)) => ClientError::Tls {
                server: server.to_string(),
                failure,
                message,
            },
            None if e.kind() == io::ErrorKind::UnexpectedEof => ClientError::Io {
                server: server.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed (during a TLS handshake this often means the server refused the client certificate)",
                ),
            },
            None => ClientError::Io {
                server: server.to_string(),
                source: e,
            },
        }
    }

    /// A pooled connection when one is fresh, else a new one.
    async fn checkout(&self, ep: &Endpoint, until: Instant) -> Result<(Conn, bool), ClientError> {
        loop {
            let c = ep.idle.lock().expect("not poisoned").pop();
            match c {
                Some(c)
                    if c.idle_since.elapsed() < self.cfg.idle_timeout && c.decoder.is_idle() =>
                {
                    return Ok((c, true))
                }
                Some(_) => continue,
                None => return Ok((self.connect(ep, until).await?, false)),
            }
        }
    }

    fn checkin(&self, ep: &Endpoint, mut c: Conn) {
        c.idle_since = Instant::now();
        ep.idle.lock().expect("not poisoned").push(c);
    }

    async fn options(&self, ep: &Endpoint, until: Instant) -> Result<ServiceOptions, ClientError> {
        {
            let cached = ep.options.lock().expect("not poisoned");
            if let Some(c) = cached.as_ref() {
                let fresh = c
                    .options
                    .options_ttl
                    .is_none_or(|ttl| c.fetched.elapsed() < Duration::from_secs(ttl));
                if fresh {
                    return Ok(c.options.clone());
                }
            }
        }
        let (conn, _) = self.checkout(ep, until).await?;
        self.fetch_options(ep, conn, until).await
    }

    async fn fetch_options(
        &self,
        ep: &Endpoint,
        conn: Conn,
        until: Instant,
    ) -> Result<ServiceOptions, ClientError> {
        let server = ep.name();
        let req = Request::options(&ep.uri)
            .user_agent(&self.cfg.user_agent)
            .build()
            .map_err(ClientError::Build)?;
        let (x, conn) = self
            .run(
                ep,
                conn,
                &req,
                None,
                RequestBody::None,
                None,
                None,
                &mut 0,
                until,
            )
            .await
            .map_err(|(e, _)| e)?;
        if let Some(c) = conn {
            self.checkin(ep, c);
        }
        if x.response.status != 200 {
            return Err(ClientError::Status {
                server,
                status: x.response.status,
                reason: String::from_utf8_lossy(&x.response.reason).into_owned(),
            });
        }
        let opts = ServiceOptions::from_response(&x.response)
            .map_err(|e| ClientError::Protocol { server, source: e })?;
        if let Some(max) = opts.max_connections {
            // Lower the limit to what the server accepts (never raise it above the config).
            let max = (max as usize).max(1);
            let cur = ep.limit.load(Ordering::Relaxed);
            if max < cur {
                let gone = ep.permits.forget_permits(cur - max);
                ep.limit.fetch_sub(gone, Ordering::Relaxed);
            }
        }
        *ep.options.lock().expect("not poisoned") = Some(CachedOptions {
            options: opts.clone(),
            fetched: Instant::now(),
        });
        Ok(opts)
    }

    /// One attempt on one server, within `until`, with one retry on a fresh connection when
    /// a pooled one turns out to have been closed by the server.
    async fn attempt<'o>(
        &self,
        ep: &Endpoint,
        build: &impl Fn(&IcapUri, Option<u64>) -> Result<Request, Error>,
        call: &Call<'_>,
        until: Instant,
        mut sink: Option<&mut (dyn AsyncWrite + Unpin + Send + 'o)>,
        sunk: &mut u64,
    ) -> Result<Sent, ClientError> {
        let Call {
            body,
            file_name,
            progress,
            ..
        } = *call;
        let len = body.len().await.map_err(ClientError::Body)?;
        let has_body = !matches!(body, BodySource::None);
        let needs_options = has_body && self.cfg.preview == PreviewPolicy::FromOptions;
        let opts = if needs_options || call.skip_ignored {
            match self.options(ep, until).await {
                Ok(o) => Some(o),
                // Only Transfer-Ignore asked: a server that refuses OPTIONS may still scan.
                Err(ClientError::Status { .. }) if !needs_options => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if let (Some(o), Some(f), true) = (&opts, file_name, call.skip_ignored) {
            if o.transfer_for(f) == Transfer::Ignore {
                return Ok(Sent::Ignored);
            }
        }
        let preview = if has_body {
            match self.cfg.preview {
                PreviewPolicy::Off => None,
                PreviewPolicy::Fixed(n) => Some(len.map_or(n, |l| l.min(n))),
                PreviewPolicy::FromOptions => {
                    let opts = opts.expect("options fetched for the preview");
                    let wants = file_name.map_or(Transfer::Preview, |f| opts.transfer_for(f));
                    if wants == Transfer::Preview
                        || opts.transfer_preview.is_empty() && opts.preview.is_some()
                    {
                        opts.preview_for(len)
                    } else {
                        None
                    }
                }
            }
        } else {
            None
        };
        let req = build(&ep.uri, preview).map_err(ClientError::Config)?;
        let rb = match (has_body, len) {
            (false, _) => RequestBody::None,
            (true, Some(n)) => RequestBody::Known(n),
            (true, None) => RequestBody::Unknown,
        };
        for fresh_retry in [false, true] {
            let (conn, reused) = if fresh_retry {
                (self.connect(ep, until).await?, false)
            } else {
                self.checkout(ep, until).await?
            };
            let reader = body.open().await.map_err(ClientError::Body)?;
            match self
                .run(
                    ep,
                    conn,
                    &req,
                    reader,
                    rb,
                    progress,
                    sink.as_deref_mut(),
                    sunk,
                    until,
                )
                .await
            {
                Ok((x, conn)) => {
                    if let Some(c) = conn {
                        self.checkin(ep, c);
                    }
                    // A changed ISTag means the service changed: its options are stale.
                    if let Some(tag) = x.response.headers.get_str("ISTag") {
                        let mut cached = ep.options.lock().expect("not poisoned");
                        if cached.as_ref().is_some_and(|c| c.options.istag != tag) {
                            *cached = None;
                        }
                    }
                    if x.response.status >= 400 {
                        return Err(ClientError::Status {
                            server: ep.name(),
                            status: x.response.status,
                            reason: String::from_utf8_lossy(&x.response.reason).into_owned(),
                        });
                    }
                    return Ok(Sent::Answered(Box::new(x)));
                }
                Err((e, nothing_received)) => {
                    let stale = reused
                        && nothing_received
                        && *sunk == 0
                        && matches!(e, ClientError::Io { .. } | ClientError::Protocol { .. })
                        && body.retryable();
                    if !stale {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the fresh retry returns")
    }

    /// Runs one transaction on `conn`. On success returns the connection when it can be
    /// reused. On failure, says whether no byte of an answer had arrived (a stale pooled
    /// connection).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    async fn run<'o>(
        &self,
        ep: &Endpoint,
        conn: Conn,
        req: &Request,
        mut reader: Option<Box<dyn AsyncRead + Send + Unpin>>,
        rb: RequestBody,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        mut sink: Option<&mut (dyn AsyncWrite + Unpin + Send + 'o)>,
        sunk: &mut u64,
        until: Instant,
    ) -> Result<(Exchange, Option<Conn>), (ClientError, bool)> {
        let server = ep.name();
        let Conn {
            io,
            decoder,
            tls_version,
            _permit,
            ..
        } = conn;
        let mut tx =
            ClientTransaction::new(req, rb, decoder).map_err(|e| (ClientError::Config(e), true))?;
        let (mut rd, mut wr) = tokio::io::split(io);
        let start = Instant::now();
        let mut sent = BodyHash::default();
        let mut got = BodyHash::default();
        let mut got_any_body = false;
        let mut kept = BytesMut::new();
        let mut final_res: Option<Response> = None;
        let mut use_original = None;
        let mut received = 0u64;
        let mut truncated = false;
        let keep_body = self.cfg.keep_body;
        let max_answer = self.cfg.max_answer;
        let had_identity = self.cfg.tls.identity.is_some();
        let io_err = |e: io::Error| match tls_failure(&e, had_identity) {
            Some((failure, message)) => ClientError::Tls {
                server: server.clone(),
                failure,
                message,
            },
            None => ClientError::Io {
                server: server.clone(),
                source: e,
            },
        };
        let proto = |e: Error| ClientError::Protocol {
            server: server.clone(),
            source: e,
        };
        // Only a body that is not the announced length makes these fail: the file changed
        // while it was sent, no fault of the server.
        let body_changed =
            |e: Error| ClientError::Body(io::Error::new(io::ErrorKind::InvalidData, e));

        let work = async {
            // What is to be written, drained with vectored writes: a small request (head,
            // body, last chunk) goes out in one write, a large one in ~64 KiB writes.
            let mut wq: VecDeque<Bytes> = VecDeque::new();
            let mut wq_len = 0usize;
            let mut write_failed = false;
            let mut source_done = reader.is_none();
            let mut body_sent = 0u64;
            loop {
                // Answers first: they may stop the sending.
                while let Some(ev) = tx.poll_event().map_err(|e| (proto(e), received == 0))? {
                    match ev {
                        ClientEvent::Continue => {}
                        ClientEvent::Unmodified(r) | ClientEvent::Response(r) => {
                            final_res = Some(r)
                        }
                        ClientEvent::Data(d) => {
                            got_any_body = true;
                            got.update(&d);
                            if let Some(w) = sink.as_deref_mut() {
                                w.write_all(&d)
                                    .await
                                    .map_err(|e| (ClientError::Body(e), false))?;
                                *sunk += d.len() as u64;
                            }
                            let n = keep_body.saturating_sub(kept.len()).min(d.len());
                            kept.extend_from_slice(&d[..n]);
                            truncated |= n < d.len();
                        }
                        ClientEvent::End(last) => {
                            use_original = last.use_original_body;
                            return Ok(write_failed);
                        }
                    }
                }
                if !write_failed {
                    while let Some(b) = tx.outgoing().pop_front() {
                        wq_len += b.len();
                        wq.push_back(b);
                    }
                    // Body is read while less than a chunk waits, so at most ~128 KiB do.
                    if wq_len < WRITE_BATCH && tx.wants_body() && !source_done {
                        let r = reader
                            .as_mut()
                            .expect("a body source when a body is wanted");
                        let mut chunk = BytesMut::with_capacity(WRITE_BATCH);
                        let n = r
                            .read_buf(&mut chunk)
                            .await
                            .map_err(|e| (ClientError::Body(e), received == 0))?;
                        if n == 0 {
                            source_done = true;
                            tx.end_body()
                                .map_err(|e| (body_changed(e), received == 0))?;
                        } else {
                            body_sent += n as u64;
                            sent.update(&chunk);
                            tx.send_body(chunk.freeze())
                                .map_err(|e| (body_changed(e), received == 0))?;
                            if let Some(p) = progress {
                                p(body_sent);
                            }
                        }
                        continue;
                    }
                    if wq.is_empty() {
                        // Everything queued is written: push it out before waiting.
                        wr.flush().await.map_err(|e| (io_err(e), received == 0))?;
                    }
                }
                let buf = tx.decoder_mut().buffer_mut();
                buf.reserve(64 * 1024);
                tokio::select! {
                    r = rd.read_buf(buf) => {
                        match r {
                            Ok(0) => {
                                tx.on_eof().map_err(|e| (proto(e), received == 0))?;
                            }
                            Ok(n) => {
                                received += n as u64;
                                // Relative to what was sent, so an echo of any file fits.
                                let limit = max_answer.saturating_add(body_sent);
                                if received > limit {
                                    let e = ClientError::AnswerTooLarge {
                                        server: server.clone(),
                                        limit,
                                        read: received,
                                    };
                                    return Err((e, false));
                                }
                            }
                            Err(e) => return Err((io_err(e), received == 0)),
                        }
                    }
                    w = async {
                        let slices: Vec<io::IoSlice<'_>> =
                            wq.iter().take(64).map(|b| io::IoSlice::new(b)).collect();
                        wr.write_vectored(&slices).await
                    }, if !wq.is_empty() => {
                        match w {
                            Ok(mut n) => {
                                wq_len -= n;
                                while n > 0 {
                                    let b = wq.front_mut().expect("written bytes were queued");
                                    if b.len() <= n {
                                        n -= b.len();
                                        wq.pop_front();
                                    } else {
                                        b.advance(n);
                                        n = 0;
                                    }
                                }
                            }
                            // The server may have answered and closed (c-icap does after a
                            // 404): stop writing, keep reading its answer.
                            Err(_) => {
                                write_failed = true;
                                wq.clear();
                                wq_len = 0;
                            }
                        }
                    }
                }
            }
        };
        let write_failed = match timeout_at(until.into(), work).await {
            Err(_) => {
                return Err((
                    ClientError::Timeout {
                        server: server.clone(),
                        phase: "transaction",
                    },
                    false,
                ))
            }
            Ok(r) => r?,
        };
        let response = final_res.expect("an End follows a final response");
        let reuse = tx.reuse() == Reuse::Keep && !write_failed;
        let decoder = tx.into_decoder();
        let conn = reuse.then(|| Conn {
            io: rd.unsplit(wr),
            decoder,
            tls_version: tls_version.clone(),
            _permit,
            idle_since: Instant::now(),
        });
        let sent_digest = (!matches!(rb, RequestBody::None)).then(|| sent.finish());
        Ok((
            Exchange {
                server: ep.uri.clone(),
                body_digest: (got_any_body || response.body.is_some()).then(|| got.finish()),
                response,
                body: kept.freeze(),
                body_truncated: truncated,
                use_original_body: use_original,
                sent_digest,
                tls_version,
                elapsed: start.elapsed(),
            },
            conn,
        ))
    }
}
