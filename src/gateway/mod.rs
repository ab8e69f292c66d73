//! An ICAP-aware relay: each transaction a client sends is forwarded to one of several plain
//! ICAP upstreams and its answer relayed back, both byte for byte.
//!
//! This module owns the forwarding of transactions between an already accepted client
//! stream (typically TLS, terminated by the caller; see `examples/icap-gateway.rs`) and
//! upstream ICAP servers: per-transaction balancing, keep-alive reuse of upstream
//! connections, health on squid's model (a failure limit marks an upstream down; after the
//! revival delay an `OPTIONS` probe may bring it back), failover of transactions nothing of
//! whose answer has been relayed yet, and `503` when no upstream can take a transaction.
//!
//! The codec is used only to find message boundaries (heads, chunk framing, preview and
//! `100 Continue`): the bytes relayed are the bytes read, never re-encoded, so an upstream
//! sees exactly what the client sent and the client exactly what the upstream answered.
//! Bodies stream through; memory per transaction is bounded by the read buffers and the
//! replay buffer kept for failover ([`GatewayConfig::replay_limit`]).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::proto::decode::{RequestDecoder, RequestEvent, ResponseDecoder, ResponseEvent};
use crate::proto::head::Method;
use crate::proto::limits::Limits;
use crate::uri::IcapUri;

/// Read size for both directions: large enough for bulk bodies, small enough to keep the
/// memory of many connections bounded.
const READ_CHUNK: usize = 64 * 1024;

/// The gateway's own answer when no upstream can take a transaction.
const UNAVAILABLE: &str = "ICAP/1.0 503 Service Unavailable\r\nISTag: \"icap-gateway\"\r\nEncapsulated: null-body=0\r\n\r\n";

/// How the gateway treats its upstreams. `#[non_exhaustive]`: start from `Default` and
/// use the setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Consecutive failures (transactions or probes) that mark an upstream down; 0 never
    /// marks one down (squid's `icap_service_failure_limit`).
    pub failure_limit: u32,
    /// How long a down upstream waits before an `OPTIONS` probe may revive it (squid's
    /// `icap_service_revival_delay`).
    pub revival_delay: Duration,
    /// Interval of the health probes run by [`Gateway::probe_forever`].
    pub probe_interval: Duration,
    /// Most time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Most time an upstream may stay silent while an answer is awaited or streams.
    pub upstream_timeout: Duration,
    /// Most time a client connection may stay idle between transactions, or silent inside
    /// one.
    pub client_timeout: Duration,
    /// Idle upstream connections kept per upstream for reuse.
    pub max_idle_per_upstream: usize,
    /// Request bytes kept so that a transaction can be replayed on another upstream when
    /// its upstream fails before answering; a larger request that fails gets a `503`.
    pub replay_limit: usize,
    /// Limits for the heads (bodies are relayed, so `max_body` is ignored).
    pub limits: Limits,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            failure_limit: 3,
            revival_delay: Duration::from_secs(30),
            probe_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(300),
            max_idle_per_upstream: 32,
            replay_limit: 1 << 20,
            limits: Limits::default(),
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl GatewayConfig {
            $($(#[$m])* pub fn $name(mut self, v: $ty) -> Self { self.$name = v; self })*
        }
    };
}

setters! {
    /// Sets [`GatewayConfig::failure_limit`].
    failure_limit: u32,
    /// Sets [`GatewayConfig::revival_delay`].
    revival_delay: Duration,
    /// Sets [`GatewayConfig::probe_interval`].
    probe_interval: Duration,
    /// Sets [`GatewayConfig::connect_timeout`].
    connect_timeout: Duration,
    /// Sets [`GatewayConfig::upstream_timeout`].
    upstream_timeout: Duration,
    /// Sets [`GatewayConfig::client_timeout`].
    client_timeout: Duration,
    /// Sets [`GatewayConfig::max_idle_per_upstream`].
    max_idle_per_upstream: usize,
    /// Sets [`GatewayConfig::replay_limit`].
    replay_limit: usize,
    /// Sets [`GatewayConfig::limits`].
    limits: Limits,
}

/// The state of one upstream as [`Gateway::health`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamHealth {
    /// The upstream, as configured.
    pub uri: String,
    /// False while marked down.
    pub up: bool,
    /// Consecutive failures so far.
    pub failures: u32,
    /// Idle connections kept for reuse.
    pub idle: usize,
}

/// What one relayed transaction was, for an access log.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TransactionLog {
    /// The ICAP method.
    pub method: String,
    /// The request URI as the client sent it.
    pub uri: String,
    /// The upstream that answered (`host:port`), empty when none did.
    pub upstream: String,
    /// The ICAP status relayed (the gateway's own `503` when no upstream answered), 0 when
    /// the transaction broke off.
    pub status: u16,
    /// `X-Infection-Found` of the answer.
    pub infection: Option<String>,
    /// `X-Violations-Found` of the answer.
    pub violations: Option<String>,
    /// The status of the HTTP response inside the answer.
    pub http_status: Option<u16>,
    /// Request bytes read from the client.
    pub bytes_in: u64,
    /// Answer bytes written to the client.
    pub bytes_out: u64,
    /// Upstreams tried and given up on before the one that answered.
    pub failovers: u32,
    /// From the first byte of the request head to the last byte of the answer.
    pub duration: Duration,
    /// Why the transaction broke off, when it did.
    pub error: Option<String>,
}

struct Upstream {
    uri: IcapUri,
    addr: String,
    idle: Mutex<Vec<TcpStream>>,
    state: Mutex<Health>,
}

#[derive(Debug, Clone, Copy)]
struct Health {
    failures: u32,
    down_since: Option<Instant>,
}

impl Upstream {
    fn is_up(&self) -> bool {
        self.state.lock().expect("health lock").down_since.is_none()
    }

    fn success(&self) {
        let mut s = self.state.lock().expect("health lock");
        s.failures = 0;
        if s.down_since.take().is_some() {
            tracing::info!(upstream = %self.addr, "upstream revived");
        }
    }

    fn failure(&self, limit: u32, why: &str) {
        let mut s = self.state.lock().expect("health lock");
        s.failures = s.failures.saturating_add(1);
        if limit > 0 && s.failures >= limit && s.down_since.is_none() {
            s.down_since = Some(Instant::now());
            drop(s);
            self.idle.lock().expect("idle lock").clear();
            tracing::warn!(upstream = %self.addr, why, "upstream marked down");
        } else if let Some(since) = s.down_since.as_mut() {
            // A failed revival probe starts the delay again.
            *since = Instant::now();
        }
    }
}

/// A relay of ICAP transactions to upstream ICAP servers. Cheap to clone (shared state).
///
/// ```no_run
/// use icap::gateway::{Gateway, GatewayConfig};
/// use icap::IcapUri;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let gw = Gateway::new(
///     vec![IcapUri::parse("icap://10.0.0.5:1344/reqmod")?],
///     GatewayConfig::default(),
/// );
/// tokio::spawn(gw.clone().probe_forever());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:11344").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     let gw = gw.clone();
///     tokio::spawn(async move {
///         // A TLS handshake would come here; the gateway reads and writes any stream.
///         let _ = gw
///             .serve_connection(stream, |t| println!("{peer} {} {}", t.method, t.status))
///             .await;
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    cfg: GatewayConfig,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.health())
            .finish()
    }
}

/// Where a relayed transaction failed.
enum Failure {
    /// The client went away or broke the protocol: close its connection.
    Client(String),
    /// The upstream failed; `answered` when answer bytes already reached the client.
    Upstream { why: String, answered: bool },
}

impl Gateway {
    /// A gateway over these upstreams (`icap://host:port/service`; the service path is what
    /// the health probes ask with `OPTIONS`, the requests relayed keep their own URI).
    pub fn new(upstreams: Vec<IcapUri>, cfg: GatewayConfig) -> Gateway {
        let upstreams = upstreams
            .into_iter()
            .map(|uri| Upstream {
                addr: format!("{}:{}", uri.host(), uri.port()),
                uri,
                idle: Mutex::new(Vec::new()),
                state: Mutex::new(Health {
                    failures: 0,
                    down_since: None,
                }),
            })
            .collect();
        Gateway {
            inner: Arc::new(Inner {
                upstreams,
                next: AtomicUsize::new(0),
                cfg,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.cfg
    }

    /// Every upstream's health, in the configured order.
    pub fn health(&self) -> Vec<UpstreamHealth> {
        self.inner
            .upstreams
            .iter()
            .map(|u| {
                let s = *u.state.lock().expect("health lock");
                UpstreamHealth {
                    uri: u.uri.to_string(),
                    up: s.down_since.is_none(),
                    failures: s.failures,
                    idle: u.idle.lock().expect("idle lock").len(),
                }
            })
            .collect()
    }

    /// Probes every upstream that is up, or down for longer than the revival delay, with
    /// `OPTIONS` on a fresh connection; a `200` counts as a success, anything else as a
    /// failure.
    pub async fn probe_all(&self) {
        let cfg = &self.inner.cfg;
        for u in &self.inner.upstreams {
            let due = match u.state.lock().expect("health lock").down_since {
                None => true,
                Some(since) => since.elapsed() >= cfg.revival_delay,
            };
            if !due {
                continue;
            }
            match probe(u, cfg).await {
                Ok(()) => u.success(),
                Err(why) => u.failure(cfg.failure_limit, &format!("OPTIONS probe: {why}")),
            }
        }
    }

    /// Runs [`Self::probe_all`] every [`GatewayConfig::probe_interval`], forever (spawn it).
    pub async fn probe_forever(self) {
        loop {
            self.probe_all().await;
            tokio::time::sleep(self.inner.cfg.probe_interval).await;
        }
    }

    /// Relays the transactions of one client connection until the client closes it (or
    /// breaks the protocol), calling `log` once per transaction.
    pub async fn serve_connection<S, F>(&self, stream: S, mut log: F) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnMut(&TransactionLog),
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut limits = self.inner.cfg.limits;
        limits.max_body = None;
        let mut down = Downstream {
            r,
            dec: RequestDecoder::new(limits),
            raw: VecDeque::new(),
            raw_pos: 0,
            in_body: false,
            timeout: self.inner.cfg.client_timeout,
            rbuf: BytesMut::new(),
            ubuf: BytesMut::new(),
        };
        loop {
            let start = Instant::now();
            let head = match down.next_head().await {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(io::Error::other(e)),
            };
            let mut rec = TransactionLog {
                method: String::from_utf8_lossy(head.method.as_bytes()).into_owned(),
                uri: String::from_utf8_lossy(&head.uri).into_owned(),
                ..TransactionLog::default()
            };
            let client_close = wants_close(head.headers.get("connection"));
            let keep = self
                .relay(&mut down, &mut w, head.method, client_close, &mut rec)
                .await;
            rec.bytes_in = down.raw_pos - rec.bytes_in;
            rec.duration = start.elapsed();
            // One event per transaction, none per body piece.
            tracing::debug!(
                method = %rec.method,
                uri = %rec.uri,
                upstream = %rec.upstream,
                status = rec.status,
                bytes_in = rec.bytes_in,
                bytes_out = rec.bytes_out,
                failovers = rec.failovers,
                duration_ms = rec.duration.as_millis() as u64,
                error = rec.error.as_deref(),
                "gateway transaction"
            );
            log(&rec);
            if !keep || client_close {
                let _ = w.shutdown().await;
                return Ok(());
            }
        }
    }

    /// One transaction, its head decoded: relays it, failing over while nothing was
    /// answered. Returns whether the client connection stays usable.
    async fn relay<R, W>(
        &self,
        down: &mut Downstream<R>,
        w: &mut W,
        method: Method,
        client_close: bool,
        rec: &mut TransactionLog,
    ) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let cfg = &self.inner.cfg;
        // Stream offset of the head's first byte: raw bytes not relayed yet start there.
        rec.bytes_in = down.raw_pos;
        let mut replay = Replay {
            pieces: Some(Vec::new()),
            len: 0,
            limit: cfg.replay_limit,
        };
        let mut tried = Vec::new();
        let mut fresh_retry = false;
        let mut last_error = String::from("no upstream is up");
        while let Some(idx) = self.pick(&tried) {
            let u = &self.inner.upstreams[idx];
            let (mut conn, pooled) = match self.connection(u, fresh_retry).await {
                Ok(c) => c,
                Err(e) => {
                    u.failure(cfg.failure_limit, &e);
                    last_error = format!("{}: {e}", u.addr);
                    tried.push(idx);
                    fresh_retry = false;
                    continue;
                }
            };
            rec.upstream = u.addr.clone();
            let out_before = rec.bytes_out;
            match relay_once(down, w, &mut conn, &mut replay, method.clone(), rec, cfg).await {
                Ok(reusable) => {
                    u.success();
                    // The client's `Connection: close` went upstream too, which closes
                    // after answering even when its answer does not say so.
                    if reusable && !client_close {
                        let mut idle = u.idle.lock().expect("idle lock");
                        if idle.len() < cfg.max_idle_per_upstream {
                            idle.push(conn);
                        }
                    }
                    return true;
                }
                Err(Failure::Client(why)) => {
                    rec.error = Some(format!("client: {why}"));
                    return false;
                }
                Err(Failure::Upstream { why, answered }) => {
                    last_error = format!("{}: {why}", u.addr);
                    if answered || rec.bytes_out != out_before {
                        // Part of an answer went out: nothing can be replayed.
                        u.failure(cfg.failure_limit, &why);
                        rec.error = Some(format!("upstream {last_error}"));
                        return false;
                    }
                    if pooled && !fresh_retry {
                        // An idle connection the upstream had closed: not the upstream's
                        // failure; try it once more on a new connection.
                        fresh_retry = true;
                    } else {
                        u.failure(cfg.failure_limit, &why);
                        tried.push(idx);
                        fresh_retry = false;
                    }
                    if replay.pieces.is_none() {
                        break;
                    }
                    rec.failovers += 1;
                }
            }
        }
        // No upstream could take it: let the client finish sending, then say so.
        rec.upstream.clear();
        rec.error = Some(last_error.clone());
        if let Err(why) = drain(down).await {
            rec.error = Some(format!("client: {why}"));
            return false;
        }
        let page = UNAVAILABLE;
        rec.status = 503;
        match w.write_all(page.as_bytes()).await {
            Ok(()) => {
                rec.bytes_out += page.len() as u64;
                w.flush().await.is_ok()
            }
            Err(_) => false,
        }
    }

    /// The next upstream that is up and not tried yet, round robin.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let ups = &self.inner.upstreams;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..ups.len())
            .map(|i| (start + i) % ups.len())
            .find(|&i| !tried.contains(&i) && ups[i].is_up())
    }

    async fn connection(&self, u: &Upstream, fresh: bool) -> Result<(TcpStream, bool), String> {
        if !fresh {
            if let Some(c) = u.idle.lock().expect("idle lock").pop() {
                return Ok((c, true));
            }
        }
        let c = connect(&u.addr, self.inner.cfg.connect_timeout).await?;
        Ok((c, false))
    }
}

async fn connect(addr: &str, limit: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(c)) => {
            let _ = c.set_nodelay(true);
            Ok(c)
        }
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

fn wants_close(v: Option<&[u8]>) -> bool {
    v.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

async fn probe(u: &Upstream, cfg: &GatewayConfig) -> Result<(), String> {
    let mut c = connect(&u.addr, cfg.connect_timeout).await?;
    let req = format!(
        "OPTIONS {} ICAP/1.0\r\nHost: {}\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n",
        u.uri,
        u.uri.host_header()
    );
    let work = async {
        c.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut dec = ResponseDecoder::new(cfg.limits);
        dec.expect_response_to(Some(Method::Options));
        loop {
            match dec.decode().map_err(|e| e.to_string())? {
                Some(ResponseEvent::Head(res)) if res.status == 200 => return Ok(()),
                Some(ResponseEvent::Head(res)) => return Err(format!("status {}", res.status)),
                Some(_) => {}
                None => {
                    if c.read_buf(dec.buffer_mut())
                        .await
                        .map_err(|e| format!("read: {e}"))?
                        == 0
                    {
                        return Err("closed without an answer".into());
                    }
                }
            }
        }
    };
    tokio::time::timeout(cfg.upstream_timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The client side: its read half, the request decoder that frames its messages, and the
/// bytes read but not relayed yet.
struct Downstream<R> {
    r: R,
    dec: RequestDecoder,
    raw: VecDeque<Bytes>,
    /// Stream offset of the first byte of `raw`.
    raw_pos: u64,
    in_body: bool,
    timeout: Duration,
    /// Read buffers of this connection and of its answers, reused: pieces split off them
    /// are handed on, and the space comes back once those are dropped.
    rbuf: BytesMut,
    ubuf: BytesMut,
}

/// Makes room for a read, reclaiming the buffer's space when the pieces split off it are
/// gone (the usual case between small transactions), allocating otherwise.
fn refill(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

impl<R: AsyncRead + Unpin> Downstream<R> {
    /// Reads more; `Ok(false)` on end of stream.
    async fn read(&mut self) -> Result<bool, String> {
        let buf = &mut self.rbuf;
        refill(buf);
        match tokio::time::timeout(self.timeout, self.r.read_buf(buf)).await {
            Err(_) => Err("timed out".into()),
            // TLS clients often close without close_notify; between messages that is a
            // close like any other (`decode_eof` still catches a message cut short).
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => {
                let b = buf.split().freeze();
                self.dec.feed_bytes(b.clone());
                self.raw.push_back(b);
                Ok(true)
            }
        }
    }

    /// The next request's head, `None` when the client closed between messages.
    async fn next_head(&mut self) -> Result<Option<crate::Request>, String> {
        loop {
            match self.dec.decode().map_err(|e| e.to_string())? {
                Some(RequestEvent::Head(h)) => {
                    self.in_body = true;
                    return Ok(Some(h));
                }
                Some(_) => return Err("body bytes outside a message".into()),
                None => {
                    if !self.read().await? {
                        self.dec.decode_eof().map_err(|e| e.to_string())?;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Takes the raw bytes decoded so far (up to the decoder's position).
    fn take_decoded(&mut self) -> Vec<Bytes> {
        let mut want = (self.dec.position() - self.raw_pos) as usize;
        let mut out = Vec::new();
        while want > 0 {
            let front = self.raw.front_mut().expect("decoded bytes were read");
            if front.len() <= want {
                want -= front.len();
                out.push(self.raw.pop_front().expect("front exists"));
            } else {
                out.push(front.split_to(want));
                want = 0;
            }
        }
        for b in &out {
            self.raw_pos += b.len() as u64;
        }
        out
    }
}

/// Request bytes relayed to the current upstream, kept while they fit for a replay.
struct Replay {
    pieces: Option<Vec<Bytes>>,
    len: usize,
    limit: usize,
}

impl Replay {
    fn keep(&mut self, b: &Bytes) {
        if let Some(p) = self.pieces.as_mut() {
            self.len += b.len();
            if self.len > self.limit {
                self.pieces = None;
            } else {
                p.push(b.clone());
            }
        }
    }
}

enum PumpError {
    Client(String),
    Upstream(String),
}

/// Relays the request (from wherever its decoding stands) to `up`, or discards it when
/// `up` is `None`. At the end of a preview waits for the answer side's decision (`true`:
/// the upstream sent `100 Continue`).
async fn pump_request<R, W>(
    down: &mut Downstream<R>,
    mut up: Option<&mut W>,
    replay: &mut Replay,
    mut decision: Option<oneshot::Receiver<bool>>,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let up_err = |e: io::Error| PumpError::Upstream(format!("write: {e}"));
    loop {
        // Decode all that was read before writing: a small request goes out in one write.
        let mut need_read = false;
        while down.in_body && !down.dec.awaiting_preview_decision() {
            match down.dec.decode() {
                Ok(Some(RequestEvent::End(_))) => down.in_body = false,
                Ok(Some(RequestEvent::Data(_) | RequestEvent::PreviewEnd)) => {}
                Ok(Some(_)) => return Err(PumpError::Client("unexpected head".into())),
                Ok(None) => {
                    need_read = true;
                    break;
                }
                Err(e) => return Err(PumpError::Client(e.to_string())),
            }
        }
        let pieces = down.take_decoded();
        if let Some(up) = up.as_deref_mut() {
            for p in &pieces {
                replay.keep(p);
            }
            for p in &pieces {
                up.write_all(p).await.map_err(up_err)?;
            }
            if !pieces.is_empty() {
                up.flush().await.map_err(up_err)?;
            }
        }
        if !down.in_body {
            return Ok(());
        }
        if down.dec.awaiting_preview_decision() {
            let go_on = match decision.take() {
                Some(rx) => rx.await.unwrap_or(false),
                None => false,
            };
            let r = if go_on {
                down.dec.continue_after_preview()
            } else {
                down.in_body = false;
                down.dec.finish_after_preview()
            };
            r.map_err(|e| PumpError::Client(e.to_string()))?;
            continue;
        }
        if need_read && !down.read().await.map_err(PumpError::Client)? {
            return Err(PumpError::Client("closed inside a request".into()));
        }
    }
}

/// Reads the rest of the current request and discards it.
async fn drain<R: AsyncRead + Unpin>(down: &mut Downstream<R>) -> Result<(), String> {
    let mut replay = Replay {
        pieces: None,
        len: 0,
        limit: 0,
    };
    match pump_request::<R, tokio::io::Sink>(down, None, &mut replay, None).await {
        Ok(()) => Ok(()),
        Err(PumpError::Client(e) | PumpError::Upstream(e)) => Err(e),
    }
}

/// Relays the answer from `up` to `w`. Errors say whether answer bytes already went out.
#[allow(clippy::too_many_arguments)]
async fn pump_response<R, W>(
    up: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    method: Method,
    mut decision: Option<oneshot::Sender<bool>>,
    rec: &mut TransactionLog,
    timeout: Duration,
    limits: &Limits,
) -> Result<bool, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dec = ResponseDecoder::new(Limits {
        max_body: None,
        ..*limits
    });
    dec.expect_response_to(Some(method));
    let mut raw: VecDeque<Bytes> = VecDeque::new();
    let mut raw_pos = 0u64;
    let mut is_final = false;
    let mut close = false;
    let up_err = |why: String, rec: &TransactionLog| Failure::Upstream {
        why,
        answered: rec.bytes_out > 0,
    };
    loop {
        let ev = dec.decode().map_err(|e| up_err(e.to_string(), rec))?;
        let ended = match ev {
            Some(ResponseEvent::Head(res)) => {
                if res.status == 100 {
                    if let Some(tx) = decision.take() {
                        let _ = tx.send(true);
                    }
                } else {
                    if let Some(tx) = decision.take() {
                        let _ = tx.send(false);
                    }
                    is_final = true;
                    rec.status = res.status;
                    let text = |n: &str| res.headers.get_str(n).map(str::to_owned);
                    rec.infection = text("x-infection-found");
                    rec.violations = text("x-violations-found");
                    rec.http_status = res.http_response.as_ref().map(|h| h.status);
                    close = wants_close(res.headers.get("connection"));
                }
                false
            }
            Some(ResponseEvent::End(_)) => is_final,
            Some(_) => false,
            None => {
                relay_decoded(&mut raw, &mut raw_pos, dec.position(), w, rec, true).await?;
                refill(buf);
                match tokio::time::timeout(timeout, up.read_buf(buf)).await {
                    Err(_) => return Err(up_err("no answer in time".into(), rec)),
                    Ok(Err(e)) => return Err(up_err(format!("read: {e}"), rec)),
                    Ok(Ok(0)) => return Err(up_err("closed before the answer ended".into(), rec)),
                    Ok(Ok(_)) => {
                        let b = buf.split().freeze();
                        dec.feed_bytes(b.clone());
                        raw.push_back(b);
                    }
                }
                continue;
            }
        };
        if ended {
            relay_decoded(&mut raw, &mut raw_pos, dec.position(), w, rec, true).await?;
            // Bytes after the answer would be a protocol error: do not reuse.
            return Ok(!close && dec.buffered().is_empty());
        }
    }
}

async fn relay_decoded<W: AsyncWrite + Unpin>(
    raw: &mut VecDeque<Bytes>,
    raw_pos: &mut u64,
    upto: u64,
    w: &mut W,
    rec: &mut TransactionLog,
    flush: bool,
) -> Result<(), Failure> {
    let mut want = (upto - *raw_pos) as usize;
    if want == 0 {
        return Ok(());
    }
    while want > 0 {
        let front = raw.front_mut().expect("decoded bytes were read");
        let piece = if front.len() <= want {
            raw.pop_front().expect("front exists")
        } else {
            front.split_to(want)
        };
        want -= piece.len();
        *raw_pos += piece.len() as u64;
        w.write_all(&piece)
            .await
            .map_err(|e| Failure::Client(format!("write: {e}")))?;
        rec.bytes_out += piece.len() as u64;
    }
    if flush {
        w.flush()
            .await
            .map_err(|e| Failure::Client(format!("write: {e}")))?;
    }
    Ok(())
}

/// One attempt on one upstream connection. `Ok(reusable)` when the answer was relayed.
async fn relay_once<R, W>(
    down: &mut Downstream<R>,
    w: &mut W,
    conn: &mut TcpStream,
    replay: &mut Replay,
    method: Method,
    rec: &mut TransactionLog,
    cfg: &GatewayConfig,
) -> Result<bool, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut ur, mut uw) = conn.split();
    // What an earlier attempt relayed goes first.
    if let Some(pieces) = replay.pieces.as_ref() {
        for p in pieces {
            uw.write_all(p).await.map_err(|e| Failure::Upstream {
                why: format!("write: {e}"),
                answered: false,
            })?;
        }
    }
    let (tx, rx) = oneshot::channel();
    let request_done = !down.in_body && down.dec.position() == down.raw_pos;
    let mut ubuf = std::mem::take(&mut down.ubuf);
    let result = async {
        let req = pump_request(down, Some(&mut uw), replay, Some(rx));
        let res = pump_response(
            &mut ur,
            &mut ubuf,
            w,
            method,
            Some(tx),
            rec,
            cfg.upstream_timeout,
            &cfg.limits,
        );
        tokio::pin!(req);
        tokio::pin!(res);
        let mut req_done = request_done;
        loop {
            tokio::select! {
                r = &mut req, if !req_done => match r {
                    Ok(()) => req_done = true,
                    Err(PumpError::Client(why)) => return Err(Failure::Client(why)),
                    Err(PumpError::Upstream(why)) => {
                        return Err(Failure::Upstream { why, answered: false });
                    }
                },
                r = &mut res => {
                    let reusable = r?;
                    if !req_done {
                        // Answered before the request ended (no preview): the rest of the
                        // request still goes to the upstream, which reads it as RFC 3507
                        // expects; a failure now only costs the connection.
                        return match (&mut req).await {
                            Ok(()) => Ok(reusable),
                            Err(PumpError::Upstream(_)) => Ok(false),
                            Err(PumpError::Client(why)) => Err(Failure::Client(why)),
                        };
                    }
                    return Ok(reusable);
                }
            }
        }
    }
    .await;
    down.ubuf = ubuf;
    result
}
