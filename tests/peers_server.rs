//! Real clients against the example DLP server (`icap_dlp_engine::service`), run
//! in-process on loopback: c-icap-client (OPTIONS, REQMOD, RESPMOD, with and without preview,
//! 204 / echo / block answers, each vendor profile) and squid with curl and a local origin
//! (REQMOD and RESPMOD, preview 1024, persistent ICAP connections on and off); openssl
//! s_client with an X.509 v1 client certificate (named in the handshake log).
//!
//! Needs c-icap-client, squid, curl and python3 (`bash .ci/install-peers.sh`): without them
//! each test is skipped with a message, or fails under `CI=true`.
#![cfg(feature = "server")]

mod peers_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use icap::server::Stats;
use icap_dlp_engine::service::{self as dlp_service, DlpConfig, Profile, Running};
use icap_dlp_engine::{Rules, EICAR};
use peers_support::{curl_via, run_tool, write_file, Fetched, Origin, Squid, TempDir, ToolOutput};
use sha2::{Digest, Sha256};

/// A test card number (Visa test range, passes Luhn).
const CARD: &str = "4111 1111 1111 1111";
/// Its masked form, the only form block pages and headers may show.
const CARD_MASKED: &str = "4111********1111";

/// The DLP server on its own tokio runtime, so the test thread can block on processes.
struct Dlp {
    rt: tokio::runtime::Runtime,
    running: Option<Running>,
}

impl Dlp {
    fn start(cfg: DlpConfig) -> Dlp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let running = rt
            .block_on(dlp_service::spawn_loopback(cfg, None))
            .expect("start the DLP server");
        Dlp {
            rt,
            running: Some(running),
        }
    }

    fn with_profile(profile: Profile) -> Dlp {
        Dlp::start(DlpConfig::new(Rules::default(), profile))
    }

    fn port(&self) -> u16 {
        self.running.as_ref().expect("running").addr().port()
    }

    fn blocked(&self) -> u64 {
        let r = self.running.as_ref().expect("running");
        r.stats().blocked.load(Ordering::Relaxed)
    }

    /// Graceful shutdown; the server's connection and request counters.
    fn stop(&mut self) -> Arc<Stats> {
        let running = self.running.take().expect("running");
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(15), running.shutdown()).await
            })
            .expect("the server stops within 15 s")
            .expect("the server ran without I/O error")
    }
}

impl Drop for Dlp {
    fn drop(&mut self) {
        if self.running.is_some() && !std::thread::panicking() {
            self.stop();
        }
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Clean text without long digit runs: `n` bytes.
fn clean_text(n: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog; nothing to report here.\n";
    line.iter().copied().cycle().take(n).collect()
}

/// Clean text of `n` bytes with ` needle ` written at `at`. The spaces matter: a number
/// touching a letter is an identifier, not a card, for the scanner.
fn text_with(n: usize, at: usize, needle: &[u8]) -> Vec<u8> {
    let mut v = clean_text(n);
    let padded = [&b" "[..], needle, b" "].concat();
    v[at..at + padded.len()].copy_from_slice(&padded);
    v
}

// ---------------------------------------------------------------------------------------------
// c-icap-client

/// What c-icap-client printed (it prints everything on stderr).
struct ClientRun {
    out: String,
    /// Bytes it saved with `-o` (nothing for a 204).
    saved: Option<Vec<u8>>,
}

impl ClientRun {
    /// The ICAP status of the last response printed (`ICAP/1.0 NNN ...`).
    fn status(&self) -> u16 {
        self.out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ICAP/1.0 "))
            .filter_map(|r| r.get(..3)?.parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no ICAP status line in:\n{}", self.out))
    }

    /// The value of a header line `Name: value` anywhere in the output.
    fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}: ");
        self.out
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_string))
    }

    fn has_line(&self, line: &str) -> bool {
        self.out.lines().any(|l| l.trim() == line)
    }
}

/// Runs c-icap-client against 127.0.0.1:`port`/`service`; `-v` always, `-o` into `dir`.
fn cicap_client(dir: &Path, port: u16, service: &str, args: &[&str]) -> ClientRun {
    let saved = dir.join(format!("saved-{}", std::process::id()));
    let _ = std::fs::remove_file(&saved);
    let mut cmd = Command::new("c-icap-client");
    cmd.args([
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-s",
        service,
        "-v",
    ])
    .args(args);
    if args.contains(&"-f") {
        cmd.arg("-o").arg(&saved);
    }
    let ToolOutput {
        status,
        stdout,
        stderr,
    } = run_tool(dir, &mut cmd, Duration::from_secs(30));
    assert!(
        status.success(),
        "c-icap-client {args:?}: {status}\n{stderr}"
    );
    ClientRun {
        out: format!("{stdout}{stderr}"),
        saved: std::fs::read(&saved).ok(),
    }
}

/// c-icap-client's OPTIONS on both services: the typed summary it prints and the headers
/// announce preview 4096, Allow 204, keep-alive, the method of each service and the ISTag;
/// an unknown service gets 404.
#[test]
fn cicap_client_options() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-options");
    let dlp = Dlp::with_profile(Profile::Generic);
    for (service, method) in [("reqmod", "REQMOD"), ("respmod", "RESPMOD")] {
        let run = cicap_client(dir.path(), dlp.port(), service, &[]);
        assert_eq!(run.status(), 200, "{}", run.out);
        // c-icap-client's own reading of the OPTIONS answer.
        assert!(run.has_line("Allow 204: Yes"), "{}", run.out);
        assert!(run.has_line("Allow 206: No"), "{}", run.out);
        assert!(run.has_line("Preview: 4096"), "{}", run.out);
        assert!(run.has_line("Keep alive: Yes"), "{}", run.out);
        assert_eq!(run.header("Methods").as_deref(), Some(method));
        assert_eq!(run.header("ISTag").as_deref(), Some("\"icap-dlp-1\""));
        assert_eq!(run.header("Transfer-Preview").as_deref(), Some("*"));
        assert_eq!(run.header("Encapsulated").as_deref(), Some("null-body=0"));
    }
    let run = cicap_client(dir.path(), dlp.port(), "no-such-service", &[]);
    assert_eq!(run.status(), 404, "{}", run.out);
    assert!(run.has_line("Keep alive: No"), "{}", run.out);
}

/// Sizes that take each preview path of c-icap-client (preview 4096 announced): smaller than
/// the preview (whole body with ieof), exactly the preview (no ieof, 100 Continue, empty
/// rest), larger (100 Continue, then the rest).
const SIZES: [usize; 3] = [100, 4096, 300_000];

/// Clean REQMOD and RESPMOD bodies of every size, with and without preview, get 204.
#[test]
fn cicap_client_clean_gets_204() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-clean");
    let dlp = Dlp::with_profile(Profile::Generic);
    for size in SIZES {
        let file = dir.join(format!("clean-{size}.txt"));
        write_file(&file, &clean_text(size));
        let f = file.to_str().unwrap();
        for preview in [true, false] {
            for (service, mode) in [("reqmod", "-req"), ("respmod", "-resp")] {
                let mut args = vec![mode, "http://origin.example/files/clean.txt", "-f", f];
                if !preview {
                    args.push("-nopreview");
                }
                let run = cicap_client(dir.path(), dlp.port(), service, &args);
                assert_eq!(
                    run.status(),
                    204,
                    "{service} {size} preview={preview}:\n{}",
                    run.out
                );
                assert!(
                    run.out.contains("No modification needed"),
                    "{service} {size}:\n{}",
                    run.out
                );
                assert!(run.saved.is_none(), "a 204 carries no body to save");
            }
        }
    }
    assert_eq!(dlp.blocked(), 0);
}

/// Without Allow 204 (`-no204`) a clean body comes back as a 200 echo, byte for byte, also
/// beyond the server's 1 MiB in-memory spool (the echo then comes from a temporary file).
/// The exception: a body that fits in the preview (sent with `ieof`) gets a 204 anyway,
/// which RFC 3507 4.5 allows in answer to a preview and c-icap does too.
#[test]
fn cicap_client_clean_without_allow_204_is_echoed() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-echo");
    let dlp = Dlp::with_profile(Profile::Generic);
    for size in [100, 4096, 3 * 1024 * 1024 + 17] {
        let body = clean_text(size);
        let file = dir.join(format!("clean-{size}.txt"));
        write_file(&file, &body);
        let f = file.to_str().unwrap();
        for preview in [true, false] {
            for (service, mode) in [("reqmod", "-req"), ("respmod", "-resp")] {
                let mut args = vec![mode, "http://origin.example/clean.txt", "-f", f, "-no204"];
                if !preview {
                    args.push("-nopreview");
                }
                let run = cicap_client(dir.path(), dlp.port(), service, &args);
                if preview && size < 4096 {
                    assert_eq!(run.status(), 204, "{service} {size}:\n{}", run.out);
                    continue;
                }
                assert_eq!(run.status(), 200, "{service} {size}:\n{}", run.out);
                let saved = run.saved.clone().expect("a 200 echo has a body");
                assert_eq!(saved.len(), size, "{service} {size} preview={preview}");
                assert_eq!(sha256(&saved), sha256(&body), "{service} {size}");
                assert_eq!(run.header("X-Violations-Found"), None);
            }
        }
    }
    assert_eq!(dlp.blocked(), 0);
}

/// A card number gets a 200 with an HTTP 403 block page and `X-Violations-Found` naming the
/// masked card, in REQMOD and RESPMOD, with and without preview, wherever the card sits: in
/// a small body, across the 4096-byte preview boundary, and 2 MB into a large body.
#[test]
fn cicap_client_card_is_blocked() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-card");
    let dlp = Dlp::with_profile(Profile::Generic);
    let cases = [
        ("small", text_with(200, 50, CARD.as_bytes())),
        ("preview-edge", text_with(10_000, 4090, CARD.as_bytes())),
        ("large", text_with(3_000_000, 2_000_000, CARD.as_bytes())),
    ];
    let mut expected_blocks = 0;
    for (name, body) in &cases {
        let file = dir.join(format!("{name}.txt"));
        write_file(&file, body);
        let f = file.to_str().unwrap();
        for preview in [true, false] {
            for (service, mode) in [("reqmod", "-req"), ("respmod", "-resp")] {
                let url = format!("http://origin.example/up/{name}.txt");
                let mut args = vec![mode, url.as_str(), "-f", f];
                if !preview {
                    args.push("-nopreview");
                }
                let run = cicap_client(dir.path(), dlp.port(), service, &args);
                expected_blocks += 1;
                assert_eq!(run.status(), 200, "{name} {service}:\n{}", run.out);
                let v = run.header("X-Violations-Found").unwrap_or_else(|| {
                    panic!("no X-Violations-Found ({name} {service}):\n{}", run.out)
                });
                assert!(v.starts_with("1 "), "one violation: {v}");
                assert!(
                    v.contains("DLP.PaymentCard") && v.contains(CARD_MASKED),
                    "{v}"
                );
                assert!(v.contains(&format!("{name}.txt")), "file name in {v}");
                assert_eq!(run.header("X-Infection-Found"), None);
                assert!(run.has_line("HTTP/1.1 403 Forbidden"), "{}", run.out);
                let page = String::from_utf8(run.saved.expect("a block page")).unwrap();
                assert!(
                    page.contains("Access blocked") && page.contains(CARD_MASKED),
                    "{page}"
                );
                assert!(
                    !page.contains(CARD),
                    "the page must not repeat the card number"
                );
            }
        }
    }
    assert_eq!(dlp.blocked(), expected_blocks);
}

/// The EICAR string gets `X-Infection-Found` as c-icap's virus_scan writes it, plus the
/// violation list and the 403 page.
#[test]
fn cicap_client_eicar_is_blocked() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-eicar");
    let dlp = Dlp::with_profile(Profile::Generic);
    let file = dir.join("eicar.com");
    write_file(&file, EICAR);
    let f = file.to_str().unwrap();
    for (service, mode) in [("respmod", "-resp"), ("reqmod", "-req")] {
        for extra in [&[][..], &["-nopreview"][..]] {
            let mut args = vec![mode, "http://origin.example/eicar.com", "-f", f];
            args.extend_from_slice(extra);
            let run = cicap_client(dir.path(), dlp.port(), service, &args);
            assert_eq!(run.status(), 200, "{}", run.out);
            assert_eq!(
                run.header("X-Infection-Found").as_deref(),
                Some("Type=0; Resolution=2; Threat=EICAR-Test-File;"),
                "{}",
                run.out
            );
            let v = run.header("X-Violations-Found").expect("violations");
            assert!(
                v.contains("eicar.com") && v.contains("EICAR-Test-File"),
                "{v}"
            );
            assert!(run.has_line("HTTP/1.1 403 Forbidden"), "{}", run.out);
        }
    }
}

/// Each vendor profile blocks its own way: Symantec with an `HTTP/1.1 200 OK` block text in
/// place of the request (and no vendor header), Forcepoint with a 403 page longer than 512
/// bytes; both answer clean content with 204. SSNs and keywords from rules are found too.
#[test]
fn cicap_client_vendor_profiles() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-profiles");
    let ssn = dir.join("ssn.txt");
    write_file(&ssn, b"employee record: SSN 123-45-6789, start date 2020\n");
    let clean = dir.join("clean.txt");
    write_file(&clean, &clean_text(5000));
    let (ssn, clean) = (ssn.to_str().unwrap(), clean.to_str().unwrap());

    // Symantec: REQMOD block = an HTTP 200 response in place of the request.
    let dlp = Dlp::with_profile(Profile::Symantec);
    let run = cicap_client(
        dir.path(),
        dlp.port(),
        "reqmod",
        &["-req", "http://up.example/ssn.txt", "-f", ssn],
    );
    assert_eq!(run.status(), 200, "{}", run.out);
    assert_eq!(run.header("ISTag").as_deref(), Some("\"Vontu14.0-icap\""));
    assert!(run.has_line("HTTP/1.1 200 OK"), "{}", run.out);
    assert!(run
        .header("Encapsulated")
        .unwrap()
        .starts_with("res-hdr=0, res-body="));
    assert_eq!(
        run.header("X-Violations-Found"),
        None,
        "Symantec sends no vendor headers"
    );
    let text = String::from_utf8(run.saved.unwrap()).unwrap();
    assert!(
        text.starts_with("Content blocked due to policy violation"),
        "{text}"
    );
    assert!(
        text.contains("SSN ***-**-6789") && !text.contains("123-45-6789"),
        "{text}"
    );
    let run = cicap_client(
        dir.path(),
        dlp.port(),
        "reqmod",
        &["-req", "http://up.example/c.txt", "-f", clean],
    );
    assert_eq!(run.status(), 204, "{}", run.out);
    drop(dlp);

    // Forcepoint: a 403 page of more than 512 bytes, RESPMOD and REQMOD alike.
    let dlp = Dlp::with_profile(Profile::Forcepoint);
    for (service, mode) in [("respmod", "-resp"), ("reqmod", "-req")] {
        let run = cicap_client(
            dir.path(),
            dlp.port(),
            service,
            &[mode, "http://o.example/ssn.txt", "-f", ssn],
        );
        assert_eq!(run.status(), 200, "{}", run.out);
        assert!(run.has_line("HTTP/1.1 403 Forbidden"), "{}", run.out);
        assert_eq!(run.header("X-Violations-Found"), None);
        let page = run.saved.clone().unwrap();
        assert!(
            page.len() > dlp_service::FORCEPOINT_MIN_PAGE,
            "{} bytes",
            page.len()
        );
        let len: usize = run.header("Content-Length").unwrap().parse().unwrap();
        assert_eq!(len, page.len());
        let run = cicap_client(
            dir.path(),
            dlp.port(),
            service,
            &[mode, "http://o.example/c.txt", "-f", clean],
        );
        assert_eq!(run.status(), 204, "{}", run.out);
    }
    drop(dlp);

    // Rules: a keyword (case-insensitive) and a regex; the built-in detectors stay on.
    let rules = Rules::parse("keyword: Project Bluebird\nregex: ACME-[0-9]{6}\n").unwrap();
    let dlp = Dlp::start(DlpConfig::new(rules, Profile::Generic));
    for (name, body, threat) in [
        (
            "kw.txt",
            &b"notes about PROJECT BLUEBIRD launch"[..],
            "DLP.Keyword",
        ),
        ("re.txt", &b"order ACME-123456 shipped"[..], "DLP.Regex"),
    ] {
        let file = dir.join(name);
        write_file(&file, body);
        let run = cicap_client(
            dir.path(),
            dlp.port(),
            "respmod",
            &["-resp", "http://o.example/x", "-f", file.to_str().unwrap()],
        );
        assert_eq!(run.status(), 200, "{}", run.out);
        let v = run.header("X-Violations-Found").expect("violations");
        assert!(v.contains(threat), "{name}: {v}");
    }
}

// ---------------------------------------------------------------------------------------------
// squid + curl

/// curl through the proxy (30 s at most); `upload` POSTs that file. curl must succeed.
fn curl(dir: &Path, proxy: &str, url: &str, upload: Option<&Path>) -> Fetched {
    let f = curl_via(dir, proxy, url, upload, Duration::from_secs(30));
    assert!(f.ok, "curl {url} failed (status {})", f.code);
    f
}

/// Files the origin serves, and what each should give through squid.
struct SquidFixture {
    files: PathBuf,
    clean: Vec<(&'static str, Vec<u8>)>,
}

/// Largest body used through squid by the scenarios that answer after the whole body:
/// squid 5.7 sends at most ~64 KiB past the preview until the ICAP answer starts (see
/// `squid_large_bodies_stream_with_early_echo` for larger ones).
const SQUID_MAX_BODY: usize = 50_000;

fn squid_fixture(dir: &TempDir) -> SquidFixture {
    let files = dir.subdir("www");
    let clean = vec![
        ("small.txt", clean_text(100)),
        ("exact.txt", clean_text(1024)),
        ("medium.txt", clean_text(3000)),
        ("large.bin", clean_text(SQUID_MAX_BODY)),
    ];
    for (n, b) in &clean {
        write_file(&files.join(n), b);
    }
    write_file(
        &files.join("card.txt"),
        &text_with(3000, 1500, CARD.as_bytes()),
    );
    write_file(
        &files.join("card-large.bin"),
        &text_with(SQUID_MAX_BODY, SQUID_MAX_BODY - 100, CARD.as_bytes()),
    );
    write_file(&files.join("eicar.com"), EICAR);
    SquidFixture { files, clean }
}

/// Runs the squid scenario against our server with `icap_persistent_connections` on or
/// off; returns the ICAP connections accepted and the REQMOD/RESPMOD messages scanned.
fn squid_scenario(persistent: bool) -> Option<(u64, u64)> {
    if !peers_support::available(&["squid", "curl", "python3"]) {
        return None;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new(if persistent { "squid-on" } else { "squid-off" });
    let fx = squid_fixture(&dir);
    let mut cfg = DlpConfig::new(Rules::default(), Profile::Generic);
    // squid takes the preview size of the OPTIONS answer: 1024 as in the DLP setup.
    cfg.preview = 1024;
    let mut dlp = Dlp::start(cfg);
    let origin = Origin::start(&fx.files, dir.path());
    let mut squid = Squid::start(dlp.port(), "reqmod", "respmod", persistent, "");
    let proxy = squid.proxy_url();
    let base = format!("http://127.0.0.1:{}", origin.port);
    let ctx = |what: &str, f: &Fetched| {
        format!(
            "{what}: HTTP {} {:?}\nsquid cache.log:\n{}",
            f.code,
            String::from_utf8_lossy(&f.body[..f.body.len().min(400)]),
            squid.cache_log()
        )
    };

    // RESPMOD (and a bodiless REQMOD) on clean downloads: the original bytes.
    for (name, body) in &fx.clean {
        let f = curl(dir.path(), &proxy, &format!("{base}/{name}"), None);
        assert_eq!(f.code, 200, "{}", ctx(name, &f));
        assert_eq!(sha256(&f.body), sha256(body), "{}", ctx(name, &f));
    }
    // Blocked downloads: the 403 page instead of the file.
    for name in ["card.txt", "card-large.bin", "eicar.com"] {
        let f = curl(dir.path(), &proxy, &format!("{base}/{name}"), None);
        assert_eq!(f.code, 403, "{}", ctx(name, &f));
        let page = String::from_utf8_lossy(&f.body);
        assert!(
            page.contains("Access blocked") && page.contains(name),
            "{}",
            ctx(name, &f)
        );
        assert!(!page.contains(CARD));
    }
    // REQMOD uploads: clean ones reach the origin whole, a card never does.
    for (name, body) in &fx.clean {
        let f = curl(
            dir.path(),
            &proxy,
            &format!("{base}/upload/{name}"),
            Some(&fx.files.join(name)),
        );
        assert_eq!(f.code, 200, "{}", ctx(name, &f));
        assert_eq!(
            String::from_utf8_lossy(&f.body),
            format!("received {} bytes\n", body.len()),
            "{}",
            ctx(name, &f)
        );
    }
    let f = curl(
        dir.path(),
        &proxy,
        &format!("{base}/upload/secret-card.txt"),
        Some(&fx.files.join("card.txt")),
    );
    assert_eq!(f.code, 403, "{}", ctx("card upload", &f));
    assert!(String::from_utf8_lossy(&f.body).contains("secret-card.txt"));
    let origin_log = origin.process.log();
    assert!(
        !origin_log.contains("secret-card.txt"),
        "a blocked upload must not reach the origin:\n{origin_log}"
    );
    assert!(
        origin_log.contains("POST /upload/large.bin"),
        "{origin_log}"
    );

    // 4 clean GETs, 3 blocked GETs, 4 clean POSTs, 1 blocked POST; each GET scanned twice
    // (the bodiless REQMOD is not counted as blocked), so 4 blocks.
    assert_eq!(dlp.blocked(), 4, "{}", squid.cache_log());
    let scanned = dlp
        .running
        .as_ref()
        .expect("running")
        .stats()
        .scanned
        .load(Ordering::Relaxed);
    squid.process.stop();
    drop(origin);
    let stats = dlp.stop();
    let conns = stats.connections.load(Ordering::Relaxed);
    eprintln!(
        "squid persistent={persistent}: {conns} ICAP connections, {scanned} messages scanned"
    );
    Some((conns, scanned))
}

/// squid -> our server with persistent ICAP connections: every download and upload gives
/// the right bytes or the 403 page, and connections are reused (fewer connections than
/// ICAP requests).
#[test]
fn squid_persistent_connections_on() {
    let Some((conns, scanned)) = squid_scenario(true) else {
        return;
    };
    // 12 HTTP transactions: a REQMOD each, a RESPMOD for the 11 that reached the origin.
    assert!(scanned >= 23, "{scanned} messages scanned");
    // Reuse: a handful of connections (OPTIONS and one per service) carry everything.
    assert!(
        conns * 3 < scanned,
        "{conns} connections for {scanned} REQMOD/RESPMOD: connections were not reused"
    );
}

/// The same with persistent connections off: same results, a new connection for every ICAP
/// transaction.
#[test]
fn squid_persistent_connections_off() {
    let Some((conns, scanned)) = squid_scenario(false) else {
        return;
    };
    assert!(scanned >= 23, "{scanned} messages scanned");
    assert!(
        conns >= scanned + 2,
        "{conns} connections for {scanned} REQMOD/RESPMOD and 2 OPTIONS"
    );
}

/// Large bodies through squid: squid 5.7 keeps the whole body from its first byte while a
/// preview may still be answered with 204, frees nothing before the final answer, and holds
/// 64 KiB; so it sends ~64 KiB after `100 Continue` and waits. With `stream_over` the DLP
/// service answers at once with a 200 echo and passes each piece on once scanned: a clean
/// 2 MiB download and upload go through whole; a card number 1.5 MB into a download cuts
/// the transfer before the card's bytes reach curl.
#[test]
fn squid_large_bodies_stream_with_early_echo() {
    if !peers_support::available(&["squid", "curl", "python3"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("squid-large");
    let files = dir.subdir("www");
    let body = clean_text(2 * 1024 * 1024);
    write_file(&files.join("big.bin"), &body);
    let card_at = 1_500_000;
    write_file(
        &files.join("card.bin"),
        &text_with(body.len(), card_at, CARD.as_bytes()),
    );
    let mut cfg = DlpConfig::new(Rules::default(), Profile::Generic);
    cfg.preview = 1024;
    cfg.stream_over = Some(48 * 1024);
    cfg.server.read_timeout = Duration::from_secs(10);
    let dlp = Dlp::start(cfg);
    let origin = Origin::start(&files, dir.path());
    let squid = Squid::start(dlp.port(), "reqmod", "respmod", true, "");
    let proxy = squid.proxy_url();
    let base = format!("http://127.0.0.1:{}", origin.port);

    let f = curl(dir.path(), &proxy, &format!("{base}/big.bin"), None);
    assert_eq!(f.code, 200);
    assert_eq!(sha256(&f.body), sha256(&body), "the whole file, unchanged");

    // Upload (REQMOD): the origin receives every byte.
    let up = curl(
        dir.path(),
        &proxy,
        &format!("{base}/upload"),
        Some(&files.join("big.bin")),
    );
    assert_eq!(up.code, 200);
    assert_eq!(
        String::from_utf8_lossy(&up.body).trim(),
        format!("received {} bytes", body.len())
    );

    // A late finding: the transfer fails and the card never arrives.
    let out = dir.join("card.out");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-x", &proxy, "-o"])
        .arg(&out)
        .arg(format!("{base}/card.bin"));
    let r = run_tool(dir.path(), &mut cmd, Duration::from_secs(40));
    let got = std::fs::read(&out).unwrap_or_default();
    assert!(
        !r.status.success(),
        "curl must see a failed transfer: {}",
        r.stderr
    );
    assert!(got.len() < card_at, "{} bytes passed", got.len());
    assert!(!got.windows(CARD.len()).any(|w| w == CARD.as_bytes()));
    assert_eq!(dlp.blocked(), 1);
}

/// The DLP server as `dlp-server --listen ADDR` runs it, no flag given (`DlpConfig::new`,
/// which the binary uses untouched): a 400 KB and a 2 MiB clean download through squid
/// once stalled at squid's 64 KiB and came back as HTTP 500 after the 30 s read timeout.
/// Now every size goes through: whole-body scanning with a block page up to
/// `STREAM_OVER`, a streamed echo above it (a late card cuts the transfer).
#[test]
fn squid_with_the_default_configuration_serves_bodies_of_any_size() {
    if !peers_support::available(&["squid", "curl", "python3"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("squid-default");
    let files = dir.subdir("www");
    let at_threshold = dlp_service::STREAM_OVER as usize;
    let clean = [
        ("threshold.txt", clean_text(at_threshold)),
        ("400k.txt", clean_text(400_000)),
        ("2m.bin", clean_text(2 * 1024 * 1024)),
    ];
    for (n, b) in &clean {
        write_file(&files.join(n), b);
    }
    write_file(
        &files.join("card-threshold.txt"),
        &text_with(at_threshold, at_threshold - 100, CARD.as_bytes()),
    );
    let card_at = 300_000;
    write_file(
        &files.join("card-400k.txt"),
        &text_with(400_000, card_at, CARD.as_bytes()),
    );
    let mut dlp = Dlp::start(DlpConfig::new(Rules::default(), Profile::Generic));
    let origin = Origin::start(&files, dir.path());
    let squid = Squid::start(dlp.port(), "reqmod", "respmod", true, "");
    let proxy = squid.proxy_url();
    let base = format!("http://127.0.0.1:{}", origin.port);
    let started = std::time::Instant::now();

    for (name, body) in &clean {
        let f = curl(dir.path(), &proxy, &format!("{base}/{name}"), None);
        assert_eq!(
            f.code,
            200,
            "{name}: {}\n{}",
            String::from_utf8_lossy(&f.body[..f.body.len().min(300)]),
            squid.cache_log()
        );
        assert_eq!(
            sha256(&f.body),
            sha256(body),
            "{name}: the whole file, unchanged"
        );
        let up = curl(
            dir.path(),
            &proxy,
            &format!("{base}/upload/{name}"),
            Some(&files.join(name)),
        );
        assert_eq!(up.code, 200, "upload {name}");
        assert_eq!(
            String::from_utf8_lossy(&up.body),
            format!("received {} bytes\n", body.len())
        );
    }
    // Up to the threshold a finding still gets the block page ...
    let f = curl(
        dir.path(),
        &proxy,
        &format!("{base}/card-threshold.txt"),
        None,
    );
    assert_eq!(f.code, 403);
    assert!(!String::from_utf8_lossy(&f.body).contains(CARD));
    // ... above it the transfer is cut before the card.
    let out = dir.join("card.out");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-x", &proxy, "-o"])
        .arg(&out)
        .arg(format!("{base}/card-400k.txt"));
    let r = run_tool(dir.path(), &mut cmd, Duration::from_secs(40));
    let got = std::fs::read(&out).unwrap_or_default();
    assert!(!r.status.success(), "a failed transfer: {}", r.stderr);
    assert!(got.len() < card_at, "{} bytes passed", got.len());
    assert!(!got.windows(CARD.len()).any(|w| w == CARD.as_bytes()));
    assert_eq!(dlp.blocked(), 2);
    // Nothing waited for a timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    drop(squid);
    drop(origin);
    let stats = dlp.stop();
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 0);
}

/// ICAPS: c-icap-client over TLS (trusting the test CA) gets OPTIONS and a block answer;
/// with client certificates required (c-icap-client cannot present one) it gets no ICAP
/// answer at all, and the server scanned nothing.
#[test]
fn cicap_client_over_tls() {
    if !peers_support::available(&["c-icap-client", "openssl"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("cc-tls");
    let certs = dir.subdir("certs");
    peers_support::gen_certs(&certs);
    let card = dir.join("card.txt");
    write_file(&card, &text_with(500, 100, CARD.as_bytes()));
    let tls_client = |port: u16, args: &[&str]| {
        let mut cmd = Command::new("c-icap-client");
        cmd.env("SSL_CERT_FILE", certs.join("ca.pem"))
            .args(["-tls", "-i", "localhost", "-p", &port.to_string(), "-v"])
            .args(args);
        let r = run_tool(dir.path(), &mut cmd, Duration::from_secs(30));
        ClientRun {
            out: format!("{}{}", r.stdout, r.stderr),
            saved: None,
        }
    };
    let server_tls =
        icap::tls::ServerTls::from_pem_files(certs.join("server.pem"), certs.join("server.key"))
            .unwrap();
    let start = |tls: icap::tls::ServerTls| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = DlpConfig::new(Rules::default(), Profile::Generic);
        let running = rt
            .block_on(dlp_service::spawn_loopback(cfg, Some(&tls)))
            .unwrap();
        Dlp {
            rt,
            running: Some(running),
        }
    };

    let dlp = start(server_tls.clone());
    let run = tls_client(dlp.port(), &["-s", "reqmod"]);
    assert_eq!(run.status(), 200, "{}", run.out);
    assert_eq!(run.header("Methods").as_deref(), Some("REQMOD"));
    let run = tls_client(
        dlp.port(),
        &[
            "-s",
            "respmod",
            "-resp",
            "http://o.example/card.txt",
            "-f",
            card.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status(), 200, "{}", run.out);
    assert!(run.header("X-Violations-Found").is_some(), "{}", run.out);
    assert_eq!(dlp.blocked(), 1);
    drop(dlp);

    let dlp = start(
        server_tls
            .require_client_certs(certs.join("ca.pem"))
            .unwrap(),
    );
    let run = tls_client(
        dlp.port(),
        &[
            "-s",
            "respmod",
            "-resp",
            "http://o.example/card.txt",
            "-f",
            card.to_str().unwrap(),
        ],
    );
    assert!(
        !run.out.contains("ICAP/1.0"),
        "no ICAP answer without a client certificate:\n{}",
        run.out
    );
    let scanned = dlp
        .running
        .as_ref()
        .unwrap()
        .stats()
        .scanned
        .load(Ordering::Relaxed);
    assert_eq!(scanned, 0);
}

/// An X.509 v1 client certificate (`openssl x509 -req` without `-extfile`), presented by
/// `openssl s_client` to a server requiring client certificates: refused during the
/// handshake, and the server's log names the peer, the version and the fix.
#[test]
fn a_v1_client_certificate_is_named_in_the_servers_handshake_log() {
    if !peers_support::available(&["openssl"]) {
        return;
    }
    let _serial = peers_support::serial();
    let dir = TempDir::new("v1-client");
    let certs = dir.subdir("certs");
    peers_support::gen_certs(&certs);
    let tls =
        icap::tls::ServerTls::from_pem_files(certs.join("server.pem"), certs.join("server.key"))
            .unwrap()
            .require_client_certs(certs.join("ca.pem"))
            .unwrap();
    /// Log lines, as the fmt subscriber writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // One thread: the server's tasks log where the subscriber is set.
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        let cfg = DlpConfig::new(Rules::default(), Profile::Generic);
        let running = dlp_service::spawn_loopback(cfg, Some(&tls)).await.unwrap();
        let port = running.addr().port();
        let (certs, dir) = (certs.clone(), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new("openssl");
            cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
                .args(["-servername", "localhost", "-verify_return_error"])
                .arg("-CAfile")
                .arg(certs.join("ca.pem"))
                .arg("-cert")
                .arg(certs.join("client-v1.pem"))
                .arg("-key")
                .arg(certs.join("client-v1.key"));
            run_tool(&dir, &mut cmd, Duration::from_secs(30))
        })
        .await
        .unwrap()
    });
    drop(rt);
    let log = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake with"))
        .unwrap_or_else(|| panic!("no handshake failure in:\n{log}\nopenssl: {out:?}"));
    let named = regex::Regex::new(
        r"TLS handshake with 127\.0\.0\.1:\d+ failed: the client certificate is X\.509 version 1 ",
    )
    .unwrap();
    assert!(named.is_match(line), "{line}");
    assert!(line.contains("extendedKeyUsage=clientAuth"), "{line}");
}

/// `Stats::requests` counts every request received, the last one of a closing connection
/// included (it once counted only transactions after which the connection stayed open).
#[test]
fn stats_count_requests_answered_on_closing_connections() {
    use std::io::{Read, Write};
    let mut dlp = Dlp::with_profile(Profile::Generic);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", dlp.port())).unwrap();
    s.write_all(
        b"OPTIONS icap://127.0.0.1/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"ICAP/1.0 200 OK\r\n"), "{answer:?}");
    let stats = dlp.stop();
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        1,
        "one request was answered"
    );
}
