//! The async ICAP server (feature `server`): tokio front end for
//! [`ServerTransaction`](crate::ServerTransaction), with services as tower services.
//!
//! A [`Server`] routes each request by the path of its ICAP URI to a service, and answers
//! OPTIONS itself from the [`ServiceOptions`] declared with the service. A service is any
//! `tower::Service<IncomingRequest, Response = Reply>` (a closure through
//! `tower::service_fn`, wrapped in any tower layer: timeouts, concurrency limits, load
//! shedding, tracing); its error is logged and answered `500`. It receives the heads and an
//! owned, streaming [`Body`]; whatever it returns, the rules hold: the service's ISTag goes
//! into every answer, a [`Reply::Unmodified`] becomes a 204 only where the client allowed one
//! or in answer to a preview (otherwise the original message is echoed as a 200, from a
//! spool kept for that case), `100 Continue` goes out only when the service reads past the
//! preview and never after `ieof`, a 206 needs `Allow: 206`, unknown services get 404,
//! methods a service does not offer 405, unknown methods 501, other versions 505, malformed
//! requests 400 with `Connection: close`, and a client that stalls gets 408.
//!
//! Connections are kept alive and pipelined requests are answered in order. Limits bound
//! connections (in total and per client address), heads and bodies; deadlines and a minimum
//! rate bound how long an idle, slow or stalled client can hold a connection (see
//! [`ServerConfig`]). When the server is full, a connection behind the minimum rate, or idle
//! beyond a grace, makes room for a newcomer; with none, newcomers wait in the listen backlog
//! for a slot, and only after [`ServerConfig::queue_timeout`] get a 503 they can read (after
//! the TLS handshake, their request drained). [`Server::serve`] stops accepting on shutdown and lets transactions
//! in flight finish; [`Server::serve_connection`] serves one connection the caller accepted
//! (a Unix socket, its own TLS, a socket handed over by a proxy). TLS (with optional
//! client-certificate verification) is rustls.
//!
//! # Write an ICAP service
//!
//! 1. **Declare it.** A [`ServiceOptions`] says which methods the service takes, its ISTag
//!    (the server writes it into every answer: the service never repeats it), the preview
//!    it wants and whether it can answer 204. The server answers OPTIONS from it.
//! 2. **Read the body.** [`IncomingRequest`] derefs to the ICAP [`Request`](crate::Request)
//!    (ICAP headers, encapsulated HTTP heads); `req.body` is a [`Body`]: call
//!    [`Body::data`] until `None`, or use it as an `http_body::Body`. With a preview, the
//!    first read past it sends `100 Continue`; to decide on the preview alone, look at
//!    [`Body::preview`] and answer without reading on.
//! 3. **Answer.** [`Reply::unmodified`] lets the message through (204, or a 200 echo when the
//!    client does not take 204); [`Reply::page`] replaces it by an HTTP error page (a block
//!    page); [`Reply::Respond`] with a response built from [`Reply::ok`] sends a modified
//!    message. An `Err` becomes a 500.
//! 4. **Stream when the client waits.** A client such as squid sends no more than 64 KiB
//!    until an answer starts: [`Body::start_echo`] starts a 200 echo at once and passes on
//!    each piece once the service has looked at it; a late finding cuts the answer.
//! 5. **Serve it**, with the layers it needs, on listeners ([`Server::serve`]) or on
//!    connections accepted elsewhere ([`Server::serve_connection`]). To test it without a
//!    server, call it with [`IncomingRequest::new`] and [`Body::from_bytes`].
//!
//! ```
//! use std::time::Duration;
//! use icap::BoxError;
//! use icap::server::{IncomingRequest, Reply, Server, ServerConfig};
//! use icap::{Method, ServiceOptions};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Blocks uploads that contain "secret".
//! let words = tower::service_fn(|mut req: IncomingRequest| async move {
//!     let mut tail = Vec::new();
//!     while let Some(piece) = req.body.data().await? {
//!         tail.extend_from_slice(&piece);
//!         if tail.windows(6).any(|w| w == b"secret") {
//!             return Ok(Reply::page(403, "Forbidden", "text/plain", "Blocked\n")?);
//!         }
//!         tail.drain(..tail.len().saturating_sub(5));
//!     }
//!     Ok::<_, BoxError>(Reply::unmodified())
//! });
//! let options = ServiceOptions::default()
//!     .with_methods(vec![Method::Reqmod])
//!     .with_istag("\"words-1\"")
//!     .with_allow_204(true);
//! let service = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(10))
//!     .service(words);
//! let server = Server::new(ServerConfig::default()).route("reqmod", options, service);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(server.serve(listener, async {
//!     let _ = stopped.await;
//! }));
//!
//! // A client uploads "my secret".
//! let http = "POST / HTTP/1.1\r\nHost: example.com\r\n\r\n";
//! let request = format!(
//!     "REQMOD icap://127.0.0.1/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
//!      Connection: close\r\nEncapsulated: req-hdr=0, req-body={}\r\n\r\n{http}\
//!      9\r\nmy secret\r\n0\r\n\r\n",
//!     http.len()
//! );
//! let mut client = tokio::net::TcpStream::connect(addr).await?;
//! client.write_all(request.as_bytes()).await?;
//! let mut answer = String::new();
//! client.read_to_string(&mut answer).await?;
//! assert!(answer.starts_with("ICAP/1.0 200 OK\r\n"));
//! assert!(answer.contains("ISTag: \"words-1\"\r\n"));
//! assert!(answer.contains("HTTP/1.1 403 Forbidden\r\n"));
//! assert!(answer.ends_with("8\r\nBlocked\n\r\n0\r\n\r\n"));
//!
//! let _ = stop.send(());
//! let stats = running.await??;
//! assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
//! # Ok(())
//! # }
//! ```

mod answer;
mod body;
mod config;
mod conn;
mod exchange;
mod service;
mod slots;
mod spool;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use body::{Body, BodyError};
pub use config::{MinRate, ServerConfig};
pub use service::{IncomingRequest, PeerInfo, Reply, ReplyBody};

use crate::BoxError;

use crate::options::ServiceOptions;
use service::Route;
use slots::{Admission, Policy, Slots};

/// An ICAP server: services by path, configuration, optional TLS.
pub struct Server {
    routes: HashMap<String, Arc<Route>>,
    config: ServerConfig,
    tls: Option<TlsSource>,
    stats: Arc<Stats>,
}

/// Where each handshake takes its rustls configuration from.
#[derive(Clone)]
enum TlsSource {
    Fixed(tokio_rustls::TlsAcceptor),
    /// Read at each handshake, so that a reload of the client CA (which needs a new
    /// configuration, not only a new certificate) reaches new connections.
    Reloadable(crate::tls::ReloadableServerTls),
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
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests received (heads decoded), whatever their answer.
    pub requests: AtomicU64,
    /// Connections refused with 503 (or closed unanswered beyond
    /// [`ServerConfig::max_refusals`]) for the connection limits.
    pub refused: AtomicU64,
    /// Connections closed to make room for a new one: idle beyond
    /// [`ServerConfig::eviction_grace`], or behind the minimum rate.
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
            stats: Arc::new(Stats::default()),
        }
    }

    /// Serves `service` at `path` (`"reqmod"` or `"/reqmod"` answer `icap://host/reqmod`),
    /// declared by `options`: OPTIONS is answered from them, methods they do not list get
    /// 405, and their ISTag goes into every answer of the service.
    ///
    /// The service is cloned for each request (tower's way of sharing one: a concurrency
    /// limit or a rate limit counts across the clones).
    pub fn route<S>(mut self, path: &str, options: ServiceOptions, service: S) -> Self
    where
        S: tower::Service<IncomingRequest, Response = Reply> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.routes.insert(
            path.trim_start_matches('/').to_string(),
            Arc::new(Route::new(options, service)),
        );
        self
    }

    /// Makes OPTIONS of the service at `path` (routed before) answer 503 while `available`
    /// returns false: for a service whose engine is down, so that clients and proxies that
    /// probe with OPTIONS (squid, this crate's client) take it out of rotation instead of
    /// waiting on it. The service still answers its own transactions (with an error, as it
    /// sees fit). `available` is called for each OPTIONS request: keep it cheap (an atomic
    /// load).
    pub fn availability<F>(mut self, path: &str, available: F) -> Self
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        if let Some(route) = self
            .routes
            .get_mut(path.trim_start_matches('/'))
            .and_then(Arc::get_mut)
        {
            route.available = Some(Arc::new(available));
        }
        self
    }

    /// Speaks TLS (ICAPS) with this rustls configuration on the connections
    /// [`Server::serve`] accepts, e.g. from [`ServerTls`](crate::tls::ServerTls) (add
    /// `require_client_certs(ca)` to ask clients for certificates):
    ///
    /// ```
    /// use std::sync::Arc;
    /// use icap::server::{Reply, Server};
    /// use icap::tls::ServerTls;
    /// use icap::{Method, ServiceOptions};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A certificate for "localhost" (yours comes from files already).
    /// let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    /// let dir = std::env::temp_dir().join(format!("icap-tls-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// std::fs::write(dir.join("server.pem"), made.cert.pem())?;
    /// std::fs::write(dir.join("server.key"), made.signing_key.serialize_pem())?;
    ///
    /// let tls = ServerTls::from_pem_files(dir.join("server.pem"), dir.join("server.key"))?;
    /// let options = ServiceOptions::default()
    ///     .with_methods(vec![Method::Reqmod])
    ///     .with_istag("\"tls-1\"");
    /// let pass = tower::service_fn(|_| async { Ok::<_, std::convert::Infallible>(Reply::unmodified()) });
    /// let server = Server::default().route("reqmod", options, pass).tls(tls.build()?);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// tokio::spawn(server.serve(listener, std::future::pending()));
    ///
    /// // A client that trusts the certificate asks for the options over TLS.
    /// let mut roots = rustls::RootCertStore::empty();
    /// roots.add(made.cert.der().clone())?;
    /// let ring = Arc::new(rustls::crypto::ring::default_provider());
    /// let client = rustls::ClientConfig::builder_with_provider(ring)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let tcp = tokio::net::TcpStream::connect(addr).await?;
    /// let mut s = tokio_rustls::TlsConnector::from(Arc::new(client))
    ///     .connect("localhost".try_into()?, tcp)
    ///     .await?;
    /// s.write_all(b"OPTIONS icaps://localhost/reqmod ICAP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    ///     .await?;
    /// let mut answer = String::new();
    /// s.read_to_string(&mut answer).await?;
    /// assert!(answer.starts_with("ICAP/1.0 200 OK\r\n"));
    /// assert!(answer.contains("ISTag: \"tls-1\"\r\n"));
    /// std::fs::remove_dir_all(dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(TlsSource::Fixed(tokio_rustls::TlsAcceptor::from(config)));
        self
    }

    /// Speaks TLS (ICAPS) with the configuration `tls` holds at each handshake: after
    /// [`ReloadableServerTls::reload`](crate::tls::ReloadableServerTls::reload), new
    /// connections get the new certificate and key and are checked against the new client
    /// CA; connections already open keep what they were accepted with. (With
    /// [`tls`](Self::tls)`(tls.config())` certificates are reloaded too, but the client CA in
    /// force stays the one of that configuration.)
    pub fn reloadable_tls(mut self, tls: &crate::tls::ReloadableServerTls) -> Self {
        self.tls = Some(TlsSource::Reloadable(tls.clone()));
        self
    }

    /// The acceptor for the next handshake, when TLS is on.
    pub(crate) fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.as_ref().map(|t| match t {
            TlsSource::Fixed(a) => a.clone(),
            TlsSource::Reloadable(r) => tokio_rustls::TlsAcceptor::from(r.config()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The counters, shared with every connection this server serves.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Serves one connection the caller accepted (a Unix socket, a TLS stream it set up
    /// itself, a socket handed over by another process) until the client closes it or it
    /// stays idle for [`ServerConfig::idle_timeout`]. The server's own TLS configuration and
    /// connection limits are not applied: the caller owns the connection.
    ///
    /// ```
    /// use icap::server::{PeerInfo, Reply, Server};
    /// use icap::{Method, ServiceOptions};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let options = ServiceOptions::default()
    ///     .with_methods(vec![Method::Respmod])
    ///     .with_istag("\"pass-1\"");
    /// let pass = tower::service_fn(|_req| async { Ok::<_, std::convert::Infallible>(Reply::unmodified()) });
    /// let server = Server::default().route("respmod", options, pass);
    /// // Any AsyncRead + AsyncWrite: here an in-memory pipe.
    /// let (mut client, io) = tokio::io::duplex(4096);
    /// tokio::spawn(async move { server.serve_connection(io, PeerInfo::unknown()).await });
    /// client
    ///     .write_all(b"OPTIONS icap://x/respmod ICAP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n")
    ///     .await
    ///     .unwrap();
    /// let mut answer = String::new();
    /// client.read_to_string(&mut answer).await.unwrap();
    /// assert!(answer.starts_with("ICAP/1.0 200 OK\r\n"));
    /// assert!(answer.contains("Methods: RESPMOD\r\n"));
    /// # }
    /// ```
    pub async fn serve_connection<I>(&self, io: I, peer: PeerInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        // Never signalled: this connection ends with its client.
        let (_keep, stop) = watch::channel(false);
        self.run(Box::new(io), peer, None, stop).await;
    }

    /// Accepts connections on `listener` until `shutdown` completes, then stops accepting,
    /// lets every transaction in flight finish, closes idle connections, and returns the
    /// counters.
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
        let stats = server.stats.clone();
        let slots = Arc::new(Slots::default());
        let policy = Policy::new(&server.config);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // Small: each acceptor admits what it accepts before it accepts more, so that a full
        // server leaves newcomers in the listen backlog.
        let (conn_tx, mut conn_rx) =
            tokio::sync::mpsc::channel::<(TcpStream, SocketAddr, Admission)>(1);
        let mut acceptors = JoinSet::new();
        for l in listeners {
            let tx = conn_tx.clone();
            let stats = stats.clone();
            let slots = slots.clone();
            acceptors.spawn(async move {
                let mut backoff = Duration::ZERO;
                loop {
                    // Full: leave newcomers in the listen backlog until there is room.
                    slots.room(&policy).await;
                    match l.accept().await {
                        Ok((tcp, peer)) => {
                            backoff = Duration::ZERO;
                            let admission = slots.admit(peer, &policy).await;
                            if tx.send((tcp, peer, admission)).await.is_err() {
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
                    let Some((tcp, peer, admission)) = c else { break };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.set_nodelay(true);
                    let server = server.clone();
                    let stop = stop_rx.clone();
                    match admission {
                        Admission::Admitted { slot, evicted } => {
                            if evicted {
                                stats.evicted.fetch_add(1, Ordering::Relaxed);
                            }
                            tasks.spawn(async move {
                                server.connection(tcp, peer, slot, stop).await;
                            });
                        }
                        Admission::Refused => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            crate::observe::server_refused();
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
}
