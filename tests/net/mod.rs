//! Shared pieces of the client and server tests on loopback: a test PKI made with openssl,
//! a small blocking service, and a server running in the test's runtime.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use icap::server::{IncomingRequest, Reply, ReplyBody, Server, ServerConfig, Stats};
use icap::BoxError;
use icap::{Method, ServiceOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The test PKI (tests/peers/gen-certs.sh), made once per test binary.
pub fn certs() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("icap-test-pki-{}", std::process::id()));
        let script = format!("{}/tests/peers/gen-certs.sh", env!("CARGO_MANIFEST_DIR"));
        let st = std::process::Command::new("bash")
            .arg(script)
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("bash and openssl are needed for the TLS tests");
        assert!(st.success(), "gen-certs.sh failed");
        dir
    })
}

/// A file of the test PKI.
pub fn pki(name: &str) -> PathBuf {
    certs().join(name)
}

pub const PAGE: &[u8] = b"<html><body>Blocked by policy</body></html>";

/// Blocks bodies containing "BLOCK" with a 403 page, answers "SKIP" previews at once, and
/// is otherwise unmodified. Counts the body bytes it read.
#[derive(Default, Clone)]
pub struct Blocker {
    pub read: Arc<std::sync::atomic::AtomicU64>,
    pub max_connections: Option<u64>,
}

impl Blocker {
    pub fn options(&self) -> ServiceOptions {
        ServiceOptions::default()
            .with_methods(vec![Method::Reqmod, Method::Respmod])
            .with_istag("\"blk-1\"")
            .with_service("test blocker")
            .with_preview(Some(8))
            .with_allow_204(true)
            .with_max_connections(self.max_connections)
            .with_options_ttl(Some(60))
            .with_transfer_preview(["*"])
            .with_transfer_ignore(["ignored"])
    }

    async fn handle(self, mut req: IncomingRequest) -> Result<Reply, BoxError> {
        if req
            .body
            .preview()
            .await?
            .is_some_and(|p| p.starts_with(b"SKIP"))
        {
            return Ok(Reply::unmodified());
        }
        // Stream: keep only a small tail so that "BLOCK" split across pieces is seen.
        let mut tail: Vec<u8> = Vec::new();
        let mut found = false;
        while let Some(c) = req.body.data().await? {
            self.read
                .fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tail.extend_from_slice(&c);
            found |= tail.windows(5).any(|w| w == b"BLOCK");
            let keep = tail.len().saturating_sub(4);
            tail.drain(..keep);
        }
        if found {
            let res = Reply::ok()
                .header("X-Blocked-Reason", "keyword BLOCK")
                .http_error_page(403, "Forbidden", "text/html", PAGE)
                .build()?;
            Ok(Reply::Respond(
                res,
                ReplyBody::Full(Bytes::from_static(PAGE)),
            ))
        } else {
            Ok(Reply::unmodified())
        }
    }
}

impl tower::Service<IncomingRequest> for Blocker {
    type Response = Reply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: IncomingRequest) -> Self::Future {
        Box::pin(self.clone().handle(req))
    }
}

/// `server.route_blocker(path, blocker)`: the blocker with its own options.
pub trait BlockerRoute {
    fn route_blocker(self, path: &str, b: Blocker) -> Self;
}

impl BlockerRoute for Server {
    fn route_blocker(self, path: &str, b: Blocker) -> Server {
        self.route(path, b.options(), b)
    }
}

/// A server running until dropped or stopped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Arc<Stats>>>,
}

/// Starts `server` on a free loopback port.
pub async fn start(server: Server) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, server)
}

/// Starts `server` on `listener`.
pub fn start_on(listener: TcpListener, server: Server) -> Running {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap()
    });
    Running {
        addr,
        stop: Some(tx),
        done: Some(done),
    }
}

/// A plain server with a [`Blocker`] at `/blocker`.
pub async fn blocker(cfg: ServerConfig) -> Running {
    start(Server::new(cfg).route_blocker("blocker", Blocker::default())).await
}

impl Running {
    /// Stops the server and returns its counters.
    pub async fn stop(mut self) -> Arc<Stats> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.done.take().unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// Asks the server to shut down without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// True once `serve` has returned.
    pub fn finished(&self) -> bool {
        self.done.as_ref().is_none_or(|d| d.is_finished())
    }

    /// Waits for `serve` to return (after [`Running::signal_stop`]).
    pub async fn join(mut self) -> Arc<Stats> {
        tokio::time::timeout(Duration::from_secs(10), self.done.take().unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    pub fn uri(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/{path}", self.addr.port())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
