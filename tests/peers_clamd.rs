//! dlp-server with ClamAV's daemon as its engine (`--clamd`, `icap_dlp_engine::clamd`),
//! against a real clamd started per test (foreground, a Unix socket and a one-line EICAR
//! database in a temporary directory, structured-data detection on; it loads in well under
//! a second): the INSTREAM client alone, the ICAP answers of each profile, health (clamd
//! killed and back), squid in front, and c-icap's virus_scan on the same clamd as a peer.
//!
//! Needs clamd and sigtool (clamav-daemon), squid, c-icap with virus_scan, curl and python3
//! (`bash .ci/install-peers.sh`): without them each test is skipped with a message, or fails
//! under `CI=true`.
#![cfg(all(feature = "server", feature = "scan", feature = "adapt"))]

mod peers_support;
mod proxy_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use icap::client::{BodySource, Client, ClientConfig};
use icap::dlp::{ScanMode as Mode, ScanOutcome, ScanRequest};
use icap_dlp_engine::clamd::{Clamd, ClamdAddr, ClamdConfig, ClamdError, ClamdVerdict};
use icap_dlp_engine::service::{self, DlpConfig, OverLimit, Profile, Running};
use icap_dlp_engine::EICAR;
use peers_support::{
    curl_via, run_tool, serial, write_file, CIcap, ClamdPeer, Origin, Squid, TempDir,
    CLAMD_EICAR_NAME,
};
use sha2::{Digest, Sha256};

const CARD_FILE: &[u8] = b"name,card\nAda,4111 1111 1111 1111\n";
const SSN_FILE: &[u8] = b"name,ssn\nAda,078-05-1120\n";
const CARD_NAME: &str = "Heuristics.Structured.CreditCardNumber";
const SSN_NAME: &str = "Heuristics.Structured.SSN";

fn peers(extra: &[&str]) -> bool {
    let mut all = vec!["clamd", "sigtool"];
    all.extend_from_slice(extra);
    peers_support::available(&all)
}

/// The client side of clamd for `peer`, checking health every 200 ms.
fn clamd_for(peer: &ClamdPeer) -> Arc<Clamd> {
    let mut cfg = ClamdConfig::new(ClamdAddr::Unix(peer.socket.clone()));
    cfg.ping_interval = Duration::from_millis(200);
    Clamd::new(cfg)
}

/// Text without digits: `n` bytes.
fn clean_text(n: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog; nothing to report here.\n";
    line.iter().copied().cycle().take(n).collect()
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn scan(clamd: &Arc<Clamd>, body: &[u8], piece: usize) -> Result<ClamdVerdict, ClamdError> {
    let mut s = clamd.scan().await?;
    for p in body.chunks(piece) {
        s.feed(p).await?;
    }
    assert_eq!(s.bytes_sent(), body.len() as u64);
    s.finish().await
}

fn found(name: &str) -> ClamdVerdict {
    ClamdVerdict::Found(name.to_string())
}

/// The INSTREAM client alone: verdicts for pieces of any size, sessions reused, the bound
/// on scans at once, clamd's size limit told apart, clamd gone and back.
#[tokio::test]
async fn instream_client_against_a_real_clamd() {
    if !peers(&[]) {
        return;
    }
    let _serial = serial();
    let mut peer = ClamdPeer::start("100M");
    let clamd = clamd_for(&peer);
    assert!(!clamd.is_up(), "down until a PING answered");
    clamd.check().await.expect("PONG");
    assert!(clamd.is_up());

    assert_eq!(
        scan(&clamd, EICAR, 7).await.unwrap(),
        found(CLAMD_EICAR_NAME)
    );
    assert_eq!(scan(&clamd, CARD_FILE, 3).await.unwrap(), found(CARD_NAME));
    assert_eq!(scan(&clamd, SSN_FILE, 1000).await.unwrap(), found(SSN_NAME));
    // 3 MiB in 100 KB pieces: each split into 64 KiB chunks.
    let clean = clean_text(3 << 20);
    assert_eq!(
        scan(&clamd, &clean, 100_000).await.unwrap(),
        ClamdVerdict::Clean
    );
    // One session carried all of these, one after the other.
    assert_eq!(clamd.idle_sessions(), 1);

    // Two at once need two sessions; both go back to the pool.
    let (a, b) = tokio::join!(scan(&clamd, &clean, 65_536), scan(&clamd, EICAR, 68));
    assert_eq!(a.unwrap(), ClamdVerdict::Clean);
    assert_eq!(b.unwrap(), found(CLAMD_EICAR_NAME));
    assert_eq!(clamd.idle_sessions(), 2);

    // At most max_in_flight at once: the next waits for a turn, up to the timeout.
    let mut cfg = clamd.config().clone();
    cfg.max_in_flight = 1;
    cfg.timeout = Duration::from_millis(300);
    let one = Clamd::new(cfg);
    one.check().await.unwrap();
    let mut held = one.scan().await.unwrap();
    held.feed(b"first ").await.unwrap();
    let t = Instant::now();
    match one.scan().await {
        Err(ClamdError::Timeout(what)) => assert!(what.contains("free clamd connection")),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(held.finish().await.unwrap(), ClamdVerdict::Clean);
    assert_eq!(
        scan(&one, CARD_FILE, 8).await.unwrap(),
        found(CARD_NAME),
        "the turn is free again"
    );

    // Over StreamMaxLength: clamd's refusal, told apart; the client goes on working.
    let small = ClamdPeer::start("1M");
    let limited = clamd_for(&small);
    limited.check().await.unwrap();
    match scan(&limited, &clean_text(2 << 20), 65_536).await {
        Err(ClamdError::SizeLimit) => {}
        other => panic!("expected the size limit, got {other:?}"),
    }
    assert!(
        limited.is_up(),
        "a refused body says nothing of clamd's health"
    );
    assert_eq!(
        scan(&limited, EICAR, 68).await.unwrap(),
        found(CLAMD_EICAR_NAME)
    );

    // clamd killed: the pooled sessions are dead, and no new one can be opened.
    peer.kill();
    match scan(&clamd, EICAR, 68).await {
        Err(ClamdError::Connect(_)) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(!clamd.is_up());
    match scan(&clamd, EICAR, 68).await {
        Err(ClamdError::Unavailable(why)) => assert!(why.contains("connect"), "{why}"),
        other => panic!("expected unavailable at once, got {other:?}"),
    }
    assert!(clamd.check().await.is_err());
    // Back: one PONG and it scans again.
    peer.resume();
    clamd.check().await.expect("PONG");
    assert_eq!(
        scan(&clamd, EICAR, 68).await.unwrap(),
        found(CLAMD_EICAR_NAME)
    );
}

/// The `n` lines of clamd's log that report `name` found, once it has written them (it
/// logs after it answers).
fn found_lines(peer: &ClamdPeer, name: &str, n: usize) -> Vec<String> {
    let lines = || -> Vec<String> {
        peer.log()
            .lines()
            .filter(|l| l.contains(name) && l.contains("FOUND"))
            .map(str::to_string)
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(10);
    while lines().len() < n && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = lines();
    assert_eq!(got.len(), n, "{name} in clamd's log: {got:?}");
    got
}

/// How clamd names a body passed as a file: the memfd's name.
const AS_FILE: &str = "memfd:icap-clamd";

/// Small bodies to a local clamd go as an open file (FILDES), longer ones switch to
/// INSTREAM with what was held; both on one pooled session, one after the other. Which way
/// each went is read from clamd's own log (the memfd's name against `instream(...)`).
#[tokio::test]
async fn fildes_for_small_bodies_and_instream_past_the_limit() {
    if !peers(&[]) {
        return;
    }
    let _serial = serial();
    let peer = ClamdPeer::start("100M");
    let mut cfg = ClamdConfig::new(ClamdAddr::Unix(peer.socket.clone()));
    cfg.fildes_max = 4096;
    let clamd = Clamd::new(cfg.clone());
    clamd.check().await.expect("PONG");

    // EICAR in 7-byte pieces, held and passed as a file.
    assert_eq!(
        scan(&clamd, EICAR, 7).await.unwrap(),
        found(CLAMD_EICAR_NAME)
    );
    let lines = found_lines(&peer, CLAMD_EICAR_NAME, 1);
    assert!(lines[0].contains(AS_FILE), "went as a file: {lines:?}");
    // A card after 8 KiB of clean text: over fildes_max mid-body, streamed from the start.
    let mut long = clean_text(8192);
    long.extend_from_slice(CARD_FILE);
    assert_eq!(scan(&clamd, &long, 1000).await.unwrap(), found(CARD_NAME));
    let lines = found_lines(&peer, CARD_NAME, 1);
    assert!(lines[0].contains("instream"), "went as a stream: {lines:?}");
    // Exactly fildes_max bytes still go as a file, and clean is clean.
    assert_eq!(
        scan(&clamd, &clean_text(4096), 4096).await.unwrap(),
        ClamdVerdict::Clean
    );
    assert_eq!(scan(&clamd, SSN_FILE, 5).await.unwrap(), found(SSN_NAME));
    assert!(found_lines(&peer, SSN_NAME, 1)[0].contains(AS_FILE));
    // An empty body is a file too.
    assert_eq!(scan(&clamd, b"", 1).await.unwrap(), ClamdVerdict::Clean);
    assert_eq!(clamd.idle_sessions(), 1, "one session carried both kinds");

    // fildes_max 0: always INSTREAM.
    cfg.fildes_max = 0;
    let streamed = Clamd::new(cfg);
    streamed.check().await.unwrap();
    assert_eq!(
        scan(&streamed, EICAR, 68).await.unwrap(),
        found(CLAMD_EICAR_NAME)
    );
    let lines = found_lines(&peer, CLAMD_EICAR_NAME, 2);
    assert!(lines[1].contains("instream"), "went as a stream: {lines:?}");
}

/// A clamd that accepts and never answers: every wait is bounded.
#[tokio::test]
async fn a_silent_clamd_times_out() {
    let dir = TempDir::new("clamd-silent");
    let path = dir.join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let mut cfg = ClamdConfig::new(ClamdAddr::Unix(path));
    cfg.connect_timeout = Duration::from_millis(200);
    cfg.timeout = Duration::from_millis(300);
    let clamd = Clamd::new(cfg);
    match clamd.check().await {
        Err(ClamdError::Timeout(_)) => {}
        other => panic!("expected a PING timeout, got {other:?}"),
    }
    assert!(!clamd.is_up());
    assert!(clamd.why_down().unwrap().contains("PING"));
    held.abort();
}

/// The server on clamd, on a runtime of its own (the test thread blocks on processes).
struct Dlp {
    rt: tokio::runtime::Runtime,
    running: Option<Running>,
    clamd: Arc<Clamd>,
}

impl Dlp {
    fn start(peer: &ClamdPeer, profile: Profile, tune: impl FnOnce(&mut DlpConfig)) -> Dlp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let clamd = clamd_for(peer);
        let running = rt
            .block_on(async {
                clamd.check().await.expect("clamd answers");
                clamd.spawn_health_check();
                let mut cfg = DlpConfig::clamd(clamd.clone(), profile);
                tune(&mut cfg);
                service::spawn_loopback(cfg, None).await
            })
            .expect("start the DLP server");
        Dlp {
            rt,
            running: Some(running),
            clamd,
        }
    }

    fn port(&self) -> u16 {
        self.running.as_ref().expect("running").addr().port()
    }

    fn client(&self, path: &str) -> Client {
        Client::new(
            &[format!("icap://127.0.0.1:{}/{path}", self.port())],
            ClientConfig::default().retries(0),
        )
        .unwrap()
    }

    fn scan(&self, mode: Mode, name: &str, body: Vec<u8>) -> ScanOutcome {
        let path = if mode == Mode::Reqmod {
            "reqmod"
        } else {
            "respmod"
        };
        let client = self.client(path);
        let r = ScanRequest::new(mode, name, BodySource::Bytes(Bytes::from(body)));
        self.rt.block_on(client.scan(r)).expect("an ICAP answer")
    }

    /// Waits until the health check says `up`.
    fn wait_health(&self, up: bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.clamd.is_up() != up {
            assert!(Instant::now() < end, "clamd never seen up={up}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn counter(&self, f: impl Fn(&service::DlpStats) -> u64) -> u64 {
        f(self.running.as_ref().expect("running").stats())
    }
}

impl Drop for Dlp {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(15), r.shutdown()).await
            });
        }
    }
}

fn header(o: &ScanOutcome, name: &str) -> Option<String> {
    o.exchange
        .as_ref()?
        .response
        .headers
        .get_str(name)
        .map(str::to_string)
}

fn status(o: &ScanOutcome) -> u16 {
    o.exchange.as_ref().expect("an exchange").response.status
}

/// What the profiles answer for clamd's findings: a virus in `X-Infection-Found` with its
/// name, cards and SSNs in `X-Violations-Found`, the Symantec and Forcepoint shapes; clean
/// bodies of 20 MiB get 204; a body over StreamMaxLength is blocked (or let through).
#[test]
fn dlp_server_on_clamd_answers_in_each_profile() {
    if !peers(&[]) {
        return;
    }
    let _serial = serial();
    let peer = ClamdPeer::start("100M");
    let dlp = Dlp::start(&peer, Profile::Generic, |_| {});

    let v = dlp.scan(Mode::Respmod, "eicar.com", EICAR.to_vec());
    assert!(v.verdict.is_blocked(), "{}", v.verdict);
    assert_eq!(
        header(&v, "X-Infection-Found").as_deref(),
        Some(format!("Type=0; Resolution=2; Threat={CLAMD_EICAR_NAME};").as_str())
    );
    for (body, name, id) in [(CARD_FILE, CARD_NAME, "1"), (SSN_FILE, SSN_NAME, "2")] {
        for mode in [Mode::Reqmod, Mode::Respmod] {
            let o = dlp.scan(mode, "export.csv", body.to_vec());
            assert!(o.verdict.is_blocked(), "{name} {mode:?}: {}", o.verdict);
            assert_eq!(header(&o, "X-Infection-Found"), None, "not a virus");
            let exchange = o.exchange.as_ref().unwrap();
            let page = String::from_utf8_lossy(&exchange.body);
            assert!(page.contains("Access blocked"), "{page}");
            assert_eq!(
                exchange.response.http_response.as_ref().unwrap().status,
                403
            );
            let found = header(&o, "X-Violations-Found").expect("violations");
            let kind = if name == CARD_NAME {
                "payment card number"
            } else {
                "US social security number"
            };
            assert_eq!(
                found,
                format!("1 export.csv {name} {kind} (ClamAV) {id} 2"),
                "{mode:?}"
            );
        }
    }
    // 20 MiB and 21 MB clean: 204, each direction.
    for (mode, n) in [(Mode::Respmod, 20 << 20), (Mode::Reqmod, 21_000_000)] {
        let o = dlp.scan(mode, "big.txt", clean_text(n));
        assert_eq!(o.verdict.label(), "allowed", "{n}: {}", o.verdict);
        assert_eq!(status(&o), 204, "{n}");
    }
    assert_eq!(dlp.counter(|s| s.blocked.load(Ordering::Relaxed)), 5);
    assert_eq!(dlp.counter(|s| s.failed.load(Ordering::Relaxed)), 0);
    drop(dlp);

    // The vendors' shapes, from the same clamd finding.
    let sym = Dlp::start(&peer, Profile::Symantec, |_| {});
    let o = sym.scan(Mode::Reqmod, "export.csv", CARD_FILE.to_vec());
    assert!(o.verdict.is_blocked(), "{}", o.verdict);
    let x = o.exchange.as_ref().unwrap();
    assert_eq!(x.response.status, 200);
    assert_eq!(x.response.http_response.as_ref().unwrap().status, 200);
    let text = String::from_utf8_lossy(&x.body);
    assert!(
        text.starts_with("Content blocked due to policy violation\n") && text.contains(CARD_NAME),
        "{text}"
    );
    assert_eq!(header(&o, "X-Violations-Found"), None);
    drop(sym);
    let fp = Dlp::start(&peer, Profile::Forcepoint, |_| {});
    let o = fp.scan(Mode::Respmod, "eicar.com", EICAR.to_vec());
    let x = o.exchange.as_ref().unwrap();
    assert_eq!(x.response.http_response.as_ref().unwrap().status, 403);
    assert!(x.body.len() > service::FORCEPOINT_MIN_PAGE);
    assert!(String::from_utf8_lossy(&x.body).contains(CLAMD_EICAR_NAME));
    drop(fp);

    // Over clamd's StreamMaxLength (1 MiB here): blocked by default, or let through.
    let small = ClamdPeer::start("1M");
    let dlp = Dlp::start(&small, Profile::Generic, |_| {});
    let o = dlp.scan(Mode::Respmod, "big.txt", clean_text(2 << 20));
    assert!(o.verdict.is_blocked(), "{}", o.verdict);
    let v = header(&o, "X-Violations-Found").unwrap();
    assert!(v.contains(service::OVER_LIMIT_THREAT), "{v}");
    drop(dlp);
    let dlp = Dlp::start(&small, Profile::Generic, |c| {
        c.over_limit = OverLimit::Allow
    });
    let o = dlp.scan(Mode::Respmod, "big.txt", clean_text(2 << 20));
    assert_eq!(o.verdict.label(), "allowed", "{}", o.verdict);
}

/// Sends `request` on a new connection and returns what came back until the connection
/// closed or the head of an answer was complete (at most 10 s).
fn raw_icap(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn options_request(port: u16) -> Vec<u8> {
    format!("OPTIONS icap://127.0.0.1:{port}/respmod ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .into_bytes()
}

/// A RESPMOD of `body`, 204 allowed.
fn respmod_request(port: u16, body: &[u8]) -> Vec<u8> {
    let http = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut r = format!(
        "RESPMOD icap://127.0.0.1:{port}/respmod ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
         Encapsulated: res-hdr=0, res-body={}\r\n\r\n{http}{:x}\r\n",
        http.len(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r.extend_from_slice(b"\r\n0\r\n\r\n");
    r
}

/// clamd killed: OPTIONS and transactions get 503 (never a 204), at once; clamd back: the
/// same server serves again, without a restart.
#[test]
fn clamd_down_means_503_and_service_resumes_when_it_is_back() {
    if !peers(&[]) {
        return;
    }
    let _serial = serial();
    let mut peer = ClamdPeer::start("100M");
    let dlp = Dlp::start(&peer, Profile::Generic, |_| {});
    let port = dlp.port();
    assert!(raw_icap(port, &options_request(port)).starts_with("ICAP/1.0 200 OK\r\n"));
    assert!(raw_icap(port, &respmod_request(port, b"clean")).starts_with("ICAP/1.0 204 "));

    peer.kill();
    // Before the health check has noticed: the scan itself finds clamd gone.
    let got = raw_icap(port, &respmod_request(port, b"clean"));
    assert!(got.starts_with("ICAP/1.0 503 "), "{got}");
    dlp.wait_health(false);
    for _ in 0..3 {
        let got = raw_icap(port, &options_request(port));
        assert!(got.starts_with("ICAP/1.0 503 "), "OPTIONS: {got}");
        for body in [&b"clean"[..], EICAR] {
            let got = raw_icap(port, &respmod_request(port, body));
            assert!(got.starts_with("ICAP/1.0 503 "), "{got}");
        }
    }
    // Our client sees no "allowed" either.
    let client = dlp.client("respmod");
    let r = ScanRequest::new(
        Mode::Respmod,
        "eicar.com",
        BodySource::Bytes(Bytes::from_static(EICAR)),
    );
    match dlp.rt.block_on(client.scan(r)) {
        Ok(o) => assert!(o.verdict.label() != "allowed", "{}", o.verdict),
        Err(e) => assert!(e.to_string().contains("503"), "{e}"),
    }
    assert!(dlp.counter(|s| s.failed.load(Ordering::Relaxed)) >= 7);

    peer.resume();
    dlp.wait_health(true);
    assert!(raw_icap(port, &options_request(port)).starts_with("ICAP/1.0 200 OK\r\n"));
    assert!(raw_icap(port, &respmod_request(port, b"clean")).starts_with("ICAP/1.0 204 "));
    let got = raw_icap(port, &respmod_request(port, EICAR));
    assert!(got.starts_with("ICAP/1.0 200 OK\r\n"), "{got}");
    assert!(
        got.contains(&format!(
            "X-Infection-Found: Type=0; Resolution=2; Threat={CLAMD_EICAR_NAME};"
        )),
        "{got}"
    );
}

/// curl through squid (60 s at most); `upload` POSTs that file. (status, body, success).
fn curl(dir: &Path, proxy: &str, url: &str, upload: Option<&Path>) -> (u16, Vec<u8>, bool) {
    let f = curl_via(dir, proxy, url, upload, Duration::from_secs(60));
    (f.code, f.body, f.ok)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// squid -> dlp-server on clamd: an EICAR download is blocked, an upload with a card number
/// is blocked and never reaches the origin, a 64 MiB clean download arrives byte for byte;
/// clamd killed in the middle of a download with a card at its end: the transfer fails and
/// the card never arrives; while clamd is down nothing passes; back, everything works.
#[test]
fn squid_to_dlp_server_on_clamd() {
    if !peers(&["squid", "curl", "python3"]) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("squid-clamd");
    let files = dir.subdir("www");
    write_file(&files.join("eicar.com"), EICAR);
    write_file(&files.join("card.csv"), CARD_FILE);
    let big = clean_text(64 << 20);
    write_file(&files.join("big.bin"), &big);
    let mut late = clean_text(16 << 20);
    let at = late.len() - 100;
    late[at..at + 21].copy_from_slice(b" 4111 1111 1111 1111 ");
    write_file(&files.join("late-card.txt"), &late);
    drop(late);

    let mut peer = ClamdPeer::start("100M");
    let dlp = Dlp::start(&peer, Profile::Generic, |c| c.preview = 1024);
    let origin = Origin::start(&files, dir.path());
    let squid = Squid::start(dlp.port(), "reqmod", "respmod", true, "");
    let proxy = squid.proxy_url();
    let base = format!("http://127.0.0.1:{}", origin.port);
    let ctx = || format!("squid cache.log:\n{}", squid.cache_log());

    let (code, body, _) = curl(dir.path(), &proxy, &format!("{base}/eicar.com"), None);
    assert_eq!(code, 403, "{}", ctx());
    assert!(!contains(&body, EICAR));
    assert!(String::from_utf8_lossy(&body).contains(CLAMD_EICAR_NAME));

    let (code, body, _) = curl(
        dir.path(),
        &proxy,
        &format!("{base}/upload/secret-card.csv"),
        Some(&files.join("card.csv")),
    );
    assert_eq!(code, 403, "{}", ctx());
    assert!(String::from_utf8_lossy(&body).contains(CARD_NAME));
    assert!(
        !origin.process.log().contains("secret-card.csv"),
        "a blocked upload must not reach the origin"
    );

    let t = Instant::now();
    let (code, body, ok) = curl(dir.path(), &proxy, &format!("{base}/big.bin"), None);
    assert!(ok && code == 200, "HTTP {code}: {}", ctx());
    assert_eq!(body.len(), big.len());
    assert_eq!(sha256(&body), sha256(&big), "64 MiB, byte for byte");
    eprintln!("64 MiB through squid and clamd in {:?}", t.elapsed());
    drop(body);

    // A late finding, clamd up: the transfer is cut before the card.
    let (_, body, ok) = curl(dir.path(), &proxy, &format!("{base}/late-card.txt"), None);
    assert!(!ok, "a failed transfer");
    assert!(!contains(&body, b"4111 1111 1111 1111"));
    assert!(body.len() <= at, "{} bytes passed", body.len());

    // clamd killed while the same download runs.
    let killer = {
        let pid = peer.process.as_ref().unwrap().pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        })
    };
    let mut cmd = Command::new("curl");
    let out = dir.join("killed.out");
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "--limit-rate",
        "8M",
        "-x",
        &proxy,
        "-o",
    ])
    .arg(&out)
    .arg(format!("{base}/late-card.txt"));
    let r = run_tool(dir.path(), &mut cmd, Duration::from_secs(70));
    killer.join().unwrap();
    peer.kill();
    let got = std::fs::read(&out).unwrap_or_default();
    assert!(!r.status.success(), "clamd died: the transfer must fail");
    assert!(!contains(&got, b"4111 1111 1111 1111"));
    assert!(got.len() <= at, "{} bytes passed", got.len());
    dlp.wait_health(false);
    // Down: nothing passes, clean or not.
    for name in ["eicar.com", "card.csv"] {
        let (code, body, _) = curl(dir.path(), &proxy, &format!("{base}/{name}"), None);
        assert!(code >= 500, "{name} while clamd is down: HTTP {code}");
        assert!(!contains(&body, EICAR) && !contains(&body, b"4111 1111"));
    }
    // Back, without restarting anything but clamd.
    peer.resume();
    dlp.wait_health(true);
    // squid may still count the service down for a moment after its failures.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, _) = curl(dir.path(), &proxy, &format!("{base}/card.csv"), None);
        if code == 403 {
            break;
        }
        assert!(
            Instant::now() < end,
            "HTTP {code} after clamd came back: {}",
            ctx()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, body, _) = curl(dir.path(), &proxy, &format!("{base}/eicar.com"), None);
    assert_eq!(code, 403);
    assert!(!contains(&body, EICAR));
}

/// c-icap 0.5's virus_scan on the same clamd (clamd_mod), as a peer: our client gets its
/// verdicts, and icap-proxy blocks through it.
#[test]
fn cicap_virus_scan_on_the_same_clamd() {
    if !peers(&["c-icap", "curl"]) {
        return;
    }
    let _serial = serial();
    let peer = ClamdPeer::start("100M");
    let extra = format!(
        "Module common clamd_mod.so\nclamd_mod.ClamdSocket {}\n\
         Service virus_scan virus_scan.so\nvirus_scan.DefaultEngine clamd\n\
         virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE\n\
         virus_scan.MaxObjectSize 100M\nvirus_scan.Allow204Responces on\n",
        peer.socket.display()
    );
    let cicap = CIcap::start(&extra);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(
        &[format!("icap://127.0.0.1:{}/virus_scan", cicap.port)],
        ClientConfig::default().retries(0),
    )
    .unwrap();
    let scan = |name: &str, body: Vec<u8>| {
        let r = ScanRequest::new(Mode::Respmod, name, BodySource::Bytes(Bytes::from(body)));
        rt.block_on(client.scan(r)).expect("an answer")
    };
    let o = scan("eicar.com", EICAR.to_vec());
    assert!(o.verdict.is_blocked(), "{}", o.verdict);
    let infection = header(&o, "X-Infection-Found").expect("X-Infection-Found");
    assert!(
        infection.contains(&format!("Threat={CLAMD_EICAR_NAME}")),
        "{infection}"
    );
    let o = scan("export.csv", CARD_FILE.to_vec());
    assert!(o.verdict.is_blocked(), "{}", o.verdict);
    assert!(header(&o, "X-Infection-Found").unwrap().contains(CARD_NAME));
    let o = scan("clean.txt", clean_text(300_000));
    assert_eq!(o.verdict.label(), "allowed", "{}", o.verdict);

    // icap-proxy with virus_scan for uploads and downloads.
    let origin = proxy_support::Origin::start();
    let svc = format!("icap://127.0.0.1:{}/virus_scan", cicap.port);
    let proxy =
        proxy_support::Proxy::start(&["--reqmod".into(), svc.clone(), "--respmod".into(), svc]);
    let dir = TempDir::new("virus-upload");
    let file = dir.join("eicar.com");
    std::fs::write(&file, EICAR).unwrap();
    let (code, body) = proxy_support::curl(
        proxy.port,
        &["--data-binary", &format!("@{}", file.display())],
        &origin.url("/upload-eicar"),
    );
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert!(
        origin.uploads.lock().unwrap().is_empty(),
        "nothing reached the origin"
    );
    let url = origin.url("/bytes/200000");
    let (code, body) = proxy_support::curl(proxy.port, &[], &url);
    assert_eq!(code, 200);
    assert_eq!(
        proxy_support::sha(&body),
        proxy_support::pattern_sha(200_000)
    );
}

/// The binary: `dlp-server --clamd SOCKET` blocks what clamd finds and says which engine it
/// runs; `--rules` (the embedded engine's) and `--clamd` together are refused.
#[test]
fn dlp_server_binary_with_clamd() {
    if !peers(&[]) {
        return;
    }
    let _serial = serial();
    let peer = ClamdPeer::start("100M");
    let bin = proxy_support::example("dlp-server");
    let both = Command::new(&bin)
        .args(["--rules", "x.txt", "--clamd"])
        .arg(&peer.socket)
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));

    let dir = TempDir::new("dlp-server-clamd");
    let port = peers_support::free_port();
    let mut cmd = Command::new(&bin);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--clamd"])
        .arg(&peer.socket)
        .args(["--clamd-timeout", "5", "--clamd-max-in-flight", "4"]);
    let mut server = peers_support::Process::spawn("dlp-server", cmd, dir.join("log"));
    server.wait_port(port, Duration::from_secs(10));
    let got = raw_icap(port, &respmod_request(port, EICAR));
    assert!(got.starts_with("ICAP/1.0 200 OK\r\n"), "{got}");
    assert!(
        got.contains(&format!("Threat={CLAMD_EICAR_NAME};")),
        "{got}"
    );
    assert!(raw_icap(port, &respmod_request(port, b"clean")).starts_with("ICAP/1.0 204 "));
    server.stop();
    let log = server.log();
    assert!(
        log.contains(&format!(
            "profile generic, engine clamd at {}",
            peer.socket.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("2 messages scanned (73 bytes), 1 blocked, 0 without a verdict"),
        "{log}"
    );
}
