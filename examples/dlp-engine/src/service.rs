//! The example DLP service in blocking mode, shared by `examples/dlp-server.rs` (the binary),
//! `examples/dlp-scan.rs` (which starts it in-process on loopback) and the tests.
//!
//! ```text
//! use icap_dlp_engine::service::{self, DlpConfig, Profile};
//!
//! let cfg = DlpConfig::new(rules, Profile::Generic);           // or DlpConfig::clamd(clamd, ..)
//! let running = service::spawn_loopback(cfg, Some(&server_tls)).await?;
//! // icaps://localhost:{running.addr().port()}/reqmod ...
//! running.shutdown().await?;
//! ```
//!
//! Two services, `reqmod` and `respmod`, each offering its one method (as Symantec recommends:
//! one service per direction). Bodies go through an [`Engine`] as they arrive: the embedded
//! [`Scanner`] (memory per transaction is its fixed window) or clamd (streamed with
//! `INSTREAM`, or handed over as a file when small, see [`crate::clamd`]); plus the server's echo spool when the client did not
//! allow 204. Clean content gets [`Reply::unmodified`] (a 204, or a 200 echo where 204 is
//! not allowed); a finding gets a 200 carrying an HTTP response in place of the message,
//! shaped by the [`Profile`], whichever engine found it.
//!
//! With clamd, a transaction without a verdict is never answered as clean: while clamd is
//! down (its `PING` fails) transactions get 503 and OPTIONS too; a timeout, or an error of
//! clamd's own, gets 500; a body over clamd's `StreamMaxLength` is blocked (or let through,
//! see [`OverLimit`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use icap::builder::ErrorStatus;
use icap::server::{IncomingRequest, Reply, ReplyBody, Server, ServerConfig, Stats};
use icap::tls::ServerTls;
use icap::BoxError;
use icap::{Method, ServiceOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clamd::{Clamd, ClamdError, ClamdVerdict};
use crate::{icap_headers, Finding, FindingKind, Rules, Scanner, MAX_MATCH_LEN};

/// Preview size announced in OPTIONS: enough for file magic and most small uploads.
pub const PREVIEW: u64 = 4096;

/// Bodies larger than this (or of unknown length) are echoed while scanned when 204 is not
/// allowed (see [`DlpConfig::stream_over`]). squid 5.7 sends no more of a response body
/// than 64 KiB until the ICAP answer starts (65,400 bytes go through whole, 65,536 stall);
/// 56 KiB leaves room for its framing and keeps the block page (instead of a cut transfer)
/// for everything below.
pub const STREAM_OVER: u64 = 56 * 1024;

/// Forcepoint block pages are padded to more than this many bytes: browsers replace shorter
/// error pages by their own ("friendly" error pages), hiding the block notice.
pub const FORCEPOINT_MIN_PAGE: usize = 512;

/// How a block is signalled: each DLP vendor does it differently, and a client has to
/// recognise all of them (`/work/shared/notes/peer-behaviour.md`, last section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Symantec DLP Network Prevent ("Vontu"): ICAP 200 carrying an `HTTP/1.1 200 OK`
    /// response with block text, even for REQMOD; no vendor headers. A client that only
    /// looks at HTTP status codes calls this allowed.
    Symantec,
    /// Forcepoint DLP protector: an HTTP 403 block page longer than
    /// [`FORCEPOINT_MIN_PAGE`] bytes; no vendor headers.
    Forcepoint,
    /// c-icap / antivirus style: HTTP 403 page plus `X-Violations-Found`, and
    /// `X-Infection-Found` when the EICAR string was found.
    Generic,
}

impl Profile {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Symantec => "symantec",
            Profile::Forcepoint => "forcepoint",
            Profile::Generic => "generic",
        }
    }

    /// The ISTag this profile announces (vendors' tags look like this one).
    fn istag(self) -> &'static str {
        match self {
            Profile::Symantec => "\"Vontu14.0-icap\"",
            Profile::Forcepoint => "\"FP-DLP-icap-1\"",
            Profile::Generic => "\"icap-dlp-1\"",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "symantec" | "vontu" => Ok(Profile::Symantec),
            "forcepoint" => Ok(Profile::Forcepoint),
            "generic" => Ok(Profile::Generic),
            other => Err(format!(
                "unknown profile {other:?} (expected symantec, forcepoint or generic)"
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes a streamed echo holds back from the client while clamd has not answered: the
/// end of a body is passed on only with a clean verdict (see [`DlpConfig::holdback`]).
/// squid 5.7 lets go of the bytes it sent only once they come back in the echo, and holds
/// 64 KiB: holding back more stalls it (a 64 MiB download stopped after its headers with
/// 256 KiB); 32 KiB leaves room for its preview and framing.
pub const CLAMD_HOLDBACK: usize = 32 * 1024;

/// The name a block over clamd's `StreamMaxLength` reports (ClamAV's names for exceeded
/// limits start the same way).
pub const OVER_LIMIT_THREAT: &str = "Heuristics.Limits.Exceeded.StreamMaxLength";

/// What scans the bodies.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The embedded scanner with these rules (cards, SSNs, EICAR, keywords, regexes).
    Embedded(Arc<Rules>),
    /// ClamAV's daemon: its signatures, and its structured-data heuristics when clamd has
    /// `StructuredDataDetection yes`.
    Clamd(Arc<Clamd>),
}

/// What to do with a body over clamd's `StreamMaxLength` (which clamd refuses to scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Block it, as an unscanned file (the default: nothing unscanned passes).
    Block,
    /// Let it through unscanned (and say so on stderr).
    Allow,
}

impl std::str::FromStr for OverLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(OverLimit::Block),
            "allow" => Ok(OverLimit::Allow),
            other => Err(format!("{other:?}: expected block or allow")),
        }
    }
}

/// What the DLP service is configured with.
#[derive(Debug, Clone)]
pub struct DlpConfig {
    /// What scans the bodies.
    pub engine: Engine,
    /// How blocks are answered.
    pub profile: Profile,
    /// `Preview` announced in OPTIONS.
    pub preview: u64,
    /// Print one line per REQMOD/RESPMOD to stderr.
    pub verbose: bool,
    /// Server timeouts and limits.
    pub server: ServerConfig,
    /// Stream bodies larger than this (or of unknown length) when the client does not
    /// allow 204: the 200 echo starts at once and each piece goes back once scanned; a
    /// finding then cuts the answer (the client sees a failed transfer, not the file).
    /// For clients such as squid that send no more than 64 KiB until an answer starts.
    /// Default [`STREAM_OVER`]; `None`: always read the whole body, then answer (larger
    /// bodies from such clients then stall until the server's read timeout).
    pub stream_over: Option<u64>,
    /// Bytes a streamed echo keeps back until the engine has seen past them. The embedded
    /// scanner decides on each match a few bytes after it ends (its default is
    /// [`MAX_MATCH_LEN`] + 64); clamd decides only at the end of the body, so with clamd
    /// the last [`CLAMD_HOLDBACK`] bytes (by default) are sent only on a clean verdict, and
    /// a late finding cuts the transfer short of them. Held in memory, per transaction.
    pub holdback: usize,
    /// Bodies over clamd's `StreamMaxLength` (ignored by the embedded engine).
    pub over_limit: OverLimit,
}

impl DlpConfig {
    /// The embedded engine with `rules`: default preview, quiet, default server settings,
    /// bodies over [`STREAM_OVER`] streamed.
    pub fn new(rules: Rules, profile: Profile) -> Self {
        DlpConfig {
            engine: Engine::Embedded(Arc::new(rules)),
            profile,
            preview: PREVIEW,
            verbose: false,
            server: ServerConfig::default(),
            stream_over: Some(STREAM_OVER),
            holdback: MAX_MATCH_LEN + 64,
            over_limit: OverLimit::Block,
        }
    }

    /// clamd as the engine, with the same defaults, but [`CLAMD_HOLDBACK`].
    pub fn clamd(clamd: Arc<Clamd>, profile: Profile) -> Self {
        DlpConfig {
            engine: Engine::Clamd(clamd),
            holdback: CLAMD_HOLDBACK,
            ..DlpConfig::new(Rules::default(), profile)
        }
    }
}

/// The declared length of the encapsulated body (`Content-Length` of the HTTP message it
/// belongs to), when there is one.
fn declared_len(req: &IncomingRequest) -> Option<u64> {
    let headers = match req.method {
        Method::Reqmod => &req.http_request.as_ref()?.headers,
        _ => &req.http_response.as_ref()?.headers,
    };
    headers.get_str("Content-Length")?.trim().parse().ok()
}

/// Counters shared by both services, for tests and the shutdown summary.
#[derive(Debug, Default)]
pub struct DlpStats {
    /// REQMOD/RESPMOD transactions whose body was scanned to its end.
    pub scanned: AtomicU64,
    /// Transactions answered with a block.
    pub blocked: AtomicU64,
    /// Body bytes scanned.
    pub bytes: AtomicU64,
    /// Transactions without a verdict (clamd down, timed out or in error): answered with an
    /// ICAP error.
    pub failed: AtomicU64,
}

/// One of the two services (`reqmod` or `respmod`).
struct DlpService {
    method: Method,
    cfg: DlpConfig,
    stats: Arc<DlpStats>,
}

impl DlpService {
    fn options(&self) -> ServiceOptions {
        ServiceOptions::new([self.method.clone()], self.cfg.profile.istag())
            .with_service(format!(
                "icap example DLP ({} profile, blocking mode, {} engine)",
                self.cfg.profile,
                match self.cfg.engine {
                    Engine::Embedded(_) => "embedded",
                    Engine::Clamd(_) => "clamd",
                }
            ))
            .with_service_id("dlp")
            // One scanner per connection, each small: no practical limit below the server's,
            // and a client is held to the per-address share.
            .with_max_connections(Some(
                self.cfg
                    .server
                    .max_connections
                    .min(self.cfg.server.max_connections_per_ip) as u64,
            ))
            .with_options_ttl(Some(3600))
            .with_allow_204(true)
            .with_preview(Some(self.cfg.preview))
            // Every file type is content-scanned: a preview of each, never Transfer-Ignore.
            .with_transfer_preview(["*"])
            // Who sent a file goes into the incident, as DLP appliances ask for it.
            .with_include(["X-Client-IP", "X-Client-Username", "X-Authenticated-User"])
    }

    /// True when the body is echoed while scanned (see [`DlpConfig::stream_over`]).
    fn streams(&self, req: &IncomingRequest) -> bool {
        match self.cfg.stream_over {
            Some(limit) if !req.allows_204() => declared_len(req).is_none_or(|n| n > limit),
            _ => false,
        }
    }

    /// Scans the body; a verdict needs the whole of it (a card number may sit in its last
    /// bytes), so every read past the preview is wanted (the server sends 100 Continue).
    async fn handle(self: Arc<Self>, mut req: IncomingRequest) -> Result<Reply, BoxError> {
        // The request is lent to the scan, not moved in and back: it is large, and each
        // move is a copy of it.
        let (scanned, findings, total) = match &self.cfg.engine {
            Engine::Embedded(rules) => self.scan_embedded(rules, &mut req).await?,
            // Boxed: inline, clamd's exchange made this future (moved twice on each call)
            // about 4 KiB for the embedded scanner too.
            Engine::Clamd(clamd) => match Box::pin(self.scan_clamd(clamd, &mut req)).await? {
                Ok(scan) => scan,
                Err(reply) => return Ok(reply),
            },
        };
        self.stats.scanned.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(scanned, Ordering::Relaxed);
        if self.cfg.verbose {
            log_line(&req, &file_name(&req), scanned, total, &findings);
        }
        if findings.is_empty() {
            return Ok(Reply::unmodified());
        }
        let name = file_name(&req);
        self.stats.blocked.fetch_add(1, Ordering::Relaxed);
        match block_reply(self.cfg.profile, &name, &findings, total) {
            Ok(r) => Ok(r),
            // Only reachable through a bug in the page builder; the server answers 500, still
            // a "not allowed" to any sane client, never a silent pass.
            Err(e) => Err(format!("cannot build the block answer: {e}").into()),
        }
    }

    /// The embedded scanner over the body: bytes scanned, findings, their total.
    async fn scan_embedded(
        &self,
        rules: &Rules,
        req: &mut IncomingRequest,
    ) -> Result<(u64, Vec<Finding>, u64), BoxError> {
        let mut scanner = Scanner::new(rules);
        let stream = self.streams(req);
        // Hold back what the scanner may still be deciding on: a match up to
        // MAX_MATCH_LEN long, confirmed by the bytes after it.
        let streaming = stream && req.body.start_echo(self.cfg.holdback).await.is_ok();
        // A body that cannot be read is answered by the server (400/408, or a close).
        while let Some(piece) = req.body.data().await? {
            scanner.feed(&piece);
            if streaming && !scanner.findings().is_empty() {
                // Found while echoing: stop; the server cuts the answer.
                break;
            }
        }
        let scanned = scanner.bytes_scanned();
        let (findings, total) = scanner.finish_with_total();
        Ok((scanned, findings, total))
    }

    /// clamd over the body, as it arrives (see [`Clamd::scan`]). `Ok(Err(reply))`: no
    /// verdict, and the error (or the over-limit policy's) answer to give instead.
    #[allow(clippy::type_complexity)]
    async fn scan_clamd(
        &self,
        clamd: &Arc<Clamd>,
        req: &mut IncomingRequest,
    ) -> Result<Result<(u64, Vec<Finding>, u64), Reply>, BoxError> {
        // Checked before anything is read or echoed: a dead engine gets the client a 503
        // at once (and squid's bypass or failover a reason), never a 204.
        let mut scan = match clamd.scan().await {
            Ok(s) => s,
            Err(e) => return Ok(Err(self.no_verdict(req, e))),
        };
        let streaming = self.streams(req) && req.body.start_echo(self.cfg.holdback).await.is_ok();
        let fed = async {
            while let Some(piece) = req.body.data().await? {
                if let Err(e) = scan.feed(&piece).await {
                    return Ok::<_, BoxError>(Err(e));
                }
            }
            Ok(Ok(()))
        };
        let verdict = match fed.await? {
            Ok(()) => scan.finish().await,
            Err(e) => Err(e),
        };
        let scanned = req.body.bytes_read();
        let finding = match verdict {
            Ok(ClamdVerdict::Clean) => None,
            Ok(ClamdVerdict::Found(name)) => Some(clamd_finding(name)),
            Err(ClamdError::SizeLimit) if self.cfg.over_limit == OverLimit::Allow => {
                eprintln!(
                    "dlp-server: {} from {} {} bytes: over clamd's StreamMaxLength, \
                     let through unscanned (--clamd-over-limit allow)",
                    req.method,
                    req.peer,
                    req.body.bytes_read()
                );
                None
            }
            Err(ClamdError::SizeLimit) => Some(Finding {
                kind: FindingKind::Heuristic(OVER_LIMIT_THREAT.to_string()),
                offset: 0,
                summary: "over clamd's StreamMaxLength, not scanned".to_string(),
            }),
            Err(e) => {
                if streaming {
                    // The echo is under way: an error reply cuts it.
                    eprintln!("dlp-server: {} from {}: {e}", req.method, req.peer);
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e.to_string().into());
                }
                return Ok(Err(self.no_verdict(req, e)));
            }
        };
        let total = u64::from(finding.is_some());
        Ok(Ok((scanned, finding.into_iter().collect(), total)))
    }

    /// The answer when clamd gave no verdict (said on stderr whatever --verbose says:
    /// errors are loud): 503 while it is down, else 500.
    fn no_verdict(&self, req: &IncomingRequest, e: ClamdError) -> Reply {
        eprintln!("dlp-server: {} from {}: {e}", req.method, req.peer);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        match e {
            ClamdError::Unavailable(_) | ClamdError::Connect(_) | ClamdError::Io(_) => {
                Reply::error(ErrorStatus::ServiceOverloaded)
            }
            _ => Reply::error(ErrorStatus::ServerError),
        }
    }
}

/// A clamd finding as the profiles report it: its `Heuristics.Structured.*` data-leak
/// heuristics as violations, anything else as malware.
fn clamd_finding(name: String) -> Finding {
    let (kind, summary) = if name.starts_with("Heuristics.Structured.") {
        let what = if name.contains("CreditCard") {
            "payment card number"
        } else if name.contains("SSN") {
            "US social security number"
        } else {
            "structured data"
        };
        (FindingKind::Heuristic(name), format!("{what} (ClamAV)"))
    } else {
        (FindingKind::Virus(name), "malware (ClamAV)".to_string())
    };
    Finding {
        kind,
        offset: 0,
        summary,
    }
}

/// The file name reported in headers and pages: the last path segment of the HTTP request
/// target, else `body`.
fn file_name(req: &IncomingRequest) -> String {
    let target = req
        .http_request
        .as_ref()
        .map(|h| String::from_utf8_lossy(&h.target).into_owned())
        .unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or("");
    match path.rsplit('/').next() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "body".to_string(),
    }
}

fn log_line(req: &IncomingRequest, name: &str, bytes: u64, total: u64, findings: &[Finding]) {
    let client = req
        .headers
        .get_str("X-Client-IP")
        .map(|ip| format!(" client={ip}"))
        .unwrap_or_default();
    let verdict = if findings.is_empty() {
        "clean".to_string()
    } else {
        let kinds: Vec<&str> = findings.iter().map(|f| f.kind.threat_name()).collect();
        format!("BLOCK {total} finding(s): {}", kinds.join(","))
    };
    eprintln!(
        "dlp-server: {} from {}{client} {name} {bytes} bytes: {verdict}",
        req.method, req.peer
    );
}

/// Escapes text for an HTML page.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The block answer of `profile` for these findings (masked summaries only: the page must
/// not leak what it blocks).
fn block_reply(
    profile: Profile,
    name: &str,
    findings: &[Finding],
    total: u64,
) -> icap::Result<Reply> {
    let list: Vec<String> = findings
        .iter()
        .take(16)
        .map(|f| format!("{} ({})", f.summary, f.kind.threat_name()))
        .collect();
    let (status, reason, ctype, page) = match profile {
        Profile::Symantec => {
            // Vontu's block text; the HTTP status stays 200: the block is the fact that an
            // HTTP response replaced the message.
            let mut t = String::from("Content blocked due to policy violation\n");
            t.push_str(&format!("File: {name}\n{total} violation(s):\n"));
            for l in &list {
                t.push_str(&format!("  {l}\n"));
            }
            (200, "OK", "text/plain; charset=utf-8", t)
        }
        Profile::Forcepoint | Profile::Generic => {
            let items: String = list
                .iter()
                .map(|l| format!("<li>{}</li>\n", html_escape(l)))
                .collect();
            let mut p = format!(
                "<!DOCTYPE html>\n<html><head><title>Blocked by data loss prevention</title></head>\n\
                 <body><h1>Access blocked</h1>\n\
                 <p>The transfer of <b>{}</b> was blocked by the data loss prevention policy \
                 ({total} violation(s)).</p>\n<ul>\n{items}</ul>\n",
                html_escape(name)
            );
            if profile == Profile::Forcepoint {
                p.push_str(
                    "<p>Forcepoint DLP emulation: if you believe this is a mistake, contact \
                     your security administrator and quote the incident details above.</p>\n",
                );
                // Pad in a comment: browsers show their own page for short error bodies.
                while p.len() + "</body></html>\n".len() <= FORCEPOINT_MIN_PAGE {
                    p.push_str("<!-- padding for browsers that hide short error pages -->\n");
                }
            }
            p.push_str("</body></html>\n");
            (403, "Forbidden", "text/html; charset=utf-8", p)
        }
    };
    let page = Bytes::from(page);
    let len = page.len().to_string();
    let mut b = Reply::ok();
    if profile == Profile::Generic {
        // One line each: the builder refuses obs-fold (CR LF TAB) in values, and a receiver
        // sees the same value once it unfolds.
        for (n, v) in icap_headers(findings, name, false) {
            b = b.header(n, v);
        }
        if findings.iter().any(|f| !f.kind.is_infection()) {
            b = b.header("X-Blocked-Reason", "DLP policy violation");
        }
    }
    let res = b
        .http_response_parts(
            status,
            reason,
            [
                ("Content-Type", ctype),
                ("Content-Length", len.as_str()),
                ("Cache-Control", "no-store"),
            ],
        )
        .with_body()
        .build()?;
    Ok(Reply::Respond(res, ReplyBody::Full(page)))
}

/// The server with both services: `reqmod` and `respmod`, TLS when `tls` is given (client
/// certificates required when it has a client CA). Returns the counters both services share.
/// With clamd, OPTIONS answers 503 while it is down: keep its state fresh with
/// [`Clamd::spawn_health_check`].
pub fn dlp_server(
    cfg: &DlpConfig,
    tls: Option<&ServerTls>,
) -> Result<(Server, Arc<DlpStats>), icap::tls::TlsConfigError> {
    let stats = Arc::new(DlpStats::default());
    let mut server = Server::new(cfg.server.clone());
    for (path, method) in [("reqmod", Method::Reqmod), ("respmod", Method::Respmod)] {
        let svc = Arc::new(DlpService {
            method,
            cfg: cfg.clone(),
            stats: stats.clone(),
        });
        let options = svc.options();
        let handler = tower::service_fn(move |req| svc.clone().handle(req));
        server = server.route(path, options, handler);
        if let Engine::Clamd(clamd) = &cfg.engine {
            let clamd = clamd.clone();
            server = server.availability(path, move || clamd.is_up());
        }
    }
    if let Some(t) = tls {
        server = server.tls(t.build()?);
    }
    Ok((server, stats))
}

/// A DLP server running on a tokio task.
#[derive(Debug)]
pub struct Running {
    addrs: Vec<SocketAddr>,
    stats: Arc<DlpStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<Arc<Stats>>>>,
}

impl Running {
    /// The first bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every bound address.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The services' counters.
    pub fn stats(&self) -> &DlpStats {
        &self.stats
    }

    /// Stops accepting, lets transactions in flight finish, and returns the server counters.
    pub async fn shutdown(mut self) -> io::Result<Arc<Stats>> {
        let _ = self.stop.take().expect("stop sender present").send(());
        let task = self.task.take().expect("task present");
        task.await.map_err(io::Error::other)?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped without shutdown(): still stop it (gracefully, in the background).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `server` on `listeners` in a tokio task until [`Running::shutdown`] (or drop).
pub fn spawn(
    server: Server,
    stats: Arc<DlpStats>,
    listeners: Vec<TcpListener>,
) -> io::Result<Running> {
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no listener"));
    }
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_many(listeners, async {
        let _ = rx.await;
    }));
    Ok(Running {
        addrs,
        stats,
        stop: Some(tx),
        task: Some(task),
    })
}

/// Starts the DLP server on `127.0.0.1` on a free port (plain ICAP, or ICAPS with `tls`).
/// Must be called inside a tokio runtime, which then runs the server.
pub async fn spawn_loopback(cfg: DlpConfig, tls: Option<&ServerTls>) -> io::Result<Running> {
    let (server, stats) = dlp_server(&cfg, tls).map_err(io::Error::other)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn(server, stats, vec![listener])
}
