//! dlp-scan: scan files against DLP or antivirus ICAP servers and report allowed/blocked.
//!
//! ```text
//! cargo run --features scan,server --example dlp-scan -- [OPTIONS] FILE...
//!   --server URL            icap:// or icaps:// service URL (repeat: load-balancing partners)
//!   --mode reqmod|respmod   how the file travels (upload or download); default reqmod
//!   --connection-type T     generic-reqmod | generic-respmod | symantec | forcepoint
//!   --ca FILE               trust this CA for icaps:// (default: system roots)
//!   --pin-cert FILE         trust exactly this (self-signed) server certificate
//!   --client-cert FILE --client-key FILE   present a client certificate (mTLS)
//!   --preview N             preview size (default: what the server's OPTIONS asks)
//!   --no-204                do not send Allow: 204
//!   --header 'X-Name: v'    extra ICAP header (repeatable)
//!   --client-ip IP / --user NAME           X-Client-IP / X-Authenticated-User
//!   --fail-open             report errors as allowed (default: fail-closed, exit 2)
//!   --timeout SECS          most time for one file, failovers included (default 300)
//!   --attempt-timeout SECS  most time on one server for one file (default: a third of --timeout)
//!   --max-answer BYTES      most answer bytes beyond the file's size (default 16 MiB)
//!   --failure-limit N       failures within a minute that mark a server down (default 3, 0 never)
//!   --revival-delay SECS    wait before a down server is probed with OPTIONS (default 30)
//!   --test-connection       OPTIONS on every server, print what each offers, and exit
//!   --json                  one JSON object per file
//! ```
//!
//! Exit status (the clamscan convention): 0 every file allowed, 1 something blocked or
//! modified, 2 an error. With no `--server`, it starts two example DLP servers in-process on
//! loopback, with TLS and client-certificate verification as a real appliance behind stunnel
//! would have, and scans against them as load-balancing partners.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use icap::client::{BodySource, Client, PreviewPolicy};
use icap::dlp::{Profile, Verdict};
use icap::dlp::{ScanMode, ScanRequest};
use icap::tls::{ClientTls, ServerTls, Trust};
use icap_dlp_engine::cli::seconds;
use icap_dlp_engine::service as dlp_service;
use icap_dlp_engine::tls_args::TlsArgs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

const EXIT_STATUS: &str = "Exit status (the clamscan convention):
  0  every file allowed
  1  something blocked or modified
  2  an error: bad arguments, a missing or unreadable file (checked before anything
     starts; the message names it), a server that cannot be reached (named); with
     --fail-open, scan errors count as allowed";

#[derive(Parser, Debug)]
#[command(
    name = "dlp-scan",
    about = "Scan files against ICAP DLP / antivirus servers",
    after_help = EXIT_STATUS
)]
struct Args {
    /// ICAP service URL; repeat for load-balancing partners. None: embedded loopback servers.
    #[arg(long = "server")]
    servers: Vec<String>,
    /// reqmod (the file is an upload) or respmod (a download).
    #[arg(long, default_value = "reqmod", value_parser = ["reqmod", "respmod"])]
    mode: String,
    /// generic-reqmod, generic-respmod, symantec or forcepoint (sets mode and block rules).
    #[arg(
        long = "connection-type",
        value_parser = ["generic-reqmod", "generic-respmod", "symantec", "forcepoint"]
    )]
    connection_type: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Preview size in bytes (default: from the server's OPTIONS).
    #[arg(long)]
    preview: Option<u64>,
    /// Do not offer Allow: 204.
    #[arg(long = "no-204")]
    no_204: bool,
    /// Extra ICAP header, `Name: value`.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// X-Client-IP to send.
    #[arg(long = "client-ip")]
    client_ip: Option<std::net::IpAddr>,
    /// X-Authenticated-User to send.
    #[arg(long)]
    user: Option<String>,
    /// Report errors as allowed.
    #[arg(long = "fail-open")]
    fail_open: bool,
    /// Most seconds for one file, every attempt and failover included.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds)]
    timeout: Duration,
    /// Most seconds on one server for one file (default: a third of --timeout, so that a
    /// server that never answers leaves time for its partners).
    #[arg(long = "attempt-timeout", value_name = "SECS", value_parser = seconds)]
    attempt_timeout: Option<Duration>,
    /// Most answer bytes (heads, framing, body) beyond the size of the file sent.
    #[arg(long = "max-answer", value_name = "BYTES", default_value_t = 16 << 20)]
    max_answer: u64,
    /// Failures within a minute that mark a server down (0: never).
    #[arg(long = "failure-limit", value_name = "N", default_value_t = 3)]
    failure_limit: u32,
    /// Seconds a down server waits before an OPTIONS probe may bring it back.
    #[arg(long = "revival-delay", value_name = "SECS", default_value = "30", value_parser = seconds)]
    revival_delay: Duration,
    /// Only run OPTIONS on each server and report.
    #[arg(long = "test-connection")]
    test_connection: bool,
    /// JSON Lines output.
    #[arg(long)]
    json: bool,
    /// Files to scan.
    files: Vec<PathBuf>,
}

/// The embedded demo: a private CA, a server certificate for localhost, a client
/// certificate, all made in memory (as the appliance, stunnel and the cloud service would
/// each hold theirs).
struct DemoPki {
    server: ServerTls,
    client: ClientTls,
}

fn demo_pki() -> Result<DemoPki, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "dlp-scan demo CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let srv_key = KeyPair::generate()?;
    let mut srv = CertificateParams::new(vec!["localhost".to_string()])?;
    srv.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    srv.distinguished_name.push(DnType::CommonName, "localhost");
    let srv_cert = srv.signed_by(&srv_key, &issuer)?;

    let cli_key = KeyPair::generate()?;
    let mut cli = CertificateParams::new(Vec::<String>::new())?;
    cli.distinguished_name
        .push(DnType::CommonName, "dlp-scan demo client");
    let cli_cert = cli.signed_by(&cli_key, &issuer)?;

    let der = |c: &rcgen::Certificate| CertificateDer::from(c.der().to_vec());
    let key = |k: &KeyPair| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));
    Ok(DemoPki {
        server: ServerTls::new(vec![der(&srv_cert), der(&ca_cert)], key(&srv_key))
            .with_client_ca(vec![der(&ca_cert)]),
        client: ClientTls::default()
            .with_trust(Trust::Ca(vec![der(&ca_cert)]))
            .with_identity(vec![der(&cli_cert)], key(&cli_key)),
    })
}

/// Opens `path` for reading and checks that it is a regular file.
fn readable_file(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::other("not a regular file"))
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("dlp-scan: {msg}");
    ExitCode::from(2)
}

/// A progress bar on stderr for large files, when stderr is a terminal.
fn progress_for(name: &str, len: u64) -> Option<Arc<dyn Fn(u64) + Send + Sync>> {
    if !std::io::stderr().is_terminal() || len < 4 << 20 {
        return None;
    }
    let name = name.to_string();
    Some(Arc::new(move |sent: u64| {
        let pct = (sent * 100 / len.max(1)).min(100);
        let bar = "#".repeat((pct / 4) as usize);
        eprint!("\r[{bar:<25}] {pct:>3}% {name}");
        if sent >= len {
            eprint!("\r{:width$}\r", "", width = name.len() + 40);
        }
        let _ = std::io::stderr().flush();
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    // clap prints --help and exits 0, or prints an argument error and exits 2.
    let args = Args::parse();
    // Every file is checked before servers start or connections open: a typo should not
    // cost a TLS handshake, nor half a batch.
    for path in &args.files {
        if let Err(e) = readable_file(path) {
            return fail(format!("{}: {e}", path.display()));
        }
    }
    let (mode, profile, server_profile) = match args.connection_type.as_deref() {
        None => {
            let mode = match args.mode.as_str() {
                "reqmod" => ScanMode::Reqmod,
                "respmod" => ScanMode::Respmod,
                m => return fail(format!("--mode must be reqmod or respmod, not {m:?}")),
            };
            (mode, Profile::Generic, dlp_service::Profile::Generic)
        }
        Some("generic-reqmod") => (ScanMode::Reqmod, Profile::Generic, dlp_service::Profile::Generic),
        Some("generic-respmod") => (ScanMode::Respmod, Profile::Generic, dlp_service::Profile::Generic),
        Some("symantec") => (ScanMode::Reqmod, Profile::Symantec, dlp_service::Profile::Symantec),
        Some("forcepoint") => (ScanMode::Reqmod, Profile::Forcepoint, dlp_service::Profile::Forcepoint),
        Some(t) => {
            return fail(format!(
                "unknown --connection-type {t:?} (generic-reqmod, generic-respmod, symantec, forcepoint)"
            ))
        }
    };

    let tls;
    let mut embedded = Vec::new();
    let servers = if args.servers.is_empty() {
        // No server given: two example DLP servers on loopback, TLS with client
        // certificates required, as the load-balanced pair of a real deployment.
        let pki = match demo_pki() {
            Ok(p) => p,
            Err(e) => return fail(format!("making the demo certificates: {e}")),
        };
        let mut urls = Vec::new();
        for _ in 0..2 {
            let cfg =
                dlp_service::DlpConfig::new(icap_dlp_engine::Rules::default(), server_profile);
            match dlp_service::spawn_loopback(cfg, Some(&pki.server)).await {
                Ok(r) => {
                    let path = if mode == ScanMode::Reqmod {
                        "reqmod"
                    } else {
                        "respmod"
                    };
                    urls.push(format!("icaps://localhost:{}/{path}", r.addr().port()));
                    embedded.push(r);
                }
                Err(e) => return fail(format!("starting the embedded DLP server: {e}")),
            }
        }
        eprintln!(
            "dlp-scan: no --server given; scanning against two example DLP servers ({} profile, TLS, client certificate required): {}",
            server_profile.name(),
            urls.join(" ")
        );
        tls = pki.client;
        urls
    } else {
        tls = match args.tls.client_tls() {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        args.servers.clone()
    };

    let client = match Client::builder()
        .servers(servers)
        .tls(tls)
        .allow_204(!args.no_204)
        .preview(
            args.preview
                .map_or(PreviewPolicy::FromOptions, PreviewPolicy::Fixed),
        )
        .fail_open(args.fail_open)
        .deadline(args.timeout)
        .transaction_timeout(args.attempt_timeout.unwrap_or(args.timeout / 3))
        .max_answer(args.max_answer)
        .failure_limit(args.failure_limit)
        .revival_delay(args.revival_delay)
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(e),
    };

    // The connectivity test, as when the connection is configured.
    if args.test_connection || !embedded.is_empty() {
        let mut ok = true;
        for r in client.test_connection().await {
            let rtt = r.round_trip.as_secs_f64() * 1000.0;
            let tls = r.tls_version.as_deref().unwrap_or("none");
            match &r.result {
                Ok(o) => {
                    let methods: Vec<String> = o.methods.iter().map(|m| m.to_string()).collect();
                    let line = format!(
                        "{}: OK methods={} preview={} istag={} allow-204={} tls={tls} rtt={rtt:.1}ms",
                        r.server,
                        methods.join(","),
                        o.preview.map_or("none".into(), |p| p.to_string()),
                        o.istag,
                        o.allow_204,
                    );
                    if args.json {
                        println!(
                            "{}",
                            json!({"server": r.server.to_string(), "ok": true, "methods": methods,
                                   "preview": o.preview, "istag": o.istag, "tls": r.tls_version,
                                   "rtt_ms": rtt})
                        );
                    } else {
                        eprintln!("{line}");
                    }
                }
                Err(e) => {
                    ok = false;
                    if args.json {
                        println!(
                            "{}",
                            json!({"server": r.server.to_string(), "ok": false, "error": e.to_string()})
                        );
                    } else {
                        eprintln!("{}: FAILED: {e}", r.server);
                    }
                }
            }
        }
        if args.test_connection {
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    }

    let mut files = args.files.clone();
    if files.is_empty() && !embedded.is_empty() {
        // The demo with nothing named: the sample files shipped with the example.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            files = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
        }
    }
    if files.is_empty() {
        return fail("no file to scan (give FILE arguments)");
    }

    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((n, v)) => headers.push((n.trim().to_string(), v.trim().to_string())),
            None => return fail(format!("--header {h:?} is not `Name: value`")),
        }
    }

    let mut worst = 0u8;
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let len = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                eprintln!("{}: not a regular file", path.display());
                worst = worst.max(2);
                continue;
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                worst = worst.max(2);
                continue;
            }
        };
        let mut req = ScanRequest::new(mode, &name, BodySource::File(path.clone()));
        req.profile = profile;
        req.content_type = content_type(&name).into();
        req.client_ip = args.client_ip;
        req.user = args.user.clone();
        req.headers = headers.clone();
        req.progress = progress_for(&name, len);
        let start = Instant::now();
        match client.scan(req).await {
            Ok(out) => {
                let code = match out.verdict {
                    Verdict::Allowed { .. } => 0,
                    Verdict::Blocked { .. } | Verdict::Modified { .. } => 1,
                };
                worst = worst.max(code);
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                let x = out.exchange.as_ref();
                if args.json {
                    println!(
                        "{}",
                        json!({
                            "file": path.display().to_string(),
                            "size": len,
                            "verdict": out.verdict.label(),
                            "reason": out.verdict.reason(),
                            "server": x.map(|x| x.server.to_string()),
                            "icap_status": x.map(|x| x.response.status),
                            "http_status": x.and_then(|x| x.response.http_response.as_ref().map(|h| h.status)),
                            "istag": x.and_then(|x| x.response.headers.get_str("ISTag").map(str::to_string)),
                            "elapsed_ms": ms,
                        })
                    );
                } else {
                    let via = x.map_or(String::new(), |x| {
                        format!(
                            " [ICAP {} from {}, {ms:.1} ms]",
                            x.response.status, x.server
                        )
                    });
                    println!("{}: {}{via}", path.display(), out.verdict);
                }
            }
            Err(e) => {
                worst = 2;
                if args.json {
                    println!(
                        "{}",
                        json!({"file": path.display().to_string(), "verdict": "error", "reason": e.to_string()})
                    );
                } else {
                    println!("{}: error: {e}", path.display());
                }
            }
        }
    }
    for h in client.health().iter().filter(|h| !h.up) {
        eprintln!(
            "dlp-scan: {} is down after {} failures (last: {})",
            h.server,
            h.total_failures,
            h.last_error.as_deref().unwrap_or("none")
        );
    }
    for r in embedded {
        let _ = r.shutdown().await;
    }
    ExitCode::from(worst)
}

fn content_type(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("txt" | "md") => "text/plain",
        Some("csv") => "text/csv",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("json") => "application/json",
        Some("html" | "htm") => "text/html",
        _ => "application/octet-stream",
    }
}
