//! The async ICAP client (feature `client`): a tokio front end for
//! [`ClientTransaction`](crate::transaction::ClientTransaction),
//! usable directly or as a [`tower::Service`].
//!
//! A [`Client`] talks to one ICAP service offered by one or more servers (the second and
//! later ones are load-balancing and failover partners). It keeps a pool of kept-alive
//! connections per server, never more than the server's `Max-Connections`; caches each
//! server's OPTIONS for its `Options-TTL` (dropped when an answer shows another ISTag) and
//! lets them decide the preview size and `Transfer-*` handling; streams request bodies from
//! memory, files, any `AsyncRead` or any `http_body::Body` without loading them, and
//! streams the answer's body back as an [`AnswerBody`]; and fails over to the next server
//! on connection errors, resets, timeouts, protocol errors and 5xx answers, with bounded
//! retries inside one deadline.
//!
//! Server health follows squid's model (`icap_service_failure_limit`,
//! `icap_service_revival_delay`): [`ClientConfig::failure_limit`] failures within
//! [`ClientConfig::failure_window`] mark a server down; a down server gets no traffic until,
//! [`ClientConfig::revival_delay`] later, an OPTIONS probe answers well. [`Client::health`]
//! shows where each server stands.
//!
//! The DLP scanner's convenience, `Client::scan` (a file in, a verdict out), lives in the
//! `scan` module (feature `scan`).
//!
//! # Call an ICAP server
//!
//! 1. Build a client with [`Client::builder`]: the servers (`icap://` or `icaps://` with
//!    [`ClientTls`](crate::tls::ClientTls)), then timeouts, deadline, pool, balancing, health and preview policy.
//! 2. Describe one call: [`Client::reqmod`] with the HTTP request head, or
//!    [`Client::respmod`] with the HTTP response head, then `.body(..)` (bytes, a file, an
//!    `AsyncRead`, an `http_body::Body`) and any ICAP headers. The client adds the server's
//!    URI, `Allow: 204` and the preview its OPTIONS ask for: never compute them yourself.
//! 3. `.send().await` returns a [`ClientResponse`] when the head has arrived: check
//!    `head.status` (204: the original stands; 200: the modified message is in
//!    `head.http_request`/`head.http_response` and `body`), then read or forward `body`, an
//!    `http_body::Body` of `Bytes`. `.exchange().await` reads everything instead.
//! 4. Through tower: a [`ClientRequest`] (`ClientRequest::reqmod(..)` or
//!    `CallBuilder::into_request`) is the request type, so `ServiceExt::oneshot` drives the
//!    client and layers (timeouts, concurrency limits) wrap it.
//!
//! A round trip against a stand-in server on loopback (a few lines of raw TCP that answer
//! one REQMOD with a 200 and a new body):
//!
//! ```
//! use icap::client::{Client, PreviewPolicy};
//! use icap::HttpRequestHead;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let port = listener.local_addr().unwrap().port();
//! tokio::spawn(async move {
//!     let (mut s, _) = listener.accept().await.unwrap();
//!     let mut got = Vec::new();
//!     while !got.ends_with(b"0\r\n\r\n") {
//!         let mut buf = [0; 4096];
//!         let n = s.read(&mut buf).await.unwrap();
//!         got.extend_from_slice(&buf[..n]);
//!     }
//!     s.write_all(b"ICAP/1.0 200 OK\r\nISTag: \"d1\"\r\n\
//!         Encapsulated: req-hdr=0, req-body=46\r\n\r\n\
//!         POST /upload HTTP/1.1\r\nHost: files.example\r\n\r\n\
//!         8\r\nredacted\r\n0\r\n\r\n").await.unwrap();
//! });
//!
//! let client = Client::builder()
//!     .server(format!("icap://127.0.0.1:{port}/reqmod"))
//!     .preview(PreviewPolicy::Off) // the stand-in has no OPTIONS
//!     .build()
//!     .unwrap();
//! let upload = HttpRequestHead::new(
//!     "POST",
//!     "/upload",
//!     [("Host", "files.example")].into_iter().collect(),
//! );
//! let answer = client
//!     .reqmod(upload)
//!     .body("card 4111 1111 1111 1111")
//!     .send()
//!     .await
//!     .unwrap();
//! assert_eq!(answer.status(), 200);
//! let body = answer.into_body().to_bytes().await.unwrap();
//! assert_eq!(&body[..], b"redacted");
//! # }
//! ```
//!
//! TLS: give `icaps://` servers and a [`ClientTls`](crate::tls::ClientTls) (system roots by default, a private CA,
//! a pinned certificate, a client certificate):
//!
//! ```no_run
//! use icap::client::Client;
//! use icap::tls::ClientTls;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ClientTls::default()
//!     .with_ca_file("/etc/icap/ca.pem")?
//!     .with_client_cert_files("/etc/icap/client.pem", "/etc/icap/client.key")?;
//! let client = Client::builder()
//!     .server("icaps://dlp1.example:11344/reqmod")
//!     .server("icaps://dlp2.example:11344/reqmod")
//!     .tls(tls)
//!     .build()?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod body;
mod config;
mod digest;
mod error;
mod failover;
mod health;
mod io;
mod options;
mod options_cache;
mod pool;
mod request;
mod response;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub use body::{AnswerBody, BodySource};
pub use config::{Balance, ClientBuilder, ClientConfig, PreviewPolicy};

pub use request::{CallBuilder, ClientRequest, Progress};
pub use response::{ClientResponse, Exchange, ServerReport};

pub use error::{ClientError, TlsFailure};

use crate::options::ServiceOptions;
use crate::proto::error::Error;
use crate::proto::head::{HttpRequestHead, HttpResponseHead};
use crate::uri::IcapUri;
use crate::ServerHealth;

use failover::counts_against_server;
use pool::Endpoint;

/// An ICAP client for one service on one or more servers. Cheap to clone (clones share
/// the pool, the OPTIONS cache and the health of each server).
///
/// As a [`tower::Service<ClientRequest>`] its response is a [`ClientResponse`] (head, then
/// a streamed body) and its error a [`ClientError`]; it is always ready (the pool's limits
/// are waited for inside the call, within its deadline).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    pub(crate) endpoints: Vec<Endpoint>,
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

/// How a call wants its answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deliver {
    /// Read to the end, kept in an [`Exchange`].
    Collect,
    /// Handed over at the head, the body streamed.
    Stream,
}

/// How a call ended well.
pub(crate) enum Answered {
    Exchange(Box<Exchange>),
    Stream(Box<ClientResponse>),
    /// Not sent: the server's `Transfer-Ignore` covers the file.
    Ignored,
}

impl Client {
    /// A builder: servers first, then settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for the service at `servers` (URIs like `icaps://dlp1.example:11344/reqmod`;
    /// the same service path on each) with these settings.
    pub fn new<S: AsRef<str>>(servers: &[S], cfg: ClientConfig) -> Result<Client, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Config(Error::new(
                crate::ErrorKind::BadUri,
                0,
                "no ICAP server given",
            )));
        }
        cfg.check()?;
        let mut endpoints = Vec::new();
        let mut any_tls = false;
        for s in servers {
            let uri = IcapUri::parse(s.as_ref()).map_err(ClientError::Config)?;
            any_tls |= uri.is_tls();
            endpoints.push(Endpoint::new(uri, cfg.max_connections_per_server));
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

    /// The settings in force.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
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

    /// A REQMOD of `http_request`: add the body and headers, then `.send()`.
    pub fn reqmod(&self, http_request: HttpRequestHead) -> CallBuilder {
        CallBuilder::new(self.clone(), ClientRequest::reqmod(http_request))
    }

    /// A RESPMOD of `http_response`: add the request it answers, the body and headers,
    /// then `.send()`.
    pub fn respmod(&self, http_response: HttpResponseHead) -> CallBuilder {
        CallBuilder::new(self.clone(), ClientRequest::respmod(http_response))
    }

    /// Any call described by a [`ClientRequest`] (OPTIONS included), then `.send()`.
    pub fn request(&self, req: ClientRequest) -> CallBuilder {
        CallBuilder::new(self.clone(), req)
    }

    /// Sends `req` (failing over as configured) and returns the answer once its head has
    /// arrived; the body streams in [`ClientResponse::body`]. An ICAP error status (4xx,
    /// 5xx) is a [`ClientError::Status`]. The call runs within [`ClientConfig::deadline`];
    /// the attempt that answered, its body read to the end included, within
    /// [`ClientConfig::transaction_timeout`] too (a reader slower than that gets a
    /// [`ClientError::Timeout`] from the body).
    pub async fn send(&self, req: ClientRequest) -> Result<ClientResponse, ClientError> {
        let until = after(Instant::now(), self.inner.cfg.deadline);
        match self.call(&req, until, Deliver::Stream).await? {
            Answered::Stream(r) => Ok(*r),
            _ => unreachable!("a streamed call answers with a stream"),
        }
    }

    /// Sends `req` and reads the whole answer into an [`Exchange`] (the body kept up to
    /// [`ClientConfig::keep_body`], counted and hashed beyond).
    pub async fn exchange(&self, req: &ClientRequest) -> Result<Exchange, ClientError> {
        let until = after(Instant::now(), self.inner.cfg.deadline);
        match self.call(req, until, Deliver::Collect).await? {
            Answered::Exchange(x) => Ok(*x),
            _ => unreachable!("a collected call that skips nothing answers with an exchange"),
        }
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
}

impl tower::Service<ClientRequest> for Client {
    type Response = ClientResponse;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, ClientError>> + Send>>;

    /// Always ready: connection slots are waited for inside the call, within its deadline
    /// (put a `ConcurrencyLimitLayer` in front to bound calls in flight).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ClientRequest) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.send(req).await })
    }
}

pub(crate) use crate::upstream::after;
