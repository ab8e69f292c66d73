//! The async ICAP server (feature `server`): tokio front end for [`ServerTransaction`].
//!
//! A [`Server`] routes each request by the path of its ICAP URI to a [`Service`] and answers
//! OPTIONS itself from the service's declared [`ServiceOptions`]. The application only sees
//! a request, its body as a stream, and (with a preview) the preview bytes first; whatever it
//! returns, the rules hold: a [`Reply::Unmodified`] becomes a 204 only where the client allowed
//! one (otherwise the original message is echoed as a 200, from a spool kept for that case),
//! no 100 follows `ieof`, a 206 needs `Allow: 206`, unknown services get 404, methods a
//! service does not offer 405, unknown methods 501, other versions 505, malformed requests
//! 400 with `Connection: close`, and a client that stalls gets 408.
//!
//! A service that must see the whole body before it decides can still answer clients that
//! wait for the answer before sending more (squid): [`Body::start_echo`] begins a 200 echo at
//! once and passes each piece on after the service has looked at it; a late finding cuts the
//! answer instead of completing it.
//!
//! Connections are kept alive and pipelined requests are answered in order. Limits bound
//! connections (in total and per client address), heads and bodies; deadlines and a minimum
//! rate bound how long an idle, slow or stalled client can hold a connection (see
//! [`ServerConfig`]). When the server is full, the connection idle longest makes room for a
//! newcomer; with none idle the newcomer gets a 503 it can read (after the TLS handshake,
//! its request drained). [`Server::serve`] stops accepting on shutdown and lets transactions
//! in flight finish. TLS (with optional client-certificate verification) is rustls.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use crate::builder::ErrorStatus;
use crate::decode::{RequestDecoder, RequestEvent};
use crate::error::Error;
use crate::head::Method;
use crate::headers::Headers;
use crate::limits::Limits;
use crate::message::{Request, Response};
use crate::options::ServiceOptions;
use crate::transaction::{Reuse, ServerEvent, ServerState, ServerTransaction};
use crate::uri::IcapUri;

/// A boxed, sendable future, as service methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An ICAP service: what runs behind one path such as `/reqmod`.
///
/// Implement [`Service::options`] and [`Service::handle`]; override [`Service::preview`] to
/// answer from the preview alone.
pub trait Service: Send + Sync + 'static {
    /// The options announced in answer to OPTIONS; also the source of the ISTag and of the
    /// methods this service accepts.
    fn options(&self) -> ServiceOptions;

    /// Called when a preview without `ieof` has arrived, with its bytes. `None` (the default)
    /// sends `100 Continue` and then calls [`Service::handle`] with the whole body; `Some`
    /// answers now (a 204 here is allowed even without `Allow: 204`).
    fn preview<'a>(
        &'a self,
        req: &'a IncomingRequest,
        preview: &'a [u8],
    ) -> BoxFuture<'a, Option<Reply>> {
        let _ = (req, preview);
        Box::pin(async { None })
    }

    /// Handles a REQMOD or RESPMOD request. `body` yields the encapsulated body (preview bytes
    /// included); the application may stop reading early and answer.
    fn handle<'a>(
        &'a self,
        req: &'a IncomingRequest,
        body: &'a mut Body<'_, '_>,
    ) -> BoxFuture<'a, Reply>;
}

/// A request as the application sees it.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The ICAP request head and encapsulated HTTP heads.
    pub request: Request,
    /// The client's address.
    pub peer: SocketAddr,
    /// True on a TLS connection.
    pub secure: bool,
}

impl std::ops::Deref for IncomingRequest {
    type Target = Request;
    fn deref(&self) -> &Request {
        &self.request
    }
}

/// A response body the application hands back.
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

/// The application's answer.
#[derive(Debug)]
pub enum Reply {
    /// The message needs no change: a 204 where the client allows it, else a 200 that
    /// echoes the original message. The headers are added to the ICAP response (for
    /// instance `X-Infection-Found` in a monitoring mode).
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

impl Reply {
    /// The message stands as it is.
    pub fn unmodified() -> Reply {
        Reply::Unmodified(Headers::new())
    }
}

/// Timeouts and limits of a [`Server`].
///
/// Together they bound what a slow or idle client can hold: a connection slot (total and per
/// address), and for how long. The defaults suit ICAP clients on a LAN (proxies keeping
/// connections alive, sending heads in one piece, streaming bodies as their origin sends).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Decoder limits (head sizes, header count, preview, body size).
    pub limits: Limits,
    /// Most connections served at once. When full, the connection that has waited longest
    /// for its next request (idle) is closed to make room; with none idle, the newcomer gets
    /// 503. Default 256.
    pub max_connections: usize,
    /// Most connections served at once for one client address (IPv6: one /64), with the same
    /// make-room rule among that address's connections; keeps one client from taking every
    /// slot. Default 128: an ICAP client is usually a proxy with many connections, and
    /// services should announce no more than this in `Max-Connections`.
    pub max_connections_per_ip: usize,
    /// How long a connection may wait for a request: the first one, or the next one on a
    /// kept-alive connection. Default 60 s.
    pub idle_timeout: Duration,
    /// How long a request head (ICAP and HTTP heads) may take from its first byte; empty
    /// lines before it count. Default 30 s.
    pub head_timeout: Duration,
    /// Longest wait for the next body bytes; a client that stalls longer gets 408. Default 30 s.
    pub read_timeout: Duration,
    /// Longest time a whole request body may take (time spent waiting for the client, not
    /// time the service spends), `None` for no limit. Default `None`: bodies of any size
    /// are allowed and [`ServerConfig::min_rate`] keeps them moving; set it where bodies are
    /// known to be small.
    pub body_timeout: Option<Duration>,
    /// The slowest rate at which heads and bodies may arrive, `None` for no minimum.
    /// Default 1 KiB/s after a grace of 10 s.
    pub min_rate: Option<MinRate>,
    /// Longest time a write to the client may block. Default 60 s.
    pub write_timeout: Duration,
    /// Longest TLS handshake. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// How long a refused connection is kept to get its 503 across: the TLS handshake (on a
    /// TLS port), the answer, and reading what the client still sends so that it is not
    /// reset while writing. Default 5 s.
    pub refusal_timeout: Duration,
    /// Most bytes read and dropped from a refused connection. Default 4 MiB.
    pub refusal_drain: u64,
    /// Most refused connections answered at once; beyond, a refused connection is closed
    /// without an answer. Default 64.
    pub max_refusals: usize,
    /// Body bytes kept in memory for a possible echo before spilling to a temporary file.
    /// Default 1 MiB.
    pub spool_memory: usize,
    /// Directory for spill files, which are anonymous (nothing to find or clean up there).
    /// When it is unusable, echoes of bodies over `spool_memory` are answered 500, and the
    /// log names the directory. Default: the system temporary directory.
    pub spool_dir: PathBuf,
    /// ISTag for answers that belong to no service (404, 400 before routing). Default `"icap"`.
    pub istag: String,
    /// `Server` header on every answer. Default `icap/<version>`.
    pub server_name: Option<String>,
}

/// A minimum transfer rate: after `grace`, a head or body must have arrived at
/// `bytes_per_sec` on average, counting only the time the server spent waiting for it.
///
/// A client at the end of a slow link sends in bursts but keeps up an average; one that
/// trickles a byte every few seconds (and so holds a connection indefinitely under any
/// per-read timeout) falls behind and gets 408. The grace covers a slow start (an origin
/// that takes a while to send the first bytes of a response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second, on average over the message. 0 disables the check.
    pub bytes_per_sec: u64,
    /// Time allowed before the average must be met.
    pub grace: Duration,
}

impl Default for MinRate {
    fn default() -> Self {
        MinRate {
            bytes_per_sec: 1024,
            grace: Duration::from_secs(10),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_connections: 256,
            max_connections_per_ip: 128,
            idle_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            body_timeout: None,
            min_rate: Some(MinRate::default()),
            write_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            refusal_timeout: Duration::from_secs(5),
            refusal_drain: 4 * 1024 * 1024,
            max_refusals: 64,
            spool_memory: 1024 * 1024,
            spool_dir: std::env::temp_dir(),
            istag: "icap".into(),
            server_name: Some(concat!("icap/", env!("CARGO_PKG_VERSION")).into()),
        }
    }
}

/// A boxed connection: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An ICAP server: services by path, configuration, optional TLS.
pub struct Server {
    routes: HashMap<String, Arc<dyn Service>>,
    config: ServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new(ServerConfig::default())
    }
}

/// Counters of a running server, for tests and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests received (heads decoded), whatever their answer.
    pub requests: AtomicU64,
    /// Connections refused with 503 (or closed unanswered beyond
    /// [`ServerConfig::max_refusals`]) for the connection limits.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Heads and bodies cut for arriving too slowly (head or body deadline, minimum rate,
    /// read timeout): each got 408 where the connection still worked.
    pub timeouts: AtomicU64,
    /// Failed `accept` calls (out of file descriptors and the like).
    pub accept_errors: AtomicU64,
}

impl Server {
    /// A server with no services.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            routes: HashMap::new(),
            config,
            tls: None,
        }
    }

    /// Serves `service` at `path` (`"reqmod"` or `"/reqmod"` answer `icap://host/reqmod`).
    pub fn route(mut self, path: &str, service: impl Service) -> Self {
        self.routes
            .insert(path.trim_start_matches('/').to_string(), Arc::new(service));
        self
    }

    /// Serves `service`, already shared, at `path`.
    pub fn route_arc(mut self, path: &str, service: Arc<dyn Service>) -> Self {
        self.routes
            .insert(path.trim_start_matches('/').to_string(), service);
        self
    }

    /// Speaks TLS (ICAPS) with this rustls configuration, e.g. from
    /// [`ServerTls::build`](crate::tls::ServerTls::build).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Accepts connections on `listener` until `shutdown` completes, then stops accepting,
    /// lets every transaction in flight finish, closes idle connections, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Arc<Stats>> {
        self.serve_many(vec![listener], shutdown).await
    }

    /// Like [`Server::serve`] on several listeners at once.
    pub async fn serve_many(
        self,
        listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Arc<Stats>> {
        let server = Arc::new(self);
        let stats = Arc::new(Stats::default());
        let slots = Arc::new(Slots::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let mut acceptors = JoinSet::new();
        for l in listeners {
            let tx = conn_tx.clone();
            let stats = stats.clone();
            acceptors.spawn(async move {
                let mut backoff = Duration::ZERO;
                loop {
                    match l.accept().await {
                        Ok(c) => {
                            backoff = Duration::ZERO;
                            if tx.send(c).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                            backoff = accept_backoff(&e, backoff);
                            tracing::warn!(
                                "accept failed: {e}; next attempt in {} ms",
                                backoff.as_millis()
                            );
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
            });
        }
        drop(conn_tx);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                c = conn_rx.recv() => {
                    let Some((tcp, peer)) = c else { break };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.set_nodelay(true);
                    let server = server.clone();
                    let stats2 = stats.clone();
                    let stop = stop_rx.clone();
                    let cfg = &server.config;
                    match slots.admit(peer, cfg.max_connections, cfg.max_connections_per_ip) {
                        Admission::Admitted { slot, evicted } => {
                            if evicted {
                                stats.evicted.fetch_add(1, Ordering::Relaxed);
                            }
                            tasks.spawn(async move {
                                server.connection(tcp, peer, slot, stop, &stats2).await;
                            });
                        }
                        Admission::Refused => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("connection from {peer} refused: connection limit");
                            if let Some(r) = slots.refusing(server.config.max_refusals) {
                                tasks.spawn(async move {
                                    let _r = r;
                                    server.refuse(tcp).await
                                });
                            }
                        }
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        acceptors.shutdown().await;
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(stats)
    }

    /// Answers 503 to a connection over the limits, so that the client can read it: after
    /// the TLS handshake on a TLS port, and reading (and dropping) what it sends until it
    /// closes, so that a client still writing its request is not reset before it reads the
    /// answer. Bounded by [`ServerConfig::refusal_timeout`] and
    /// [`ServerConfig::refusal_drain`].
    async fn refuse(&self, tcp: TcpStream) {
        let deadline = Instant::now() + self.config.refusal_timeout;
        let mut io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => {
                let limit = deadline.min(Instant::now() + self.config.tls_handshake_timeout);
                match timeout_at(limit, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    _ => return,
                }
            }
        };
        let res = self.error_response(ErrorStatus::ServiceOverloaded, &self.config.istag);
        let mut buf = BytesMut::new();
        res.write_to(&mut buf);
        let write = async {
            io.write_all(&buf).await?;
            io.flush().await
        };
        if !matches!(timeout_at(deadline, write).await, Ok(Ok(()))) {
            return;
        }
        // Read on to the end of the request (the client then waits for the answer it has),
        // or to its close; a request that cannot be parsed is drained blind.
        let mut decoder = RequestDecoder::new(self.config.limits);
        let mut parsing = true;
        let mut drained = 0u64;
        'drain: while drained < self.config.refusal_drain {
            let buf = decoder.buffer_mut();
            if !parsing {
                buf.clear();
            }
            buf.reserve(16 * 1024);
            match timeout_at(deadline, io.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n as u64,
                _ => break,
            }
            while parsing {
                match decoder.decode() {
                    Ok(Some(RequestEvent::End(_) | RequestEvent::PreviewEnd)) => break 'drain,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => parsing = false,
                }
            }
        }
        let _ = timeout_at(deadline, io.shutdown()).await;
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        slot: Slot,
        mut stop: watch::Receiver<bool>,
        stats: &Stats,
    ) {
        // Until its first byte a connection is idle: it may be closed to make room, and it
        // has idle_timeout to speak. The TLS handshake starts only then.
        let mut one = [0u8; 1];
        let first = tokio::select! {
            r = timeout(self.config.idle_timeout, tcp.peek(&mut one)) => r,
            _ = slot.evicted() => return,
            _ = stop.changed() => return,
        };
        if !matches!(first, Ok(Ok(n)) if n > 0) || !slot.busy() {
            return;
        }
        let (io, secure): (Box<dyn Io>, bool) = match &self.tls {
            None => (Box::new(tcp), false),
            Some(acceptor) => {
                match timeout(self.config.tls_handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => (Box::new(tls), true),
                    Ok(Err(e)) => {
                        log_debug(&format!("TLS handshake with {peer} failed: {e}"));
                        return;
                    }
                    Err(_) => return,
                }
            }
        };
        let mut conn = Conn {
            io,
            cfg: &self.config,
            stats,
            slot,
            clock: None,
        };
        let mut decoder = RequestDecoder::new(self.config.limits);
        loop {
            let txn = ServerTransaction::new(decoder);
            match self
                .transaction(&mut conn, txn, peer, secure, stop.clone(), stats)
                .await
            {
                Some(d) => decoder = d,
                None => break,
            }
        }
        let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    }

    fn server_header(&self, b: crate::builder::ResponseBuilder) -> crate::builder::ResponseBuilder {
        match &self.config.server_name {
            Some(s) => b.header("Server", s),
            None => b,
        }
    }

    fn error_response(&self, status: ErrorStatus, istag: &str) -> Response {
        let b = self.server_header(Response::error(status, istag));
        b.build().unwrap_or_else(|_| {
            // Only a bad ISTag can fail; fall back to the server's own.
            self.server_header(Response::error(status, "icap"))
                .build()
                .expect("a fixed ISTag is valid")
        })
    }

    /// Runs one transaction; returns the decoder when the connection may carry another.
    async fn transaction(
        &self,
        conn: &mut Conn<'_>,
        mut txn: ServerTransaction,
        peer: SocketAddr,
        secure: bool,
        mut stop: watch::Receiver<bool>,
        stats: &Stats,
    ) -> Option<RequestDecoder> {
        conn.clock = None;
        // 1. The head: wait idle, then at most head_timeout (and the minimum rate) from the
        // first byte, empty lines before it included.
        let request = loop {
            match txn.poll_event() {
                Ok(Some(ServerEvent::Request(r))) => break r,
                Ok(Some(ev)) => {
                    // The decoder gives a head first; anything else is a bug to report to
                    // the client as ours, not a reason to bring the server down.
                    tracing::error!("unexpected event before the request head: {ev:?}");
                    let res = self.error_response(ErrorStatus::ServerError, &self.config.istag);
                    let _ = txn.respond(res);
                    let _ = conn.flush_out(&mut txn).await;
                    return None;
                }
                Ok(None) => {}
                Err(_) => {
                    let res = self.error_response(ErrorStatus::BadRequest, &self.config.istag);
                    let _ = txn.respond(res);
                    let _ = conn.flush_out(&mut txn).await;
                    return None;
                }
            }
            if conn.clock.is_none() && txn.decoder_mut().buffered().is_empty() {
                // Idle: between requests (or before the first), nothing of the next one here.
                if *stop.borrow() || !conn.slot.idle() {
                    return None;
                }
                let evicted = conn.slot.notify.clone();
                let read = tokio::select! {
                    r = timeout(self.config.idle_timeout, conn.read(&mut txn)) => r,
                    _ = stop.changed() => return None,
                    _ = evicted.notified() => return None,
                };
                match read {
                    Ok(Ok(0)) => {
                        let _ = txn.on_eof();
                        return None;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => return None,
                }
                if !conn.slot.busy() {
                    // Closed to make room just as the request began.
                    return None;
                }
                conn.clock = Some(ReadClock::new(
                    Some(self.config.head_timeout),
                    self.config.min_rate,
                ));
                continue;
            }
            if conn.clock.is_none() {
                // Pipelined: the next head is already (partly) here.
                conn.clock = Some(ReadClock::new(
                    Some(self.config.head_timeout),
                    self.config.min_rate,
                ));
            }
            match conn.read_timed(&mut txn, None).await {
                Ok(0) => {
                    let _ = txn.on_eof();
                    return None;
                }
                Ok(_) => {}
                Err(ReadFail::Io(_)) => return None,
                Err(ReadFail::Timeout) => {
                    let res = self.error_response(ErrorStatus::RequestTimeout, &self.config.istag);
                    let _ = txn.respond(res);
                    let _ = conn.flush_out(&mut txn).await;
                    return None;
                }
            }
        };
        // The body has its own clock, started now.
        conn.clock = Some(ReadClock::new(
            self.config.body_timeout,
            self.config.min_rate,
        ));
        stats.requests.fetch_add(1, Ordering::Relaxed);

        // 2. Routing and the checks that need no service code.
        let route = IcapUri::parse(&String::from_utf8_lossy(&request.uri))
            .ok()
            .map(|u| u.path().trim_start_matches('/').to_string());
        let service = route.as_ref().and_then(|p| self.routes.get(p)).cloned();
        let istag = service
            .as_ref()
            .map(|s| s.options().istag)
            .unwrap_or_else(|| self.config.istag.clone());
        let refusal = if request.version.major != 1 {
            Some(ErrorStatus::VersionNotSupported)
        } else if matches!(request.method, Method::Other(_)) {
            Some(ErrorStatus::MethodNotImplemented)
        } else if route.is_none() {
            Some(ErrorStatus::BadRequest)
        } else if service.is_none() {
            Some(ErrorStatus::ServiceNotFound)
        } else if request.method != Method::Options
            && !service
                .as_ref()
                .is_some_and(|s| s.options().supports(&request.method))
        {
            Some(ErrorStatus::MethodNotAllowed)
        } else {
            None
        };
        if let Some(status) = refusal {
            // Answered before the body was read: the transaction closes the connection.
            let _ = txn.respond(self.error_response(status, &istag));
            let _ = conn.flush_out(&mut txn).await;
            return None;
        }
        let service = service.expect("refused above when missing");
        let incoming = IncomingRequest {
            request,
            peer,
            secure,
        };

        // 3. OPTIONS is answered from the declared options.
        if incoming.method == Method::Options {
            // An OPTIONS body (rare) is read and dropped before answering.
            let mut body = Body::new(conn, &mut txn, None);
            if body.drain().await.is_err() {
                return None;
            }
            drop(body);
            let opts = service.options();
            let res = opts
                .response_builder()
                .map(|b| self.server_header(b))
                .and_then(|b| b.build())
                .unwrap_or_else(|_| self.error_response(ErrorStatus::ServerError, &istag));
            let keep = self.send(conn, &mut txn, res, ReplyBody::Empty, None).await;
            return keep.then(|| txn.into_decoder());
        }

        // 4. REQMOD / RESPMOD: preview, then the application.
        let spool = (!incoming.allows_204() && incoming.body.is_some())
            .then(|| Spool::new(self.config.spool_memory, self.config.spool_dir.clone()));
        let mut body = Body::new(conn, &mut txn, spool);
        body.echo = Some(Echo::Ready(Box::new(self.echo_response(
            &incoming,
            &istag,
            &Headers::new(),
        ))));
        let mut reply = None;
        if incoming.body.is_some() && incoming.preview().is_some() {
            match body.read_preview().await {
                Ok(true) => {
                    // ieof: the whole body is here; no 100 is possible.
                }
                Ok(false) => {
                    let preview: Vec<u8> =
                        body.replay.iter().flat_map(|b| b.iter().copied()).collect();
                    reply = service.preview(&incoming, &preview).await;
                    if reply.is_none() && body.send_continue().await.is_err() {
                        return None;
                    }
                }
                Err(e) => {
                    self.body_error(body, e, &istag).await;
                    return None;
                }
            }
        }
        let reply = match reply {
            Some(r) => r,
            None => service.handle(&incoming, &mut body).await,
        };
        if let Some(e) = body.failed.take() {
            if body.streaming() {
                // The 200 is out: cutting the connection is the only error left to show.
                return None;
            }
            self.body_error(body, e, &istag).await;
            return None;
        }
        if body.streaming() {
            return match reply {
                Reply::Unmodified(_) => {
                    // Forward what the application did not read, then end the echo.
                    if body.finish_echo().await.is_err() {
                        return None;
                    }
                    let keep = body.txn.reuse() == Reuse::Keep;
                    drop(body);
                    keep.then(|| txn.into_decoder())
                }
                // A verdict other than "unmodified" after the echo began: the answer can
                // no longer change, so the client must not get a complete one. Closing
                // without the last chunk makes it an error on the client's side.
                _ => None,
            };
        }
        let (conn, txn_ref, spool) = body.into_parts();
        let keep = self
            .answer(conn, txn_ref, &incoming, reply, spool, &istag)
            .await;
        keep.then(|| txn.into_decoder())
    }

    /// Answers a body that could not be read (400 or 408) where the connection still works.
    async fn body_error(&self, body: Body<'_, '_>, e: BodyError, istag: &str) {
        let (conn, txn, _) = body.into_parts();
        let status = match e {
            BodyError::Timeout => ErrorStatus::RequestTimeout,
            BodyError::Protocol(_) => ErrorStatus::BadRequest,
            BodyError::Io(_) | BodyError::Eof => return,
        };
        let _ = txn.respond(self.error_response(status, istag));
        let _ = conn.flush_out(txn).await;
    }

    /// Turns the application's reply into a legal response and sends it.
    async fn answer(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        req: &IncomingRequest,
        reply: Reply,
        spool: Option<Spool>,
        istag: &str,
    ) -> bool {
        let in_preview = matches!(
            txn.state(),
            ServerState::Decide { .. } | ServerState::Preview
        );
        match reply {
            Reply::Unmodified(extra) if req.allows_204() || in_preview => {
                let mut b = self.server_header(Response::no_content(istag));
                for (n, v) in extra.iter() {
                    b = b.header(&String::from_utf8_lossy(n), v);
                }
                let res = b
                    .build()
                    .unwrap_or_else(|_| self.error_response(ErrorStatus::ServerError, istag));
                self.send(conn, txn, res, ReplyBody::Empty, None).await
            }
            Reply::Unmodified(extra) => {
                // No 204 allowed: echo the original message, its body from the spool.
                let mut spool = spool;
                if txn.state() == ServerState::Body {
                    let mut body = Body::new(conn, txn, spool.take());
                    if let Err(e) = body.drain().await {
                        self.body_error(body, e, istag).await;
                        return false;
                    }
                    spool = body.spool.take();
                }
                let res = self.echo_response(req, istag, &extra);
                // The spool exists whenever a body came without Allow: 204.
                let body = match spool {
                    Some(s) if req.body.is_some() => match s.into_reader().await {
                        Ok(r) => ReplyBody::Reader(r),
                        Err(e) => {
                            tracing::error!("no echo, answering 500: {e}");
                            let res = self.error_response(ErrorStatus::ServerError, istag);
                            return self.send(conn, txn, res, ReplyBody::Empty, None).await;
                        }
                    },
                    _ => ReplyBody::Empty,
                };
                self.send(conn, txn, res, body, None).await
            }
            Reply::Respond(res, body) => self.send(conn, txn, res, body, None).await,
            Reply::Partial(res, prefix, from) => {
                self.send(conn, txn, res, ReplyBody::Full(prefix), Some(from))
                    .await
            }
        }
    }

    /// The 200 that gives the client its own message back: the encapsulated heads as they
    /// came (the request head only for REQMOD, RFC 3507 4.9.2), and a body when it had one.
    fn echo_response(&self, req: &IncomingRequest, istag: &str, extra: &Headers) -> Response {
        let mut res = Response::new(200, "OK");
        if let Some(s) = &self.config.server_name {
            res.headers.append("Server", s);
        }
        res.headers
            .append("ISTag", format!("\"{}\"", istag.trim_matches('"')));
        for (n, v) in extra.iter() {
            res.headers.append(&String::from_utf8_lossy(n), v);
        }
        res.http_request = req.http_request.clone();
        res.http_response = req.http_response.clone();
        if req.method == Method::Respmod {
            res.http_request = None;
        }
        res.body = req.body;
        res
    }

    /// Sends `res` through the transaction (which enforces the rules), then its body.
    /// Returns true when the connection may carry another transaction.
    async fn send(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        res: Response,
        body: ReplyBody,
        original_from: Option<u64>,
    ) -> bool {
        let mut res = res;
        if let Some(name) = &self.config.server_name {
            if !res.headers.contains("Server") {
                res.headers.append("Server", name);
            }
        }
        let istag = res
            .headers
            .get_str("ISTag")
            .unwrap_or(&self.config.istag)
            .to_string();
        if matches!(txn.state(), ServerState::Body | ServerState::Preview) {
            // Answered before the request was read to its end: rather than read on to keep
            // the connection, close it (and say so) once the answer is out.
            txn.abandon_request();
        }
        /// The body is given twice, declared in the response (`with_body()`, its HTTP
        /// head's Content-Length) and handed over as `body`: when the two disagree, what
        /// would go out is invalid HTTP (a head announcing bytes that never come, or a body
        /// the head does not announce), so it does not go out.
        fn mismatch(res: &Response, body: &ReplyBody, whole: bool) -> Option<Error> {
            let wrong = |m: String| Some(Error::new(crate::ErrorKind::InvalidMessage, 0, m));
            let declared = res.body.is_some();
            let len = match body {
                ReplyBody::Empty if declared => {
                    return wrong("the response declares a body, the reply gives none".into())
                }
                ReplyBody::Full(_) | ReplyBody::Reader(_) if !declared => {
                    return wrong("the reply gives a body, the response declares none".into())
                }
                // A 206 prefix is not the whole body its head describes.
                ReplyBody::Full(b) if whole => b.len() as u64,
                _ => return None,
            };
            let head = match (&res.http_response, &res.http_request) {
                (Some(h), _) => &h.headers,
                (None, Some(h)) => &h.headers,
                (None, None) => return None,
            };
            let cl = head
                .get_all("Content-Length")
                .find(|v| crate::decode::decimal(v) != Some(len))?;
            wrong(format!(
                "the encapsulated head says Content-Length: {} but the reply body has {len} bytes",
                String::from_utf8_lossy(cl)
            ))
        }
        let checked = match mismatch(&res, &body, original_from.is_none()) {
            Some(e) => {
                tracing::error!("reply not sent, answering 500: {e}");
                Err(e)
            }
            None => Ok(res),
        };
        if let Err(e) = checked.and_then(|res| txn.respond(res)) {
            // The application broke a rule (a 206 without Allow: 206, sections that do not
            // suit the method, a body that does not match its head ...): a server error is
            // all that can be said.
            log_debug(&format!("refused response: {e}"));
            let _ = txn.respond(self.error_response(ErrorStatus::ServerError, &istag));
            let _ = conn.flush_out(txn).await;
            return false;
        }
        if txn.state() == ServerState::Responding {
            let sent = match body {
                ReplyBody::Empty => Ok(()),
                ReplyBody::Full(b) => txn
                    .send_data(b)
                    .map_err(|e| io::Error::other(e.to_string())),
                ReplyBody::Reader(mut r) => {
                    let mut ok = Ok(());
                    loop {
                        let mut buf = BytesMut::with_capacity(64 * 1024);
                        match r.read_buf(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => {
                                if let Err(e) = txn.send_data(buf.freeze()) {
                                    ok = Err(io::Error::other(e.to_string()));
                                    break;
                                }
                                if conn.flush_out(txn).await.is_err() {
                                    return false;
                                }
                            }
                            Err(e) => {
                                ok = Err(e);
                                break;
                            }
                        }
                    }
                    ok
                }
            };
            if sent.is_err() {
                // The head is out; the only honest signal left is to cut the connection.
                let _ = conn.flush_out(txn).await;
                return false;
            }
            let ended = match original_from {
                Some(n) => txn.end_use_original_body(n),
                None => txn.end_response(),
            };
            if ended.is_err() {
                return false;
            }
        }
        if conn.flush_out(txn).await.is_err() {
            return false;
        }
        txn.reuse() == Reuse::Keep
    }
}

/// How long to wait before the next `accept` after `e`, given the previous wait.
///
/// Out of file descriptors or memory, the listener stays readable and an immediate retry
/// fails again: back off, doubling up to a second, until connections close. Errors that
/// concern only the connection being accepted (aborted, reset) are retried at once.
fn accept_backoff(e: &io::Error, previous: Duration) -> Duration {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const WSAEMFILE: i32 = 10024;
    let exhausted = matches!(e.raw_os_error(), Some(EMFILE | ENFILE | WSAEMFILE))
        || e.kind() == io::ErrorKind::OutOfMemory;
    if exhausted {
        (previous * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
    } else if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) {
        Duration::ZERO
    } else {
        Duration::from_millis(50)
    }
}

/// The key connections are counted under for [`ServerConfig::max_connections_per_ip`]: the
/// address, or its /64 for IPv6 (one host usually holds a whole /64).
fn peer_key(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = !0u128 << 64;
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
        v4 => v4,
    }
}

/// The connections being served, by client address, and which of them are idle (waiting
/// for a request) since when: the oldest idle one makes room when the server is full.
#[derive(Default)]
struct Slots {
    inner: std::sync::Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    live: HashMap<u64, (IpAddr, Option<Instant>, Arc<Notify>)>,
    per_ip: HashMap<IpAddr, usize>,
    /// Idle connections, oldest first.
    idle: BTreeSet<(Instant, u64)>,
    refusing: usize,
}

enum Admission {
    /// Served; `evicted` when an idle connection was closed to make room.
    Admitted {
        slot: Slot,
        evicted: bool,
    },
    Refused,
}

impl SlotsInner {
    fn remove(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (ip, since, notify) = self.live.remove(&id)?;
        if let Some(t) = since {
            self.idle.remove(&(t, id));
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(notify)
    }

    /// Closes the oldest idle connection (of `ip` when given); false when none is idle.
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .idle
            .iter()
            .map(|&(_, id)| id)
            .find(|id| ip.is_none_or(|ip| self.live.get(id).is_some_and(|l| l.0 == ip)));
        match victim.and_then(|id| self.remove(id)) {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        // A panic while holding the lock leaves consistent maps (every update is a single
        // step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, peer: SocketAddr, max: usize, per_ip: usize) -> Admission {
        let ip = peer_key(peer);
        let mut s = self.lock();
        let mut evicted = false;
        if s.per_ip.get(&ip).copied().unwrap_or(0) >= per_ip {
            if !s.evict_oldest(Some(ip)) {
                return Admission::Refused;
            }
            evicted = true;
        }
        if s.live.len() >= max {
            if !s.evict_oldest(None) {
                return Admission::Refused;
            }
            evicted = true;
        }
        let id = s.next_id;
        s.next_id += 1;
        let now = Instant::now();
        let notify = Arc::new(Notify::new());
        s.live.insert(id, (ip, Some(now), notify.clone()));
        s.idle.insert((now, id));
        *s.per_ip.entry(ip).or_insert(0) += 1;
        Admission::Admitted {
            slot: Slot {
                slots: self.clone(),
                id,
                notify,
            },
            evicted,
        }
    }

    /// A place among the refusals being answered, if one is free.
    fn refusing(self: &Arc<Self>, max: usize) -> Option<Refusing> {
        let mut s = self.lock();
        if s.refusing >= max {
            return None;
        }
        s.refusing += 1;
        Some(Refusing(self.clone()))
    }
}

/// A connection's place in [`Slots`], given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    notify: Arc<Notify>,
}

impl Slot {
    /// Marks the connection idle (waiting for a request); false when it was already closed
    /// to make room.
    fn idle(&self) -> bool {
        let mut s = self.slots.lock();
        let now = Instant::now();
        let Some(entry) = s.live.get_mut(&self.id) else {
            return false;
        };
        if entry.1.is_none() {
            entry.1 = Some(now);
            s.idle.insert((now, self.id));
        }
        true
    }

    /// Marks the connection busy (a request is arriving); false when it was closed to make
    /// room before the request began.
    fn busy(&self) -> bool {
        let mut s = self.slots.lock();
        let Some(entry) = s.live.get_mut(&self.id) else {
            return false;
        };
        if let Some(t) = entry.1.take() {
            s.idle.remove(&(t, self.id));
        }
        true
    }

    /// Completes when the connection is closed to make room.
    async fn evicted(&self) {
        self.notify.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(self.id);
    }
}

/// A refusal being answered, counted against [`ServerConfig::max_refusals`].
struct Refusing(Arc<Slots>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.lock().refusing -= 1;
    }
}

fn log_debug(msg: &str) {
    tracing::debug!("{msg}");
}

/// The connection, its place among the served ones, and the clock of the head or body
/// being read.
struct Conn<'s> {
    io: Box<dyn Io>,
    cfg: &'s ServerConfig,
    stats: &'s Stats,
    slot: Slot,
    /// Set from the first byte of a request head; replaced at the end of the head by the
    /// body's; cleared when a new transaction may wait idle.
    clock: Option<ReadClock>,
}

/// Why a timed read failed.
enum ReadFail {
    /// A deadline, the minimum rate or the per-read timeout ran out.
    Timeout,
    Io(io::Error),
}

/// The time budget of one head or body: a hard limit and a minimum rate, both on the time
/// spent waiting for the client (time the service takes between reads is not the client's).
#[derive(Debug, Clone, Copy)]
struct ReadClock {
    waited: Duration,
    bytes: u64,
    limit: Option<Duration>,
    rate: Option<MinRate>,
}

impl ReadClock {
    fn new(limit: Option<Duration>, rate: Option<MinRate>) -> Self {
        ReadClock {
            waited: Duration::ZERO,
            bytes: 0,
            limit,
            rate: rate.filter(|r| r.bytes_per_sec > 0),
        }
    }

    /// How much longer the next read may wait, `None` for no bound.
    fn allowance(&self) -> Option<Duration> {
        let hard = self.limit.map(|l| l.saturating_sub(self.waited));
        let rate = self.rate.map(|r| {
            // The bytes so far earned bytes / rate of waiting on top of the grace.
            let whole = Duration::from_secs(self.bytes / r.bytes_per_sec);
            let part = u128::from(self.bytes % r.bytes_per_sec) * 1_000_000_000
                / u128::from(r.bytes_per_sec);
            let earned = whole.saturating_add(Duration::from_nanos(part as u64));
            r.grace.saturating_add(earned).saturating_sub(self.waited)
        });
        match (hard, rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Conn<'_> {
    async fn read(&mut self, txn: &mut ServerTransaction) -> io::Result<usize> {
        let buf = txn.decoder_mut().buffer_mut();
        buf.reserve(16 * 1024);
        self.io.read_buf(buf).await
    }

    /// Reads within what the clock allows (and `per_read`), and charges the wait to it.
    async fn read_timed(
        &mut self,
        txn: &mut ServerTransaction,
        per_read: Option<Duration>,
    ) -> Result<usize, ReadFail> {
        let clock = self.clock.unwrap_or(ReadClock::new(None, None));
        let allow = match (clock.allowance(), per_read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let started = Instant::now();
        let r = match allow {
            Some(d) => timeout(d, self.read(txn)).await,
            None => Ok(self.read(txn).await),
        };
        if let Some(c) = &mut self.clock {
            c.waited += started.elapsed();
            if let Ok(Ok(n)) = &r {
                c.bytes += *n as u64;
            }
        }
        match r {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ReadFail::Io(e)),
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(ReadFail::Timeout)
            }
        }
    }

    async fn flush_out(&mut self, txn: &mut ServerTransaction) -> io::Result<()> {
        let out = txn.outgoing();
        let write = async {
            self.io.write_all_buf(out).await?;
            self.io.flush().await
        };
        match timeout(self.cfg.write_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }
}

/// Why reading a body failed.
#[derive(Debug)]
pub enum BodyError {
    /// The client sent nothing for [`ServerConfig::read_timeout`], or the body took longer
    /// than [`ServerConfig::body_timeout`] or fell below [`ServerConfig::min_rate`].
    Timeout,
    /// The client closed the connection in the middle of the body.
    Eof,
    /// The body was malformed.
    Protocol(Error),
    /// The connection failed.
    Io(io::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Timeout => f.write_str("the client stalled"),
            BodyError::Eof => f.write_str("the client closed the connection inside the body"),
            BodyError::Protocol(e) => write!(f, "malformed body: {e}"),
            BodyError::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The streaming echo of a [`Body`]: not asked for, ready (the 200 to send), or under way.
enum Echo {
    Ready(Box<Response>),
    Streaming,
}

/// The request body, read from the connection as the application asks for it.
pub struct Body<'c, 's> {
    conn: &'c mut Conn<'s>,
    txn: &'c mut ServerTransaction,
    /// Preview bytes, handed out again before the rest.
    replay: VecDeque<Bytes>,
    done: bool,
    spool: Option<Spool>,
    failed: Option<BodyError>,
    read: u64,
    echo: Option<Echo>,
    /// Streaming: pieces handed out but not sent on yet. The application has looked at all
    /// but the newest when it asks for more; all but the last `holdback` bytes then go.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    holdback: usize,
}

impl std::fmt::Debug for Body<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("read", &self.read)
            .field("done", &self.done)
            .finish()
    }
}

impl<'c, 's> Body<'c, 's> {
    fn new(conn: &'c mut Conn<'s>, txn: &'c mut ServerTransaction, spool: Option<Spool>) -> Self {
        let done = !txn.receiving();
        Body {
            conn,
            txn,
            replay: VecDeque::new(),
            done,
            spool,
            failed: None,
            read: 0,
            echo: None,
            pending: VecDeque::new(),
            pending_len: 0,
            holdback: 0,
        }
    }

    fn streaming(&self) -> bool {
        matches!(self.echo, Some(Echo::Streaming))
    }

    /// Starts answering now with a 200 that echoes the client's message, while the body is
    /// still being read: the pieces [`Body::chunk`] hands out are sent back as the
    /// application moves past them. For scanners behind clients that wait for the answer
    /// before sending more (squid keeps the whole body, 64 KiB at most, until the final
    /// answer when a preview was offered): scan each piece, then let it through.
    ///
    /// The answer is then fixed: if the application returns [`Reply::unmodified`] the rest
    /// of the body is forwarded and the echo ends normally; any other reply (a late finding)
    /// closes the connection without the last chunk, so the client sees a failed answer,
    /// never a complete one. Bytes are only echoed once the application has asked for the
    /// piece after theirs, and the last `holdback` bytes it saw are kept back too: a scanner
    /// that confirms a match only some bytes after it ends (a card number needs the byte
    /// after its last digit) sets `holdback` to that distance, so the bytes of a finding are
    /// not passed on.
    ///
    /// Must be called before [`Body::chunk`] handed out any byte; errors otherwise, and for
    /// requests without a body.
    pub async fn start_echo(&mut self, holdback: usize) -> Result<(), BodyError> {
        if self.streaming() {
            return Ok(());
        }
        self.holdback = holdback;
        let Some(Echo::Ready(res)) = self.echo.take() else {
            return Err(BodyError::Protocol(Error::new(
                crate::ErrorKind::InvalidState,
                0,
                "start_echo needs a REQMOD or RESPMOD with a body",
            )));
        };
        if res.body.is_none() || self.read > 0 {
            self.echo = Some(Echo::Ready(res));
            return Err(BodyError::Protocol(Error::new(
                crate::ErrorKind::InvalidState,
                0,
                "start_echo must come before the body is read",
            )));
        }
        self.txn.respond(*res).map_err(BodyError::Protocol)?;
        self.conn.flush_out(self.txn).await.map_err(BodyError::Io)?;
        self.echo = Some(Echo::Streaming);
        // Nothing will be echoed from a spool any more.
        self.spool = None;
        Ok(())
    }

    /// Sends one piece of the echo.
    async fn forward(&mut self, b: Bytes) -> Result<(), BodyError> {
        self.txn.send_data(b).map_err(BodyError::Protocol)?;
        self.conn.flush_out(self.txn).await.map_err(BodyError::Io)
    }

    /// Sends on what was handed out, all but the last `keep` bytes.
    async fn release(&mut self, keep: usize) -> Result<(), BodyError> {
        while self.pending_len > keep {
            let mut front = self
                .pending
                .pop_front()
                .expect("pending_len counts the pieces");
            let excess = self.pending_len - keep;
            self.pending_len -= front.len();
            if front.len() > excess {
                let rest = front.split_off(excess);
                self.pending_len += rest.len();
                self.pending.push_front(rest);
            }
            self.forward(front).await?;
        }
        Ok(())
    }

    /// Ends a streaming echo: what the application saw, the rest of the body as it arrives,
    /// and the last chunk.
    async fn finish_echo(&mut self) -> Result<(), BodyError> {
        self.release(0).await?;
        while let Some(b) = self.replay.pop_front() {
            self.forward(b).await?;
        }
        while let Some(b) = self.next_raw().await? {
            self.forward(b).await?;
        }
        self.txn.end_response().map_err(BodyError::Protocol)?;
        self.conn.flush_out(self.txn).await.map_err(BodyError::Io)
    }

    fn into_parts(self) -> (&'c mut Conn<'s>, &'c mut ServerTransaction, Option<Spool>) {
        (self.conn, self.txn, self.spool)
    }

    /// Bytes of body handed to the application so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next piece of the body, or `None` at its end. After an error the server answers
    /// 400 or 408 (or just closes) whatever the application replies.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, &BodyError> {
        if self.streaming() {
            // The application asks for more: what it has seen passed its look, but for the
            // hold-back.
            if let Err(e) = self.release(self.holdback).await {
                self.failed = Some(e);
                return Err(self.failed.as_ref().expect("just set"));
            }
        }
        let next = match self.replay.pop_front() {
            Some(b) => Ok(Some(b)),
            None => self.next_raw().await,
        };
        match next {
            Ok(Some(b)) => {
                self.read += b.len() as u64;
                if self.streaming() {
                    self.pending_len += b.len();
                    self.pending.push_back(b.clone());
                }
                Ok(Some(b))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e);
                Err(self.failed.as_ref().expect("just set"))
            }
        }
    }

    /// Reads pieces from the wire, into the spool when one is kept.
    async fn next_raw(&mut self) -> Result<Option<Bytes>, BodyError> {
        if self.failed.is_some() || self.done {
            return Ok(None);
        }
        loop {
            match self.txn.poll_event() {
                Ok(Some(ServerEvent::Data(d))) => {
                    if let Some(s) = &mut self.spool {
                        s.push(d.clone()).await.map_err(BodyError::Io)?;
                    }
                    return Ok(Some(d));
                }
                Ok(Some(ServerEvent::End(_))) | Ok(Some(ServerEvent::PreviewEnd { .. })) => {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(ServerEvent::Request(_))) => {
                    return Err(BodyError::Protocol(Error::new(
                        crate::ErrorKind::InvalidState,
                        self.txn.decoder_mut().position(),
                        "a second request head inside a transaction",
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(BodyError::Protocol(e)),
            }
            if !self.txn.receiving() {
                self.done = true;
                return Ok(None);
            }
            let per_read = Some(self.conn.cfg.read_timeout);
            match self.conn.read_timed(self.txn, per_read).await {
                Err(ReadFail::Timeout) => return Err(BodyError::Timeout),
                Err(ReadFail::Io(e)) => return Err(BodyError::Io(e)),
                Ok(0) => {
                    let _ = self.txn.on_eof();
                    return Err(BodyError::Eof);
                }
                Ok(_) => {}
            }
        }
    }

    /// Reads the preview into the replay queue; `Ok(true)` when it ended with `ieof`.
    async fn read_preview(&mut self) -> Result<bool, BodyError> {
        while let Some(b) = self.next_raw().await? {
            self.replay.push_back(b);
        }
        let ieof = matches!(self.txn.state(), ServerState::Decide { ieof: true });
        // After the preview's zero chunk more body may follow, after 100 Continue.
        self.done = ieof;
        Ok(ieof)
    }

    async fn send_continue(&mut self) -> Result<(), BodyError> {
        self.txn.send_continue().map_err(BodyError::Protocol)?;
        self.conn.flush_out(self.txn).await.map_err(BodyError::Io)?;
        self.done = false;
        Ok(())
    }

    /// Reads the rest of the body, dropping it (spooling it when a spool is kept).
    async fn drain(&mut self) -> Result<(), BodyError> {
        self.replay.clear();
        while self.next_raw().await?.is_some() {}
        Ok(())
    }
}

/// Keeps a copy of a request body for an echo: in memory up to a limit, then in a temporary
/// file, so that memory stays bounded whatever the body size.
///
/// The file is anonymous (`O_TMPFILE` on Linux; elsewhere created under a random name with mode
/// 0600 and unlinked at once): no name to guess or to pre-create, no other reader, and nothing
/// left behind when the handle goes, however the process ends. A spool that cannot keep the
/// body (the directory is unusable, the disk is full) lets the body be read on and drops its
/// copy; only an echo needs it, and that echo becomes a 500 with the error logged.
struct Spool {
    mem: Vec<Bytes>,
    mem_len: usize,
    limit: usize,
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    failed: Option<io::Error>,
}

impl Spool {
    fn new(limit: usize, dir: PathBuf) -> Self {
        Spool {
            mem: Vec::new(),
            mem_len: 0,
            limit,
            dir,
            file: None,
            failed: None,
        }
    }

    /// Keeps `b`; never fails (see [`Spool`]): a failure is kept for [`Spool::into_reader`].
    async fn push(&mut self, b: Bytes) -> io::Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        if let Err(e) = self.keep(b).await {
            self.failed = Some(io::Error::new(
                e.kind(),
                format!(
                    "spooling the body for an echo in {}: {e}",
                    self.dir.display()
                ),
            ));
            self.mem.clear();
            self.file = None;
        }
        Ok(())
    }

    async fn keep(&mut self, b: Bytes) -> io::Result<()> {
        if self.file.is_none() && self.mem_len + b.len() <= self.limit {
            self.mem_len += b.len();
            self.mem.push(b);
            return Ok(());
        }
        if self.file.is_none() {
            let dir = self.dir.clone();
            let f = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                .await
                .map_err(io::Error::other)??;
            let mut f = tokio::fs::File::from_std(f);
            for m in self.mem.drain(..) {
                f.write_all(&m).await?;
            }
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("created above");
        f.write_all(&b).await
    }

    async fn into_reader(mut self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.file.take() {
            None => {
                let mut all = BytesMut::with_capacity(self.mem_len);
                for m in &self.mem {
                    all.extend_from_slice(m);
                }
                Ok(Box::new(io::Cursor::new(all.freeze())))
            }
            Some(mut f) => {
                use tokio::io::AsyncSeekExt;
                f.flush().await?;
                f.seek(io::SeekFrom::Start(0)).await?;
                Ok(Box::new(f))
            }
        }
    }
}

#[cfg(test)]
mod spool_tests {
    use super::*;

    #[tokio::test]
    async fn an_unusable_directory_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("icap-no-such-dir-{}", std::process::id()));
        let mut spool = Spool::new(4, dir.clone());
        spool.push(Bytes::from_static(b"abc")).await.unwrap();
        // Past the memory part: the file cannot be made, and the body goes on unkept.
        spool.push(Bytes::from_static(b"defg")).await.unwrap();
        spool.push(Bytes::from_static(b"hij")).await.unwrap();
        assert!(spool.mem.is_empty());
        let Err(e) = spool.into_reader().await else {
            panic!("a reader without the body");
        };
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let msg = e.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    #[tokio::test]
    async fn spilled_bodies_read_back_whole() {
        let mut spool = Spool::new(4, std::env::temp_dir());
        for piece in [&b"abc"[..], b"defg", b"hij"] {
            spool.push(Bytes::from_static(piece)).await.unwrap();
        }
        assert!(spool.file.is_some());
        let mut back = Vec::new();
        spool
            .into_reader()
            .await
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, b"abcdefghij");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors, accept once retried every 50 ms forever and said nothing; now it
    /// backs off up to a second, and per-connection failures are retried at once.
    #[test]
    fn accept_backs_off_when_out_of_descriptors() {
        let emfile = io::Error::from_raw_os_error(24);
        let mut wait = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..9 {
            wait = accept_backoff(&emfile, wait);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        let enfile = io::Error::from_raw_os_error(23);
        assert_eq!(
            accept_backoff(&enfile, Duration::ZERO),
            Duration::from_millis(10)
        );
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(
            accept_backoff(&aborted, Duration::from_secs(1)),
            Duration::ZERO
        );
        let other = io::Error::other("something else");
        assert_eq!(
            accept_backoff(&other, Duration::ZERO),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn read_clock_allows_the_smaller_of_deadline_and_rate() {
        let rate = MinRate {
            bytes_per_sec: 1000,
            grace: Duration::from_secs(2),
        };
        let mut c = ReadClock::new(Some(Duration::from_secs(10)), Some(rate));
        assert_eq!(c.allowance(), Some(Duration::from_secs(2)));
        // 1500 bytes earn 1.5 s on top of the grace; 1 s already waited.
        c.bytes = 1500;
        c.waited = Duration::from_secs(1);
        assert_eq!(c.allowance(), Some(Duration::from_millis(2500)));
        // Far ahead of the rate: the hard limit decides.
        c.bytes = 1_000_000;
        assert_eq!(c.allowance(), Some(Duration::from_secs(9)));
        // Behind the rate: nothing left.
        c.bytes = 0;
        c.waited = Duration::from_secs(3);
        assert_eq!(c.allowance(), Some(Duration::ZERO));
        // No limit, no rate (or a zero rate): unbounded.
        assert_eq!(ReadClock::new(None, None).allowance(), None);
        let zero = MinRate {
            bytes_per_sec: 0,
            grace: Duration::ZERO,
        };
        assert_eq!(ReadClock::new(None, Some(zero)).allowance(), None);
        // Huge counts saturate instead of overflowing.
        let mut c = ReadClock::new(
            None,
            Some(MinRate {
                bytes_per_sec: 1,
                grace: Duration::MAX,
            }),
        );
        c.bytes = u64::MAX;
        assert_eq!(c.allowance(), Some(Duration::MAX));
    }

    #[test]
    fn peers_are_counted_by_address_and_ipv6_by_64() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:2000".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1000".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let v4: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:2".parse().unwrap();
        assert_eq!(peer_key(v4), peer_key(mapped));
        assert_ne!(peer_key(v4), peer_key("192.0.2.8:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn the_oldest_idle_connection_of_the_address_makes_room() {
        let slots = Arc::new(Slots::default());
        let p1: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let p2: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let admit = |p, max, per_ip| match slots.admit(p, max, per_ip) {
            Admission::Admitted { slot, evicted } => Some((slot, evicted)),
            Admission::Refused => None,
        };
        let (a, _) = admit(p1, 3, 2).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (b, _) = admit(p1, 3, 2).unwrap();
        let (c, _) = admit(p2, 3, 2).unwrap();
        assert!(a.busy() && c.busy());
        // p1 is at its limit; its only idle connection (b) makes room.
        let (d, evicted) = admit(p1, 3, 2).unwrap();
        assert!(evicted);
        assert!(!b.idle() && !b.busy(), "b was closed");
        assert!(d.busy());
        // Full, nothing idle: refused.
        assert!(admit(p2, 3, 2).is_none());
        // a idles: the newcomer from p2 takes its place.
        assert!(a.idle());
        let (_e, evicted) = admit(p2, 3, 2).unwrap();
        assert!(evicted);
        assert!(!a.busy());
        drop((b, c, d));
        assert_eq!(slots.lock().live.len(), 1);
        assert!(!slots.lock().per_ip.contains_key(&peer_key(p1)));
    }
}
