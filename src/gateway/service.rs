//! [`Gateway`]: the connections of clients served transaction by transaction, each relayed
//! to an upstream that is up, failing over while nothing of the answer went out, the
//! gateway's own `503` when no upstream can take it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::proto::head::Method;
use crate::uri::IcapUri;
use crate::ServerHealth;

use super::downstream::{wants_close, Downstream};
use super::relay::{drain, relay_once, Failure, Replay, TransactionLog};
use super::upstreams::Upstreams;
use super::{GatewayConfig, GatewayError};

/// The gateway's own answer when no upstream can take a transaction.
const UNAVAILABLE: &str = "ICAP/1.0 503 Service Unavailable\r\nISTag: \"icap-gateway\"\r\nEncapsulated: null-body=0\r\n\r\n";

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
/// )?;
/// tokio::spawn(gw.clone().probe_forever());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:11344").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     let gw = gw.clone();
///     tokio::spawn(async move {
///         // A TLS handshake would come here; the gateway reads and writes any stream.
///         let r = gw
///             .serve_connection(stream, |t| println!("{peer} {} {}", t.method, t.status))
///             .await;
///         if let Err(e) = r {
///             eprintln!("{peer}: {e}");
///         }
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Upstreams,
    cfg: GatewayConfig,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.health())
            .finish()
    }
}

impl Gateway {
    /// A gateway over these upstreams (`icap://host:port/service`; the service path is what
    /// the health probes ask with `OPTIONS`, the requests relayed keep their own URI).
    ///
    /// Fails with [`GatewayError::Config`] when no upstream is given, or one is `icaps://`
    /// (upstreams speak plain ICAP; the gateway is the TLS end).
    pub fn new(upstreams: Vec<IcapUri>, cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        Ok(Gateway {
            inner: Arc::new(Inner {
                upstreams: Upstreams::new(upstreams)?,
                cfg,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.cfg
    }

    /// Every upstream's health, in the configured order.
    pub fn health(&self) -> Vec<ServerHealth> {
        self.inner.upstreams.report(&self.inner.cfg)
    }

    /// Probes every upstream that is up, or down for longer than the revival delay, with
    /// `OPTIONS` on a fresh connection: a `200` keeps it up or brings it back, anything
    /// else marks it down.
    pub async fn probe_all(&self) {
        self.inner.upstreams.probe_all(&self.inner.cfg).await
    }

    /// Runs [`Self::probe_all`] every [`GatewayConfig::probe_interval`], forever (spawn it).
    pub async fn probe_forever(self) {
        loop {
            self.probe_all().await;
            tokio::time::sleep(self.inner.cfg.probe_interval).await;
        }
    }

    /// Relays the transactions of one client connection until the client closes it,
    /// calling `log` once per transaction.
    ///
    /// `Ok` when the connection ended cleanly (the client closed between requests, or a
    /// transaction's failure closed it; that failure is in its [`TransactionLog::error`]);
    /// an error of the client's fault ([`Fault::Downstream`](super::Fault::Downstream))
    /// when it broke the protocol or stalled between requests.
    pub async fn serve_connection<S, F>(&self, stream: S, mut log: F) -> Result<(), GatewayError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnMut(&TransactionLog),
    {
        let cfg = &self.inner.cfg;
        let (r, mut w) = tokio::io::split(stream);
        let mut down = Downstream::new(r, cfg.limits, cfg.client_timeout);
        loop {
            let start = Instant::now();
            let Some(head) = down.next_head().await? else {
                return Ok(());
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
                error = rec.error.as_ref().map(tracing::field::display),
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
        let policy = cfg.health_policy();
        let ups = &self.inner.upstreams;
        // Stream offset of the head's first byte: raw bytes not relayed yet start there.
        rec.bytes_in = down.raw_pos;
        let mut replay = Replay::new(cfg.replay_limit);
        let mut tried = Vec::new();
        let mut fresh_retry = false;
        let mut last_error = None;
        while let Some(idx) = ups.pick(&tried) {
            let u = ups.get(idx);
            let (mut conn, pooled) = match u.connection(cfg, fresh_retry).await {
                Ok(c) => c,
                Err(e) => {
                    u.failed(&policy, &e);
                    last_error = Some(e);
                    tried.push(idx);
                    fresh_retry = false;
                    continue;
                }
            };
            let _busy = u.busy();
            rec.upstream = u.addr.clone();
            let out_before = rec.bytes_out;
            let once = relay_once(
                down,
                w,
                &mut conn,
                &u.addr,
                &mut replay,
                method.clone(),
                rec,
                cfg,
            );
            match once.await {
                Ok(reusable) => {
                    // The client's `Connection: close` went upstream too, which closes
                    // after answering even when its answer does not say so.
                    if reusable && !client_close {
                        u.keep(conn, cfg);
                    }
                    return true;
                }
                Err(Failure::Client(e)) => {
                    rec.error = Some(e);
                    return false;
                }
                Err(Failure::Upstream { error, answered }) => {
                    if answered || rec.bytes_out != out_before {
                        // Part of an answer went out: nothing can be replayed.
                        u.failed(&policy, &error);
                        rec.error = Some(error);
                        return false;
                    }
                    if pooled && !fresh_retry {
                        // An idle connection the upstream had closed: not the upstream's
                        // failure; try it once more on a new connection.
                        fresh_retry = true;
                    } else {
                        u.failed(&policy, &error);
                        tried.push(idx);
                        fresh_retry = false;
                    }
                    last_error = Some(error);
                    if replay.pieces.is_none() {
                        break;
                    }
                    rec.failovers += 1;
                }
            }
        }
        // No upstream could take it: let the client finish sending, then say so.
        rec.upstream.clear();
        rec.error = Some(GatewayError::NoUpstream {
            last: last_error.map(Box::new),
        });
        if let Err(e) = drain(down).await {
            rec.error = Some(e);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const REQ: &[u8] = b"REQMOD icap://gw/reqmod ICAP/1.0\r\nHost: gw\r\nEncapsulated: req-hdr=0, null-body=18\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    const ANSWER: &[u8] =
        b"ICAP/1.0 204 No Content\r\nISTag: \"up\"\r\nEncapsulated: null-body=0\r\n\r\n";

    fn uri(port: u16) -> IcapUri {
        IcapUri::parse(&format!("icap://127.0.0.1:{port}/reqmod")).unwrap()
    }

    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// An upstream that reads one request per connection and answers `ANSWER`, keeping
    /// every byte it read.
    async fn upstream() -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut b = [0u8; 1024];
                    while got.len() < REQ.len() {
                        let n = c.read(&mut b).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&b[..n]);
                    }
                    seen.lock().unwrap().extend_from_slice(&got);
                    c.write_all(ANSWER).await.unwrap();
                });
            }
        });
        (port, kept)
    }

    async fn one_transaction(gw: &Gateway) -> (Vec<u8>, TransactionLog) {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(REQ).await.unwrap();
        client.shutdown().await.unwrap();
        let mut logs = Vec::new();
        gw.serve_connection(server, |t| {
            logs.push(TransactionLog {
                method: t.method.clone(),
                upstream: t.upstream.clone(),
                status: t.status,
                failovers: t.failovers,
                error: t
                    .error
                    .as_ref()
                    .map(|e| GatewayError::Config(e.to_string())),
                ..TransactionLog::default()
            })
        })
        .await
        .unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(logs.len(), 1);
        (out, logs.pop().unwrap())
    }

    #[tokio::test]
    async fn a_transaction_goes_through_unchanged_both_ways() {
        let (port, seen) = upstream().await;
        let gw = Gateway::new(vec![uri(port)], GatewayConfig::default()).unwrap();
        let (out, log) = one_transaction(&gw).await;
        assert_eq!(out, ANSWER);
        assert_eq!(*seen.lock().unwrap(), REQ);
        assert_eq!(log.status, 204);
        assert_eq!(log.upstream, format!("127.0.0.1:{port}"));
        assert!(log.error.is_none());
    }

    #[tokio::test]
    async fn health_counts_a_connection_in_use_while_its_transaction_runs() {
        // An upstream that reads the request and answers only when told.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut got = vec![0u8; REQ.len()];
            c.read_exact(&mut got).await.unwrap();
            wait.await.unwrap();
            c.write_all(ANSWER).await.unwrap();
            let _ = c.read(&mut [0u8; 16]).await;
        });
        let gw = Gateway::new(vec![uri(port)], GatewayConfig::default()).unwrap();
        let h = &gw.health()[0];
        assert_eq!((h.connections_in_use, h.idle_connections), (0, 0));
        assert_eq!(h.server, uri(port));
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(REQ).await.unwrap();
        let served = tokio::spawn({
            let gw = gw.clone();
            async move { gw.serve_connection(server, |_| {}).await }
        });
        let mut in_use = 0;
        for _ in 0..200 {
            in_use = gw.health()[0].connections_in_use;
            if in_use == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(in_use, 1, "while the upstream holds its answer");
        go.send(()).unwrap();
        let mut out = vec![0u8; ANSWER.len()];
        client.read_exact(&mut out).await.unwrap();
        assert_eq!(out, ANSWER);
        client.shutdown().await.unwrap();
        served.await.unwrap().unwrap();
        let h = &gw.health()[0];
        assert_eq!((h.connections_in_use, h.idle_connections), (0, 1), "{h:?}");
    }

    #[tokio::test]
    async fn a_dead_upstream_fails_over_and_counts_against_it() {
        let (port, _) = upstream().await;
        let dead = dead_port();
        let gw = Gateway::new(
            vec![uri(dead), uri(port)],
            GatewayConfig::default().failure_limit(1),
        )
        .unwrap();
        let (out, log) = one_transaction(&gw).await;
        assert_eq!(out, ANSWER);
        assert_eq!(log.upstream, format!("127.0.0.1:{port}"));
        let h = gw.health();
        assert!(!h[0].up && h[1].up, "{h:?}");
        assert!(h[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with(&format!("upstream 127.0.0.1:{dead}: connect: ")));
    }

    #[tokio::test]
    async fn no_upstream_gets_the_gateways_503_and_the_reason() {
        let dead = dead_port();
        let gw = Gateway::new(vec![uri(dead)], GatewayConfig::default()).unwrap();
        let (out, log) = one_transaction(&gw).await;
        assert_eq!(out, UNAVAILABLE.as_bytes());
        assert_eq!(log.status, 503);
        assert!(log.upstream.is_empty());
        let why = log.error.unwrap().to_string();
        assert!(
            why.contains(&format!(
                "no upstream could take the transaction (last: upstream 127.0.0.1:{dead}: connect: "
            )),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_client_that_breaks_the_protocol_gets_a_downstream_error() {
        let gw = Gateway::new(vec![uri(dead_port())], GatewayConfig::default()).unwrap();
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"NOT ICAP AT ALL\r\n\r\n").await.unwrap();
        let e = gw.serve_connection(server, |_| {}).await.err().unwrap();
        assert_eq!(e.fault(), super::super::Fault::Downstream, "{e}");
        let gw = Gateway::new(
            vec![uri(dead_port())],
            GatewayConfig::default().client_timeout(Duration::from_millis(20)),
        )
        .unwrap();
        let (_client, server) = tokio::io::duplex(4096);
        let e = gw.serve_connection(server, |_| {}).await.err().unwrap();
        assert!(matches!(e, GatewayError::ClientTimeout(_)), "{e}");
    }
}
