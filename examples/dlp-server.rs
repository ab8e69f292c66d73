//! An example DLP (data loss prevention) ICAP server in blocking mode.
//!
//! ```text
//! cargo run --features server --example dlp-server -- \
//!     --listen 127.0.0.1:1344 [--listen [::1]:1344] \
//!     [--tls-cert server.pem --tls-key server.key [--client-ca ca.pem]] \
//!     [--rules rules.txt] [--profile symantec|forcepoint|generic] [--verbose]
//! ```
//!
//! Services `icap://HOST:PORT/reqmod` and `icap://HOST:PORT/respmod` scan bodies for payment
//! card numbers (Luhn), US SSNs, the EICAR test string and the keywords / regexes of the rules
//! file (format: `examples/shared/dlp_engine.rs`). Clean content gets 204 (or a 200 echo when
//! the client does not allow 204); a violation gets a 200 carrying a block page, shaped like
//! the chosen vendor's (`--profile`, default `generic`). With `--tls-cert` and `--tls-key` it
//! speaks ICAPS; `--client-ca` then requires client certificates issued by that CA.
//! SIGINT / SIGTERM stop accepting and let transactions in flight finish.

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

use dlp_engine::Rules;
use dlp_service::{DlpConfig, Profile};
use icap::tls::ServerTls;
use tokio::net::TcpListener;

const USAGE: &str =
    "usage: dlp-server [--listen ADDR]... [--tls-cert PEM --tls-key PEM [--client-ca PEM]]
                  [--rules FILE] [--profile symantec|forcepoint|generic] [--preview N]
                  [--stream-over BYTES] [--verbose]
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
                    which sends no more than 64 KiB until an answer starts (try 49152)
  --verbose         one line per scanned message on stderr";

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
        stream_over: None,
        verbose: false,
    };
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
                a.stream_over = Some(v.parse().map_err(|e| format!("--stream-over {v}: {e}"))?);
            }
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
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
    let (server, stats) = dlp_service::dlp_server(&cfg, tls.as_ref()).map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--listen {addr}: {e}"))?;
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
        "dlp-server: {} connections, {} requests, {} messages scanned ({} bytes), {} blocked",
        served.connections.load(Ordering::Relaxed),
        served.requests.load(Ordering::Relaxed),
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
