//! A secure ICAP gateway: the stunnel of a DLP setup, but ICAP-aware.
//!
//! ```text
//! cargo run --features gateway,tls,metrics --example icap-gateway -- \
//!     --listen 0.0.0.0:11344 --tls-cert gw.pem --tls-key gw.key --client-ca cloud-ca.pem \
//!     [--client-cert-sha256 HEX]... [--metrics 127.0.0.1:9344] \
//!     --upstream icap://10.0.0.5:1344/reqmod [--upstream icap://10.0.0.6:1344/reqmod]
//! ```
//!
//! Terminates TLS (1.2 and 1.3) and requires a client certificate issued by `--client-ca`
//! (and, with `--client-cert-sha256`, one of those exact certificates), refusing every other
//! client during the handshake, before any ICAP byte is read. Each ICAP transaction then goes
//! to one of the plain ICAP upstreams (round robin per transaction, keep-alive connections,
//! `OPTIONS` health probes with squid's failure limit and revival delay, failover of
//! transactions not answered yet, `503` when no upstream is up), relayed byte for byte both
//! ways (`icap::gateway`). One access-log line per transaction goes to stdout; refusals and
//! errors to stderr; with `--metrics`, counters and upstream health in Prometheus text.
//! `--max-connections` caps client connections (handshakes included); when full, newcomers
//! wait in the listen backlog, and after `--queue-timeout` one is answered an ICAP `503`
//! (after its handshake). `--handshake-timeout` bounds how long an unauthenticated one holds
//! its place. SIGHUP reads the certificate, key and client CA files again (new
//! handshakes use them; if one cannot be used the old set stays). SIGINT / SIGTERM stop it.

use icap_dlp_engine::cli::{seconds, seconds_or_zero};
use icap_dlp_engine::listen;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use icap::gateway::{Gateway, GatewayConfig, TransactionLog};
use icap::tls::ServerTls;
use icap::IcapUri;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const EXIT_STATUS: &str = "Exit status:
  0  stopped by SIGINT or SIGTERM
  2  bad arguments, or the gateway cannot start (an unreadable certificate, key or CA
     file, a malformed fingerprint or upstream URI, an address that cannot be bound);
     the message names the file, value or address

Access log (stdout), one line per transaction, fields separated by spaces:
  time client=\"SUBJECT\" METHOD URI upstream=HOST:PORT status=N infection=\"..\"
  violations=\"..\" http=N in=BYTES out=BYTES ms=N [failovers=N] [error=\"..\"]";

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "icap-gateway",
    about = "Secure ICAP gateway: TLS with client certificates in front of plain ICAP servers",
    after_help = EXIT_STATUS
)]
struct Args {
    /// Address to listen on (TLS).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:11344")]
    listen: SocketAddr,
    /// The gateway's certificate chain (PEM, leaf first).
    #[arg(long, value_name = "PEM")]
    tls_cert: PathBuf,
    /// The gateway's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: PathBuf,
    /// CA(s) that client certificates must chain to (PEM), like stunnel's CAfile.
    #[arg(long, value_name = "PEM")]
    client_ca: PathBuf,
    /// SHA-256 of an accepted client certificate (DER, hex, colons allowed); repeatable.
    /// When given, only these certificates (still issued by --client-ca) are accepted.
    #[arg(long = "client-cert-sha256", value_name = "HEX")]
    pins: Vec<String>,
    /// Upstream plain ICAP service, `icap://HOST:PORT/SERVICE`; repeat to balance. The
    /// service is what health probes ask with OPTIONS; requests keep their own URI.
    #[arg(long = "upstream", value_name = "URI", required = true)]
    upstreams: Vec<String>,
    /// Failures within a minute that mark an upstream down (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    failure_limit: u32,
    /// Seconds a down upstream waits before an OPTIONS probe may revive it.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    revival_delay: Duration,
    /// Seconds between OPTIONS health probes.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    probe_interval: Duration,
    /// Seconds an upstream may stay silent while an answer is awaited.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    upstream_timeout: Duration,
    /// Request bytes kept for replaying a transaction on another upstream.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    replay_limit: usize,
    /// Serve metrics in Prometheus text on this address (any path, plain HTTP).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Seconds a TLS handshake may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    handshake_timeout: Duration,
    /// Most client connections at once, handshakes included. When full, newcomers wait in
    /// the listen backlog; after --queue-timeout one is answered 503 (logged, counted as
    /// refused with reason "capacity") so that its client can fail over.
    #[arg(long, value_name = "N", default_value_t = 10000)]
    max_connections: usize,
    /// Seconds newcomers wait in the listen backlog while the gateway is full, before one is
    /// answered 503.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds_or_zero)]
    queue_timeout: Duration,
    /// Seconds a connection may sit idle (between transactions, or before its first) and
    /// keep its place while the gateway is full: past them, the one idle the longest is
    /// closed to make room for a newcomer.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds_or_zero)]
    eviction_grace: Duration,
}

/// The answer of a connection refused while the gateway is full.
const OVERLOADED: &[u8] = b"ICAP/1.0 503 Service Overloaded\r\nISTag: \"icap-gateway\"\r\n\
    Connection: close\r\nEncapsulated: null-body=0\r\n\r\n";

fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bad = || format!("--client-cert-sha256: not 64 hex digits: {s}");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject of a certificate as `CN=..,O=..` (the attributes a log reader needs).
fn subject(cert: &[u8]) -> Option<String> {
    let (_, cert, _) = der(cert)?;
    let (_, mut tbs, _) = der(cert)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2; // explicit version
    }
    // serial, signature algorithm, issuer, validity, then the subject.
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (_, mut name, _) = der(tbs)?;
    let mut parts = Vec::new();
    while let Some((_, set, rest)) = der(name) {
        name = rest;
        let (_, atv, _) = der(set)?;
        let (_, oid, rest) = der(atv)?;
        let (_, value, _) = der(rest)?;
        let key = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            [0x55, 0x04, 0x06] => "C",
            _ => continue,
        };
        parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
    }
    Some(parts.join(","))
}

fn access_line(client: &str, t: &TransactionLog) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let opt = |v: &Option<String>| v.as_deref().unwrap_or("-").replace('"', "'");
    let mut line = format!(
        "{}.{:03} client=\"{}\" {} {} upstream={} status={} infection=\"{}\" violations=\"{}\" http={} in={} out={} ms={}",
        now.as_secs(),
        now.subsec_millis(),
        client.replace('"', "'"),
        t.method,
        t.uri,
        if t.upstream.is_empty() { "-" } else { &t.upstream },
        t.status,
        opt(&t.infection),
        opt(&t.violations),
        t.http_status.map_or("-".into(), |s| s.to_string()),
        t.bytes_in,
        t.bytes_out,
        t.duration.as_millis(),
    );
    if t.failovers > 0 {
        line.push_str(&format!(" failovers={}", t.failovers));
    }
    if let Some(e) = &t.error {
        line.push_str(&format!(" error=\"{}\"", e.to_string().replace('"', "'")));
    }
    line
}

type TlsFiles = (PathBuf, PathBuf, PathBuf);

fn load_tls(
    (cert, key, ca): &TlsFiles,
) -> Result<Arc<rustls::ServerConfig>, icap::tls::TlsConfigError> {
    ServerTls::from_pem_files(cert, key)?
        .require_client_certs(ca)?
        .build()
}

/// On SIGHUP, reads the certificate, key and client CA again; new handshakes use them,
/// connections already open keep theirs. A file that cannot be used keeps the old set.
fn reload_on_sighup(acceptor: Arc<RwLock<TlsAcceptor>>, files: TlsFiles) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return eprintln!("icap-gateway: no SIGHUP handler: reload disabled");
        };
        while hup.recv().await.is_some() {
            match load_tls(&files) {
                Ok(cfg) => {
                    *acceptor.write().expect("acceptor lock") = TlsAcceptor::from(cfg);
                    eprintln!("icap-gateway: reloaded TLS certificate, key and client CA");
                }
                Err(e) => eprintln!("icap-gateway: TLS reload failed, keeping the old ones: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (acceptor, files);
}

/// Counts a transaction (the `metrics` facade; exported only with `--metrics`).
fn record(t: &TransactionLog) {
    let upstream = if t.upstream.is_empty() {
        "-".to_string()
    } else {
        t.upstream.clone()
    };
    metrics::counter!("icap_gateway_transactions_total",
        "method" => t.method.clone(), "status" => t.status.to_string(), "upstream" => upstream)
    .increment(1);
    metrics::counter!("icap_gateway_bytes_total", "direction" => "in").increment(t.bytes_in);
    metrics::counter!("icap_gateway_bytes_total", "direction" => "out").increment(t.bytes_out);
    metrics::histogram!("icap_gateway_transaction_seconds").record(t.duration.as_secs_f64());
    if t.failovers > 0 {
        metrics::counter!("icap_gateway_failovers_total").increment(t.failovers.into());
    }
    if t.infection.is_some() {
        metrics::counter!("icap_gateway_verdicts_total", "kind" => "infection").increment(1);
    }
    if t.violations.is_some() {
        metrics::counter!("icap_gateway_verdicts_total", "kind" => "violations").increment(1);
    }
    if t.error.is_some() {
        metrics::counter!("icap_gateway_errors_total").increment(1);
    }
}

/// Installs the Prometheus recorder and answers every connection on `addr` with the
/// metrics, upstream health read at scrape time.
async fn serve_metrics(addr: SocketAddr, gw: Gateway) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("--metrics: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                continue;
            };
            for h in gw.health() {
                let up = h.server.to_string();
                metrics::gauge!("icap_gateway_upstream_up", "upstream" => up.clone())
                    .set(if h.up { 1.0 } else { 0.0 });
                metrics::gauge!("icap_gateway_upstream_failures", "upstream" => up.clone())
                    .set(h.recent_failures);
                metrics::gauge!("icap_gateway_upstream_idle_connections", "upstream" => up.clone())
                    .set(h.idle_connections as f64);
                metrics::gauge!("icap_gateway_upstream_connections_in_use", "upstream" => up)
                    .set(h.connections_in_use as f64);
            }
            let body = handle.render();
            tokio::spawn(async move {
                // The request itself does not matter: read what came, answer, close.
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(head.as_bytes()).await;
                let _ = c.write_all(body.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    let pins = args
        .pins
        .iter()
        .map(|p| parse_pin(p))
        .collect::<Result<Vec<_>, _>>()?;
    let upstreams = args
        .upstreams
        .iter()
        .map(|u| IcapUri::parse(u).map_err(|e| format!("--upstream {u}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(u) = upstreams.iter().find(|u| u.is_tls()) {
        return Err(format!(
            "--upstream {u}: upstreams speak plain ICAP (icap://)"
        ));
    }
    let files = (
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.client_ca.clone(),
    );
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(
        load_tls(&files).map_err(|e| e.to_string())?,
    )));
    reload_on_sighup(acceptor.clone(), files);
    let cfg = GatewayConfig::default()
        .failure_limit(args.failure_limit)
        .revival_delay(args.revival_delay)
        .probe_interval(args.probe_interval)
        .upstream_timeout(args.upstream_timeout)
        .replay_limit(args.replay_limit);
    let handshake_timeout = args.handshake_timeout;
    if args.max_connections == 0 {
        return Err("--max-connections: must be at least 1".into());
    }
    let queue_timeout = args.queue_timeout;
    let eviction_grace = args.eviction_grace;
    listen::raise_open_files("icap-gateway", 2 * args.max_connections as u64 + 64);
    let listener =
        listen::listen(args.listen).map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let gw = Gateway::new(upstreams, cfg).map_err(|e| e.to_string())?;
    if let Some(addr) = args.metrics {
        serve_metrics(addr, gw.clone()).await?;
    }
    tokio::spawn(gw.clone().probe_forever());
    eprintln!("icap-gateway: listening on {}", args.listen);
    let pins = Arc::new(pins);
    // Each connection holds a slot from accept to close: the handshake timeout bounds how
    // long an unauthenticated one holds it, the client timeout an idle authenticated one,
    // and when the gateway is full one idle past the eviction grace gives it up.
    let mut gate = listen::Gate::new(args.max_connections, queue_timeout, eviction_grace);
    loop {
        let (tcp, peer, slot) = match gate.accept(&listener).await {
            Ok(listen::Accepted::Serve(tcp, peer, slot)) => (tcp, peer, slot),
            Ok(listen::Accepted::Refuse(tcp, peer)) => {
                metrics::counter!("icap_gateway_refused_total", "reason" => "capacity")
                    .increment(1);
                eprintln!(
                    "icap-gateway: refused {peer}: {} connections open (--max-connections)",
                    args.max_connections
                );
                let acceptor = acceptor.read().expect("acceptor lock").clone();
                tokio::spawn(async move {
                    // The 503 goes inside TLS, where the client can read it.
                    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                    if let Ok(Ok(tls)) = handshake.await {
                        listen::refuse(tls, OVERLOADED, Duration::from_secs(5)).await;
                    }
                });
                continue;
            }
            Err(e) => {
                eprintln!("icap-gateway: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.read().expect("acceptor lock").clone();
        let (gw, pins) = (gw.clone(), pins.clone());
        tokio::spawn(async move {
            let activity = slot.activity.clone();
            let _slot = slot;
            let handshake = tokio::select! {
                r = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => r,
                () = activity.evicted() => {
                    return eprintln!("icap-gateway: closed {peer}: no handshake within the \
                                      eviction grace while the gateway was full");
                }
            };
            let tls = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("icap_gateway_refused_total", "reason" => "handshake")
                        .increment(1);
                    let why = icap::tls::describe_handshake_error(&e);
                    return eprintln!("icap-gateway: refused {peer}: {why}");
                }
                Err(_) => {
                    metrics::counter!("icap_gateway_refused_total", "reason" => "timeout")
                        .increment(1);
                    return eprintln!("icap-gateway: refused {peer}: handshake timed out");
                }
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let Some(leaf) = leaf else {
                return eprintln!("icap-gateway: refused {peer}: no client certificate");
            };
            let client = subject(&leaf).unwrap_or_else(|| "?".into());
            if !pins.is_empty() {
                let digest: [u8; 32] = Sha256::digest(&leaf).into();
                if !pins.contains(&digest) {
                    metrics::counter!("icap_gateway_refused_total", "reason" => "not_pinned")
                        .increment(1);
                    // Dropping the stream closes it before any ICAP byte is read.
                    return eprintln!(
                        "icap-gateway: refused {peer}: certificate {client} is not pinned"
                    );
                }
            }
            let label = format!("{client}@{peer}");
            // Evicted while idle, the stream reads as closed: the gateway ends the
            // connection as if the client had.
            let stream = listen::Watched::new(tls, activity.clone());
            let r = gw
                .serve_connection(stream, |t| {
                    activity.idle();
                    record(t);
                    println!("{}", access_line(&label, t))
                })
                .await;
            if let Err(e) = r {
                eprintln!("icap-gateway: {peer}: {e}");
            }
            if activity.is_evicted() {
                eprintln!("icap-gateway: closed {peer}: idle past the eviction grace while the gateway was full");
            }
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let stop = async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::select! {
        r = run(args) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("icap-gateway: {e}");
                ExitCode::from(2)
            }
        },
        _ = stop => ExitCode::SUCCESS,
    }
}
