//! An example DLP (data loss prevention) ICAP server in blocking mode.
//!
//! ```text
//! cargo run --features server --example dlp-server -- \
//!     --listen 127.0.0.1:1344 [--listen [::1]:1344] \
//!     [--tls-cert server.pem --tls-key server.key [--client-ca ca.pem]] \
//!     [--rules rules.txt] [--profile symantec|forcepoint|generic] [--verbose] \
//!     [--max-connections N] [--max-per-ip N] [--idle-timeout S] [--head-timeout S] ...
//! ```
//!
//! Services `icap://HOST:PORT/reqmod` and `icap://HOST:PORT/respmod` scan bodies for payment
//! card numbers (Luhn), US SSNs, the EICAR test string and the keywords / regexes of the rules
//! file (format: `examples/shared/dlp_engine.rs`). Clean content gets 204 (or a 200 echo when
//! the client does not allow 204); a violation gets a 200 carrying a block page, shaped like
//! the chosen vendor's (`--profile`, default `generic`). With `--tls-cert` and `--tls-key` it
//! speaks ICAPS; `--client-ca` then requires client certificates issued by that CA.
//! SIGINT / SIGTERM stop accepting and let transactions in flight finish.
//!
//! The defaults work behind squid for bodies of any size (larger ones are echoed while being
//! scanned, see `--stream-over`) and bound what slow or idle clients can hold: connection
//! limits in total and per client address, deadlines and a minimum rate for heads and
//! bodies (see `icap::server::ServerConfig`); each has a flag.

#[path = "shared/dlp_engine.rs"]
#[allow(dead_code)]
mod dlp_engine;
#[path = "shared/dlp_service.rs"]
#[allow(dead_code)]
mod dlp_service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use std::time::Duration;

use dlp_engine::Rules;
use dlp_service::{DlpConfig, Profile};
use icap::server::{MinRate, ServerConfig};
use icap::tls::ServerTls;
use tokio::net::{TcpListener, TcpSocket};

const USAGE: &str =
    "usage: dlp-server [--listen ADDR]... [--tls-cert PEM --tls-key PEM [--client-ca PEM]]
                  [--rules FILE] [--profile symantec|forcepoint|generic] [--preview N]
                  [--stream-over BYTES|off] [--verbose] [limits and timeouts below]
  --listen ADDR     address to listen on, repeatable (default 127.0.0.1:1344)
  --tls-cert PEM    server certificate chain: speak ICAPS (needs --tls-key)
  --tls-key PEM     server private key
  --client-ca PEM   require client certificates issued by this CA (needs --tls-cert)
  --rules FILE      keywords / regexes / disabled detectors (default: cards, SSNs, EICAR)
  --profile NAME    how blocks look: symantec (ICAP 200 + HTTP 200 block text),
                    forcepoint (HTTP 403 page > 512 bytes), generic (HTTP 403 page +
                    X-Violations-Found / X-Infection-Found); default generic
  --preview N       Preview size announced in OPTIONS (default 4096)
  --stream-over N   echo bodies over N bytes (or of unknown length) while scanning them
                    when 204 is not allowed, cutting the answer on a finding: for squid,
                    which sends no more than 64 KiB until an answer starts (default 57344;
                    off: always scan the whole body first, larger bodies then stall squid)
  --verbose         one line per scanned message on stderr
Limits and timeouts (seconds may have decimals):
  --max-connections N      connections served at once; when full, the longest idle one
                           is closed to make room, else 503 (default 256)
  --max-per-ip N           the same per client address, IPv6 per /64 (default 128)
  --idle-timeout S         wait for a request, first or next (default 60)
  --head-timeout S         a request head from its first byte (default 30)
  --read-timeout S         longest pause inside a body (default 30)
  --body-timeout S|off     a whole body (default off: the minimum rate applies)
  --min-rate B|off         slowest average for heads and bodies, bytes/s (default 1024)
  --min-rate-grace S       time before the minimum rate applies (default 10)
  --write-timeout S        longest blocked write to a client (default 60)
  --tls-handshake-timeout S  (default 10)
  --refusal-timeout S      time to get a 503 across, reading the request included (default 5)";

/// The command line.
#[derive(Debug)]
struct Args {
    listen: Vec<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    rules: Option<PathBuf>,
    profile: Profile,
    preview: u64,
    stream_over: Option<u64>,
    verbose: bool,
    server: ServerConfig,
}

/// Seconds, decimals allowed, more than 0.
fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(format!("{flag} {v}: expected seconds (more than 0)"))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{flag} {v}: {e}"))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        listen: Vec::new(),
        tls_cert: None,
        tls_key: None,
        client_ca: None,
        rules: None,
        profile: Profile::Generic,
        preview: dlp_service::PREVIEW,
        stream_over: Some(dlp_service::STREAM_OVER),
        verbose: false,
        server: ServerConfig::default(),
    };
    let mut min_rate = a.server.min_rate;
    let mut grace = min_rate.map_or(MinRate::default().grace, |r| r.grace);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                a.listen
                    .push(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--tls-cert" => a.tls_cert = Some(value("--tls-cert")?.into()),
            "--tls-key" => a.tls_key = Some(value("--tls-key")?.into()),
            "--client-ca" => a.client_ca = Some(value("--client-ca")?.into()),
            "--rules" => a.rules = Some(value("--rules")?.into()),
            "--profile" => a.profile = value("--profile")?.parse()?,
            "--preview" => {
                let v = value("--preview")?;
                a.preview = v.parse().map_err(|e| format!("--preview {v}: {e}"))?;
            }
            "--stream-over" => {
                let v = value("--stream-over")?;
                a.stream_over = match v.as_str() {
                    "off" => None,
                    _ => Some(number("--stream-over", &v)?),
                };
            }
            "--max-connections" => {
                a.server.max_connections = number(&flag, &value(&flag)?)?;
            }
            "--max-per-ip" => {
                a.server.max_connections_per_ip = number(&flag, &value(&flag)?)?;
            }
            "--idle-timeout" => a.server.idle_timeout = seconds(&flag, &value(&flag)?)?,
            "--head-timeout" => a.server.head_timeout = seconds(&flag, &value(&flag)?)?,
            "--read-timeout" => a.server.read_timeout = seconds(&flag, &value(&flag)?)?,
            "--write-timeout" => a.server.write_timeout = seconds(&flag, &value(&flag)?)?,
            "--tls-handshake-timeout" => {
                a.server.tls_handshake_timeout = seconds(&flag, &value(&flag)?)?;
            }
            "--refusal-timeout" => a.server.refusal_timeout = seconds(&flag, &value(&flag)?)?,
            "--body-timeout" => {
                let v = value(&flag)?;
                a.server.body_timeout = match v.as_str() {
                    "off" => None,
                    _ => Some(seconds(&flag, &v)?),
                };
            }
            "--min-rate" => {
                let v = value(&flag)?;
                min_rate = match v.as_str() {
                    "off" => None,
                    _ => Some(MinRate {
                        bytes_per_sec: number(&flag, &v)?,
                        grace,
                    }),
                };
            }
            "--min-rate-grace" => grace = seconds(&flag, &value(&flag)?)?,
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    a.server.min_rate = min_rate.map(|r| MinRate { grace, ..r });
    if a.listen.is_empty() {
        a.listen.push(SocketAddr::from(([127, 0, 0, 1], 1344)));
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    if a.client_ca.is_some() && a.tls_cert.is_none() {
        return Err(
            "--client-ca needs --tls-cert and --tls-key (client certificates are a TLS feature)"
                .into(),
        );
    }
    Ok(a)
}

/// A listener with an accept queue of 1024 (the usual 128 overflows under a burst of
/// connections, and the kernel then completes the excess only seconds later).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let term = async {
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("dlp-server: shutting down (finishing transactions in flight)");
}

async fn run(args: Args) -> Result<(), String> {
    let rules = match &args.rules {
        Some(p) => Rules::load(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => Rules::default(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => {
            let mut t = ServerTls::from_pem_files(c, k).map_err(|e| e.to_string())?;
            if let Some(ca) = &args.client_ca {
                t = t.require_client_certs(ca).map_err(|e| e.to_string())?;
            }
            Some(t)
        }
        _ => None,
    };
    let mut cfg = DlpConfig::new(rules, args.profile);
    cfg.preview = args.preview;
    cfg.stream_over = args.stream_over;
    cfg.verbose = args.verbose;
    cfg.server = args.server.clone();
    let (server, stats) = dlp_service::dlp_server(&cfg, tls.as_ref()).map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let l = listen(*addr).map_err(|e| format!("--listen {addr}: {e}"))?;
        let scheme = if tls.is_some() { "icaps" } else { "icap" };
        let local = l.local_addr().map_err(|e| e.to_string())?;
        // Printed on stdout (one line per listener) so scripts can read the bound port
        // when they pass port 0.
        println!(
            "dlp-server: {scheme}://{local}/reqmod and /respmod, profile {}{}",
            args.profile,
            if args.client_ca.is_some() {
                ", client certificates required"
            } else {
                ""
            }
        );
        listeners.push(l);
    }
    let served = server
        .serve_many(listeners, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "dlp-server: {} connections ({} refused, {} idle closed to make room), {} requests \
         ({} cut as too slow), {} messages scanned ({} bytes), {} blocked",
        served.connections.load(Ordering::Relaxed),
        served.refused.load(Ordering::Relaxed),
        served.evicted.load(Ordering::Relaxed),
        served.requests.load(Ordering::Relaxed),
        served.timeouts.load(Ordering::Relaxed),
        stats.scanned.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed),
        stats.blocked.load(Ordering::Relaxed),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dlp-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dlp-server: {e}");
            ExitCode::FAILURE
        }
    }
}
