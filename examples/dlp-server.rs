//! An example DLP (data loss prevention) ICAP server in blocking mode.
//!
//! ```text
//! cargo run --features server --example dlp-server -- \
//!     --listen 127.0.0.1:1344 [--listen [::1]:1344] \
//!     [--tls-cert server.pem --tls-key server.key [--client-ca ca.pem]] \
//!     [--rules rules.txt | --clamd /run/clamav/clamd.ctl] \
//!     [--profile symantec|forcepoint|generic] [--verbose] \
//!     [--metrics 127.0.0.1:9344] [--threads N] \
//!     [--max-connections N] [--max-per-ip N] [--queue-timeout S] [--idle-timeout S] ...
//! ```
//!
//! Services `icap://HOST:PORT/reqmod` and `icap://HOST:PORT/respmod` scan bodies for payment
//! card numbers (Luhn), US SSNs, the EICAR test string and the keywords / regexes of the rules
//! file (format: the `icap-dlp-engine` crate, `examples/dlp-engine`); or, with `--clamd
//! ADDR`, with ClamAV's daemon as the engine (its signatures, and card numbers and SSNs with
//! its `StructuredDataDetection`; see docs/clamav.md). Clean content gets 204
//! (or a 200 echo when the client does not allow 204); a violation gets a 200 carrying a
//! block page, shaped like the chosen vendor's (`--profile`, default `generic`). With `--tls-cert` and `--tls-key` it
//! speaks ICAPS; `--client-ca` then requires client certificates issued by that CA.
//! SIGINT / SIGTERM stop accepting and let transactions in flight finish; SIGHUP reads the
//! certificate, key and client CA files again (renewals without a restart; connections
//! open keep theirs). `--metrics ADDR` serves the client and server metrics (see
//! `icap::metrics`) in Prometheus text at `http://ADDR/metrics`.
//!
//! The defaults work behind squid for bodies of any size (larger ones are echoed while being
//! scanned, see `--stream-over`) and bound what slow or idle clients can hold: a connection
//! limit (10,000; when full, newcomers wait in the listen backlog while slow or long-idle
//! connections make room), deadlines and a minimum rate for heads and bodies (see
//! `icap::server::ServerConfig`); each has a flag (`--help` lists them and the exit status).
//! At start the open-files limit is raised to the hard limit (a message says when it stays
//! below `--max-connections`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use std::time::Duration;

use clap::Parser;
use icap::server::{MinRate, ServerConfig};
use icap::tls::ReloadableServerTls;
use icap_dlp_engine::clamd::{Clamd, ClamdAddr, ClamdConfig};
use icap_dlp_engine::cli::{seconds, seconds_or_zero};
use icap_dlp_engine::listen;
use icap_dlp_engine::ops;
use icap_dlp_engine::service::{self as dlp_service, DlpConfig, OverLimit, Profile};
use icap_dlp_engine::Rules;

const EXIT_STATUS: &str = "Signals:
  SIGINT, SIGTERM  stop accepting, finish the transactions in flight, exit
  SIGHUP           read --tls-cert, --tls-key and --client-ca again (kept when unusable)

Exit status:
  0  stopped by SIGINT or SIGTERM after finishing the transactions in flight
  2  bad arguments, or the server cannot start (an unreadable rules, certificate or key
     file, an address that cannot be bound); the message names the file or address";

const LIMITS: &str = "Limits and timeouts (seconds may have decimals)";

const CLAMD: &str = "ClamAV engine (--clamd)";

/// Threads for the echo spool's file operations (tokio runs each on a blocking thread). Left
/// at tokio's 512, 64 echoes spilling at once started ~40, each with its stack and allocator
/// arena: about 1 MiB more peak memory than with 8, for page-cache writes that take
/// microseconds.
const BLOCKING_THREADS: usize = 8;

/// The default of --spool-memory: room for a whole body under the default --stream-over
/// (56 KiB), half of the library's 128 KiB.
const SPOOL_MEMORY: usize = 64 * 1024;

/// The command line. Limits and timeouts left out keep `ServerConfig`'s defaults.
#[derive(Parser, Debug)]
#[command(
    name = "dlp-server",
    about = "The example DLP ICAP server: blocks payment cards, US SSNs, EICAR and rule matches \
             (embedded engine), or what clamd finds (--clamd)",
    after_help = EXIT_STATUS
)]
struct Args {
    /// Address to listen on, repeatable [default: 127.0.0.1:1344].
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM): speak ICAPS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM; needs --tls-cert).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Keywords, regexes and disabled detectors [default: cards, SSNs, EICAR].
    #[arg(long, value_name = "FILE", conflicts_with = "clamd")]
    rules: Option<PathBuf>,
    /// Scan with clamd at ADDR (its LocalSocket path, or HOST:PORT of its TCPSocket) instead
    /// of the embedded engine. While clamd does not answer PING, transactions and OPTIONS
    /// get 503, never a 204.
    #[arg(long, value_name = "ADDR", help_heading = CLAMD)]
    clamd: Option<ClamdAddr>,
    /// Scans sent to clamd at once; more wait for a turn (up to --clamd-timeout). Keep it
    /// at most clamd's MaxThreads + MaxQueue.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "clamd", help_heading = CLAMD,
          value_parser = clap::value_parser!(u16).range(1..))]
    clamd_max_in_flight: u16,
    /// Longest wait for a turn, for one write to clamd, and for its verdict after the body.
    #[arg(long, value_name = "S", default_value = "60", value_parser = seconds,
          requires = "clamd", help_heading = CLAMD)]
    clamd_timeout: Duration,
    /// A connection to clamd, and a PING.
    #[arg(long, value_name = "S", default_value = "5", value_parser = seconds,
          requires = "clamd", help_heading = CLAMD)]
    clamd_connect_timeout: Duration,
    /// Time between two health checks (PING).
    #[arg(long, value_name = "S", default_value = "2", value_parser = seconds,
          requires = "clamd", help_heading = CLAMD)]
    clamd_ping_interval: Duration,
    /// Bytes of a streamed echo (see --stream-over) kept back until clamd's verdict: a late
    /// finding cuts the transfer before them. In memory, per transaction.
    #[arg(long, value_name = "BYTES", default_value_t = dlp_service::CLAMD_HOLDBACK,
          requires = "clamd", help_heading = CLAMD)]
    clamd_holdback: usize,
    /// A body over clamd's StreamMaxLength, which clamd refuses to scan: block (as
    /// Heuristics.Limits.Exceeded.StreamMaxLength) or allow (unscanned).
    #[arg(long, value_name = "POLICY", default_value = "block", requires = "clamd",
          help_heading = CLAMD)]
    clamd_over_limit: OverLimit,
    /// Bodies of at most BYTES go to a clamd on a Unix socket as an open file (FILDES, as
    /// c-icap does), held in memory until their end; longer ones are streamed (INSTREAM).
    /// 0: always INSTREAM. Keep it under clamd's MaxFileSize and MaxScanSize.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024, requires = "clamd",
          help_heading = CLAMD)]
    clamd_fildes_max: usize,
    /// How blocks look: symantec (ICAP 200 + HTTP 200 block text), forcepoint (HTTP 403 page
    /// over 512 bytes), generic (HTTP 403 page + X-Violations-Found / X-Infection-Found).
    #[arg(long, value_name = "NAME", default_value = "generic")]
    profile: Profile,
    /// Preview size announced in OPTIONS.
    #[arg(long, value_name = "N", default_value_t = dlp_service::PREVIEW)]
    preview: u64,
    /// Echo bodies over N bytes (or of unknown length) while scanning them when 204 is not
    /// allowed, cutting the answer on a finding: for squid, which sends no more than 64 KiB
    /// until an answer starts. off: always scan the whole body first.
    #[arg(long, value_name = "BYTES|off", default_value = "57344", value_parser = bytes_or_off)]
    stream_over: Off<u64>,
    /// Threads serving connections. 1: all on the main thread (tokio's current-thread
    /// runtime), which scans on one core and takes the least memory (each thread has its own
    /// allocator arena and stack); N: N worker threads beside the main one, for when the
    /// scanning, not the network, is what a busy server waits for.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    threads: u16,
    /// One line per scanned message on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Serve metrics in Prometheus text at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Connections served at once; when full, newcomers wait in the listen backlog while one
    /// behind the minimum rate or idle beyond --eviction-grace makes room [default: 10000].
    #[arg(long, value_name = "N", help_heading = LIMITS)]
    max_connections: Option<usize>,
    /// The same per client address, IPv6 per /64, for a server exposed to many addresses
    /// [default: no limit].
    #[arg(long = "max-per-ip", value_name = "N", help_heading = LIMITS)]
    max_per_ip: Option<usize>,
    /// Time a connection is safe from making room: from accept to its first request, and
    /// idle between requests [default: 10].
    #[arg(long, value_name = "S", value_parser = seconds_or_zero, help_heading = LIMITS)]
    eviction_grace: Option<Duration>,
    /// When full and nothing can make room, how long newcomers wait in the backlog before
    /// one is answered 503 [default: 10].
    #[arg(long, value_name = "S", value_parser = seconds_or_zero, help_heading = LIMITS)]
    queue_timeout: Option<Duration>,
    /// Wait for a request, first or next [default: 60].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    idle_timeout: Option<Duration>,
    /// A request head from its first byte [default: 30].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    head_timeout: Option<Duration>,
    /// Longest pause inside a body [default: 30].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    read_timeout: Option<Duration>,
    /// A whole body [default: off: the minimum rate applies].
    #[arg(long, value_name = "S|off", value_parser = seconds_or_off, help_heading = LIMITS)]
    body_timeout: Option<Off<Duration>>,
    /// Slowest average for heads and bodies, bytes/s [default: 1024].
    #[arg(long, value_name = "B|off", value_parser = bytes_or_off, help_heading = LIMITS)]
    min_rate: Option<Off<u64>>,
    /// Time before the minimum rate applies [default: 10].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    min_rate_grace: Option<Duration>,
    /// Longest blocked write to a client [default: 60].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    write_timeout: Option<Duration>,
    /// A TLS handshake [default: 10].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    tls_handshake_timeout: Option<Duration>,
    /// Time to get a 503 across, reading the request included [default: 5].
    #[arg(long, value_name = "S", value_parser = seconds, help_heading = LIMITS)]
    refusal_timeout: Option<Duration>,
    /// Body bytes an echo keeps in memory, per transaction, before the rest goes to a
    /// temporary file. Only bodies that are not streamed are kept (see --stream-over): the
    /// default holds the whole of those under the default --stream-over; with
    /// --stream-over off, this times the transactions at once is what echoes hold (c-icap's
    /// MaxMemObject, the library's default, is 131072).
    #[arg(long, value_name = "BYTES", default_value_t = SPOOL_MEMORY, help_heading = LIMITS)]
    spool_memory: usize,
}

/// A value, or `off`.
#[derive(Debug, Clone, Copy)]
struct Off<T>(Option<T>);

fn seconds_or_off(v: &str) -> Result<Off<Duration>, String> {
    match v {
        "off" => Ok(Off(None)),
        _ => seconds(v).map(|s| Off(Some(s))),
    }
}

fn bytes_or_off(v: &str) -> Result<Off<u64>, String> {
    match v {
        "off" => Ok(Off(None)),
        _ => v
            .parse()
            .map(|n| Off(Some(n)))
            .map_err(|e| format!("{v:?}: {e} (a number, or off)")),
    }
}

impl Args {
    /// `ServerConfig`'s defaults with the limits and timeouts given on the command line.
    fn server_config(&self) -> ServerConfig {
        let mut c = ServerConfig::default();
        let set = |slot: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        if let Some(n) = self.max_connections {
            c.max_connections = n;
        }
        if let Some(n) = self.max_per_ip {
            c.max_connections_per_ip = n;
        }
        set(&mut c.eviction_grace, self.eviction_grace);
        set(&mut c.queue_timeout, self.queue_timeout);
        set(&mut c.idle_timeout, self.idle_timeout);
        set(&mut c.head_timeout, self.head_timeout);
        set(&mut c.read_timeout, self.read_timeout);
        set(&mut c.write_timeout, self.write_timeout);
        set(&mut c.tls_handshake_timeout, self.tls_handshake_timeout);
        set(&mut c.refusal_timeout, self.refusal_timeout);
        c.spool_memory = self.spool_memory;
        if let Some(Off(t)) = self.body_timeout {
            c.body_timeout = t;
        }
        let grace = self
            .min_rate_grace
            .or(c.min_rate.map(|r| r.grace))
            .unwrap_or(MinRate::default().grace);
        let rate = match self.min_rate {
            Some(Off(r)) => r,
            None => c.min_rate.map(|r| r.bytes_per_sec),
        };
        c.min_rate = rate.map(|bytes_per_sec| MinRate {
            bytes_per_sec,
            grace,
        });
        c
    }
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
        (Some(c), Some(k)) => Some(
            ReloadableServerTls::new(c, k, args.client_ca.as_deref()).map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    if let Some(addr) = args.metrics {
        if cfg!(not(feature = "metrics")) {
            return Err(
                "--metrics: built without the `metrics` feature (the library records \
                 nothing); build with --features metrics"
                    .into(),
            );
        }
        let bound = ops::serve_metrics(addr).await?;
        #[cfg(feature = "metrics")]
        icap::metrics::describe();
        // On stdout, like the listeners, for scripts that pass port 0.
        println!("dlp-server: metrics at http://{bound}/metrics");
    }
    let mut cfg = match &args.clamd {
        None => DlpConfig::new(rules, args.profile),
        Some(addr) => {
            let mut c = ClamdConfig::new(addr.clone());
            c.max_in_flight = args.clamd_max_in_flight.into();
            c.timeout = args.clamd_timeout;
            c.connect_timeout = args.clamd_connect_timeout;
            c.ping_interval = args.clamd_ping_interval;
            c.fildes_max = args.clamd_fildes_max;
            let clamd = Clamd::new(c);
            // Started even when clamd is not up yet: it answers 503 until clamd is.
            if let Err(e) = clamd.check().await {
                eprintln!("dlp-server: clamd {addr} is not answering yet ({e}): 503 until it does");
            }
            clamd.spawn_health_check();
            let mut cfg = DlpConfig::clamd(clamd, args.profile);
            cfg.holdback = args.clamd_holdback;
            cfg.over_limit = args.clamd_over_limit;
            cfg
        }
    };
    cfg.preview = args.preview;
    cfg.stream_over = args.stream_over.0;
    cfg.verbose = args.verbose;
    cfg.server = args.server_config();
    listen::raise_open_files("dlp-server", cfg.server.max_connections as u64 + 64);
    let (mut server, stats) = dlp_service::dlp_server(&cfg, None).map_err(|e| e.to_string())?;
    if let Some(t) = &tls {
        server = server.reloadable_tls(t);
        ops::reload_on_sighup("dlp-server", t.clone())?;
    }
    let mut listeners = Vec::new();
    let default = [SocketAddr::from(([127, 0, 0, 1], 1344))];
    let addrs = if args.listen.is_empty() {
        &default[..]
    } else {
        &args.listen[..]
    };
    for addr in addrs {
        let l = listen::listen(*addr).map_err(|e| format!("--listen {addr}: {e}"))?;
        let scheme = if tls.is_some() { "icaps" } else { "icap" };
        let local = l.local_addr().map_err(|e| e.to_string())?;
        // Printed on stdout (one line per listener) so scripts can read the bound port
        // when they pass port 0.
        println!(
            "dlp-server: {scheme}://{local}/reqmod and /respmod, profile {}{}{}",
            args.profile,
            match &args.clamd {
                Some(a) => format!(", engine clamd at {a}"),
                None => String::new(),
            },
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
        "dlp-server: {} connections ({} refused, {} closed to make room), {} requests \
         ({} cut as too slow), {} messages scanned ({} bytes), {} blocked, {} without a verdict",
        served.connections.load(Ordering::Relaxed),
        served.refused.load(Ordering::Relaxed),
        served.evicted.load(Ordering::Relaxed),
        served.requests.load(Ordering::Relaxed),
        served.timeouts.load(Ordering::Relaxed),
        stats.scanned.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed),
        stats.blocked.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    Ok(())
}

fn main() -> ExitCode {
    // clap prints --help and exits 0, or prints an argument error and exits 2.
    let args = Args::parse();
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
    };
    let runtime = builder
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dlp-server: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dlp-server: {e}");
            ExitCode::from(2)
        }
    }
}
