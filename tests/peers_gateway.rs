//! The secure ICAP gateway (`examples/icap-gateway.rs`, `icap::gateway`) with real
//! processes on loopback: dlp-scan presenting a client certificate -> gateway -> c-icap and
//! -> dlp-server; clients without a certificate, with one from a foreign CA, an expired
//! one or an unpinned one refused during the handshake; an upstream killed mid-run (every
//! file still gets its verdict); the bytes on both sides of the gateway compared on a
//! capture (preview, `100 Continue`, keep-alive); `503` when no upstream is up; `OPTIONS`
//! probes marking a dead upstream down and reviving it after the delay; `--metrics`;
//! certificate reload on SIGHUP; the connection cap (a wait in the backlog, then 503); a
//! burst of 500 clients at once, every one answered; X.509 v1 certificates (which stunnel
//! accepts and rustls refuses) named, with the fix, by dlp-scan and the gateway.
//!
//! Needs c-icap and its modules (`bash .ci/install-peers.sh`): without them the c-icap
//! tests are skipped with a message, or fail under `CI=true`.
#![cfg(all(
    feature = "gateway",
    feature = "tls",
    feature = "metrics",
    feature = "scan",
    feature = "server"
))]

mod peers_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icap::{ResponseDecoder, ResponseEvent};
use peers_support::{
    assert_sample_verdicts, available, find_program, free_port, gen_certs, run_tool, scan_verdicts,
    serial, wait_for, write_file, CIcap, Process, Stunnel, StunnelMode, TempDir, ToolOutput,
};
use sha2::{Digest, Sha256};

mod example_bins;
use example_bins::{data, example, sample_files};

/// The test PKI (`tests/peers/gen-certs.sh`) in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("gateway-pki");
        gen_certs(dir.path());
        Pki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// SHA-256 of the DER of a certificate file, hex.
    fn sha256(&self, name: &str) -> String {
        let certs = icap::tls::load_certs(self.dir.join(name)).unwrap();
        Sha256::digest(certs[0].as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The gateway example on a free port.
struct Gateway {
    port: u16,
    process: Process,
}

impl Gateway {
    fn start(pki: &Pki, upstreams: &[String], extra: &[&str], dir: &TempDir) -> Gateway {
        let port = free_port();
        let mut cmd = Command::new(example("icap-gateway"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--tls-cert", &pki.file("server.pem")])
            .args(["--tls-key", &pki.file("server.key")])
            .args(["--client-ca", &pki.file("ca.pem")])
            .args(extra);
        for u in upstreams {
            cmd.args(["--upstream", u]);
        }
        let mut process = Process::spawn("icap-gateway", cmd, dir.join(format!("gw-{port}.log")));
        process.wait_port(port, Duration::from_secs(10));
        Gateway { port, process }
    }

    fn url(&self, service: &str) -> String {
        format!("icaps://127.0.0.1:{}/{service}", self.port)
    }

    /// Waits (the gateway logs a refusal after its alert went out) until the log says
    /// `needle`.
    fn wait_log(&self, needle: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while !self.process.log().contains(needle) {
            assert!(
                Instant::now() < end,
                "no {needle:?} in: {}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access log once it has `n` lines (written after each answer went out).
    fn wait_access(&self, n: usize) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access();
            if log.len() >= n {
                assert_eq!(log.len(), n, "{log:#?}");
                return log;
            }
            assert!(Instant::now() < end, "{log:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access log once at least `n` of its lines contain `needle`.
    fn wait_matching(&self, needle: &str, n: usize) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access();
            if log.iter().filter(|l| l.contains(needle)).count() >= n {
                return log;
            }
            assert!(Instant::now() < end, "{log:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access-log lines so far.
    fn access(&self) -> Vec<String> {
        self.process
            .log()
            .lines()
            .filter(|l| l.contains(" client=\""))
            .map(str::to_owned)
            .collect()
    }
}

/// dlp-server (plain ICAP) on a free port.
fn dlp_server(dir: &TempDir) -> (u16, Process) {
    dlp_server_on(dir, free_port())
}

fn dlp_server_on(dir: &TempDir, port: u16) -> (u16, Process) {
    let mut cmd = Command::new(example("dlp-server"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    let mut p = Process::spawn("dlp-server", cmd, dir.join(format!("dlp-{port}.log")));
    p.wait_port(port, Duration::from_secs(10));
    (port, p)
}

/// What most tests start from: a directory, certificates, and dlp-server as the upstream.
struct Setup {
    dir: TempDir,
    pki: Pki,
    upstream: [String; 1],
    _dlp: Process,
}

fn setup(name: &str) -> Setup {
    let dir = TempDir::new(name);
    let pki = Pki::new();
    let (dlp_port, dlp) = dlp_server(&dir);
    Setup {
        upstream: [format!("icap://127.0.0.1:{dlp_port}/reqmod")],
        dir,
        pki,
        _dlp: dlp,
    }
}

fn dlp_scan(pki: &Pki, dir: &TempDir, cert: Option<&str>, args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new(example("dlp-scan"));
    cmd.args(["--ca", &pki.file("ca.pem"), "--timeout", "20"]);
    if let Some(c) = cert {
        cmd.args(["--client-cert", &pki.file(&format!("{c}.pem"))])
            .args(["--client-key", &pki.file(&format!("{c}.key"))]);
    }
    cmd.args(args);
    run_tool(dir.path(), &mut cmd, Duration::from_secs(60))
}

#[test]
fn dlp_scan_with_a_client_certificate_through_the_gateway_to_dlp_server_and_c_icap() {
    let _serial = serial();
    let dir = TempDir::new("gateway-relay");
    let pki = Pki::new();
    let (dlp_port, _dlp) = dlp_server(&dir);
    let metrics_port = free_port();
    let gw = Gateway::start(
        &pki,
        &[format!("icap://127.0.0.1:{dlp_port}/reqmod")],
        &["--metrics", &format!("127.0.0.1:{metrics_port}")],
        &dir,
    );
    let out = dlp_scan(
        &pki,
        &dir,
        Some("client"),
        &[
            "--json",
            "--server",
            &gw.url("reqmod"),
            &data("customer-export.csv"),
            &data("meeting-notes.md"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let verdicts: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.contains("\"file\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), 2, "{out:?}");
    assert_eq!(verdicts[0]["verdict"], "blocked");
    assert_eq!(verdicts[0]["icap_status"], 200);
    assert_eq!(verdicts[1]["verdict"], "allowed");
    assert_eq!(verdicts[1]["icap_status"], 204);
    let log = gw.wait_matching(" REQMOD ", 2);
    let reqmods: Vec<&String> = log.iter().filter(|l| l.contains(" REQMOD ")).collect();
    assert_eq!(reqmods.len(), 2, "{log:#?}");
    let upstream = format!("upstream=127.0.0.1:{dlp_port} ");
    for l in &reqmods {
        assert!(l.contains("client=\"CN=icap-test-client@127.0.0.1:"), "{l}");
        assert!(l.contains(&upstream), "{l}");
    }
    assert!(reqmods[0].contains(" status=200 "), "{}", reqmods[0]);
    assert!(reqmods[0].contains(" http=403 "), "{}", reqmods[0]);
    assert!(
        reqmods[0].contains("violations=\"4 customer-export.csv DLP.PaymentCard"),
        "{}",
        reqmods[0]
    );
    assert!(reqmods[1].contains(" status=204 "), "{}", reqmods[1]);

    // The same, counted, in Prometheus text on --metrics.
    let mut c = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    for want in [
        format!("icap_gateway_transactions_total{{method=\"REQMOD\",status=\"200\",upstream=\"127.0.0.1:{dlp_port}\"}} 1\n"),
        format!("icap_gateway_transactions_total{{method=\"REQMOD\",status=\"204\",upstream=\"127.0.0.1:{dlp_port}\"}} 1\n"),
        "icap_gateway_verdicts_total{kind=\"violations\"} 1\n".to_string(),
        format!("icap_gateway_upstream_up{{upstream=\"icap://127.0.0.1:{dlp_port}/reqmod\"}} 1\n"),
    ] {
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }

    // c-icap behind the same kind of gateway: its echo allows, content_filtering edits.
    if !available(&["c-icap"]) {
        return;
    }
    let cicap = CIcap::start("");
    let gw2 = Gateway::start(
        &pki,
        &[format!("icap://127.0.0.1:{}/echo", cicap.port)],
        &[],
        &dir,
    );
    let bad = dir.join("bad.txt");
    write_file(&bad, b"a line with badword in it\n");
    let out = dlp_scan(
        &pki,
        &dir,
        Some("client"),
        &[
            "--json",
            "--mode",
            "respmod",
            "--server",
            &gw2.url("echo"),
            &data("meeting-notes.md"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("\"verdict\":\"allowed\""), "{out:?}");
    let out = dlp_scan(
        &pki,
        &dir,
        Some("client"),
        &[
            "--json",
            "--mode",
            "respmod",
            "--server",
            &gw2.url("content_filtering"),
            &bad.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = gw2.wait_matching("/content_filtering ", 1);
    let edited = log
        .iter()
        .find(|l| l.contains("/content_filtering "))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(edited.contains(" status=200 "), "{edited}");
    assert!(
        edited.contains(&format!("upstream=127.0.0.1:{} ", cicap.port)),
        "{edited}"
    );
}

#[test]
fn clients_without_a_valid_pinned_certificate_are_refused_before_any_icap_byte() {
    let _serial = serial();
    let Setup {
        dir,
        pki,
        upstream,
        _dlp,
    } = setup("gateway-refusals");
    let pin = pki.sha256("client.pem");
    let gw = Gateway::start(&pki, &upstream, &["--client-cert-sha256", &pin], &dir);
    let file = data("meeting-notes.md");
    let url = gw.url("reqmod");
    for (cert, refusal) in [
        (None, "peer sent no certificates"),
        (Some("wrong-client"), "UnknownIssuer"),
        (Some("expired"), "certificate expired"),
    ] {
        let out = dlp_scan(&pki, &dir, cert, &["--server", &url, &file]);
        assert_eq!(out.status.code(), Some(2), "{cert:?}: {out:?}");
        gw.wait_log(refusal);
    }
    assert_eq!(gw.access(), Vec::<String>::new());
    // The pinned certificate passes.
    let out = dlp_scan(&pki, &dir, Some("client"), &["--server", &url, &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    gw.wait_matching(" REQMOD ", 1);

    // The same certificate when another one is pinned: refused after the handshake,
    // before the gateway reads anything.
    let other = pki.sha256("selfsigned.pem");
    let gw2 = Gateway::start(&pki, &upstream, &["--client-cert-sha256", &other], &dir);
    let out = dlp_scan(
        &pki,
        &dir,
        Some("client"),
        &["--server", &gw2.url("reqmod"), &file],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    gw2.wait_log("certificate CN=icap-test-client is not pinned");
    assert_eq!(gw2.access(), Vec::<String>::new());
}

/// Over `--max-connections`, a newcomer waits in the listen backlog for the queue timeout
/// (1 s here), then reads a 503 inside TLS; the silent connections that filled the gateway
/// lose their place at the handshake timeout, and a client is then served.
#[test]
fn connections_over_the_cap_wait_then_read_503_and_silent_ones_free_their_place() {
    let _serial = serial();
    let Setup {
        dir,
        pki,
        upstream,
        _dlp,
    } = setup("gateway-cap");
    let extra = [
        "--max-connections",
        "2",
        "--handshake-timeout",
        "3",
        "--queue-timeout",
        "1",
    ];
    let gw = Gateway::start(&pki, &upstream, &extra, &dir);
    let file = data("meeting-notes.md");
    let url = gw.url("reqmod");
    // The start-up probe (a connection opened and closed to see the port open) holds a place
    // until the gateway has seen it end.
    gw.wait_log("tls handshake eof");
    // Two clients that connect and never start a handshake fill the gateway.
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", gw.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A third waits in the backlog, then is refused with a 503 it can read.
    let started = Instant::now();
    let mut third = tls_client(&pki, gw.port);
    let (raw, status) = read_answer(&mut third, false);
    let waited = started.elapsed();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&raw));
    assert!(
        raw.starts_with(b"ICAP/1.0 503 Service Overloaded\r\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    gw.wait_log("2 connections open (--max-connections)");
    assert_eq!(gw.access(), Vec::<String>::new());
    // The silent ones lose their place at the handshake timeout; the client is then served.
    gw.wait_log("handshake timed out");
    std::thread::sleep(Duration::from_millis(300));
    let out = dlp_scan(&pki, &dir, Some("client"), &["--server", &url, &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    gw.wait_matching(" REQMOD ", 1);
    drop(silent);
}

/// A full gateway makes room by closing the connection idle the longest once it has been
/// idle for `--eviction-grace` (1 s here), long before the queue timeout (30 s): first one
/// that never started its handshake, then one idle after a transaction. A connection in the
/// middle of a request keeps its place and gets its answer.
#[test]
fn a_full_gateway_closes_connections_idle_past_the_grace_and_keeps_busy_ones() {
    let _serial = serial();
    let Setup {
        dir,
        pki,
        upstream,
        _dlp,
    } = setup("gateway-evict");
    let extra = [
        "--max-connections",
        "2",
        "--eviction-grace",
        "1",
        "--queue-timeout",
        "30",
    ];
    let gw = Gateway::start(&pki, &upstream, &extra, &dir);
    gw.wait_log("tls handshake eof");
    std::thread::sleep(Duration::from_millis(200));
    let file = data("meeting-notes.md");
    let url = gw.url("reqmod");
    let http = "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let request = format!(
        "REQMOD icap://127.0.0.1:{}/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
         Encapsulated: req-hdr=0, null-body={}\r\n\r\n{http}",
        gw.port,
        http.len()
    );
    let (head, rest) = request.as_bytes().split_at(30);

    // One connection that never starts its handshake, one in the middle of a request.
    let mut silent = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let mut busy = tls_client(&pki, gw.port);
    busy.write_all(head).unwrap();
    busy.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Full: a newcomer gets the place of the silent one once it has been idle for 1 s.
    let started = Instant::now();
    let out = dlp_scan(&pki, &dir, Some("client"), &["--server", &url, &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    gw.wait_log("no handshake within the eviction grace");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(
        matches!(silent.read(&mut [0u8; 64]), Ok(0) | Err(_)),
        "closed"
    );
    // The busy one kept its place: its request completes and is answered.
    busy.write_all(rest).unwrap();
    busy.flush().unwrap();
    let (raw, status) = read_answer(&mut busy, false);
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&raw));

    // Now idle after its transaction; once past the grace, a full gateway closes it for a
    // newcomer (the other place is taken by a fresh connection, not idle long enough).
    std::thread::sleep(Duration::from_millis(1500));
    let _fresh = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = dlp_scan(&pki, &dir, Some("client"), &["--server", &url, &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    gw.wait_log("idle past the eviction grace while the gateway was full");
    let mut rest_of_stream = Vec::new();
    let _ = busy.read_to_end(&mut rest_of_stream);
    assert!(rest_of_stream.is_empty(), "nothing but the close");
    let access = gw.access();
    let reqmods = access.iter().filter(|l| l.contains(" REQMOD ")).count();
    assert_eq!(reqmods, 3, "{access:?}");
}

/// Raises this process's open-files limit to its hard limit: a burst holds hundreds of
/// connections.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
}

/// 500 clients with certificates at once, one REQMOD each (every tenth with a card number),
/// through the gateway at its defaults to dlp-server at its defaults: 500 verdicts, none
/// lost.
#[test]
fn a_burst_of_500_tls_clients_through_the_gateway_gets_500_verdicts() {
    let _serial = serial();
    raise_nofile();
    let Setup {
        dir,
        pki,
        upstream,
        _dlp,
    } = setup("gateway-burst");
    let gw = Gateway::start(&pki, &upstream, &[], &dir);
    let port = gw.port;
    let barrier = std::sync::Barrier::new(500);
    let statuses: Vec<Result<u16, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..500)
            .map(|i| {
                let (barrier, pki) = (&barrier, &pki);
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let body: &[u8] = if i % 10 == 0 {
                            b"card 4111 1111 1111 1111\n"
                        } else {
                            b"meeting notes, nothing to see\n"
                        };
                        let http = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";
                        let mut req = format!(
                            "REQMOD icaps://127.0.0.1:{port}/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\n\
                             Allow: 204\r\nConnection: close\r\n\
                             Encapsulated: req-hdr=0, req-body={}\r\n\r\n{http}{:x}\r\n",
                            http.len(),
                            body.len()
                        )
                        .into_bytes();
                        req.extend_from_slice(body);
                        req.extend_from_slice(b"\r\n0\r\n\r\n");
                        barrier.wait();
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let mut s = tls_client(pki, port);
                            s.write_all(&req).unwrap();
                            read_answer(&mut s, false).1
                        }));
                        run.map_err(|e| {
                            e.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        })
                    })
                    .unwrap()
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let failed: Vec<_> = statuses.iter().filter(|s| s.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed[0]
    );
    for (i, s) in statuses.iter().enumerate() {
        let want = if i % 10 == 0 { 200 } else { 204 };
        assert_eq!(s.as_ref().unwrap(), &want, "client {i}");
    }
    gw.wait_matching(" REQMOD ", 500);
}

#[test]
fn sighup_reloads_the_client_ca_and_a_broken_file_keeps_the_old_one() {
    let _serial = serial();
    let dir = TempDir::new("gateway-reload");
    let pki = Pki::new();
    let (dlp_port, _dlp) = dlp_server(&dir);
    let ca = dir.join("client-ca.pem");
    std::fs::copy(pki.file("ca.pem"), &ca).unwrap();
    let port = free_port();
    let mut cmd = Command::new(example("icap-gateway"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", &pki.file("server.pem")])
        .args(["--tls-key", &pki.file("server.key")])
        .args(["--client-ca", &ca.display().to_string()])
        .args(["--upstream", &format!("icap://127.0.0.1:{dlp_port}/reqmod")]);
    let mut process = Process::spawn("icap-gateway", cmd, dir.join("gw.log"));
    process.wait_port(port, Duration::from_secs(10));
    let gw = Gateway { port, process };
    let url = gw.url("reqmod");
    let file = data("meeting-notes.md");
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &gw.process.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let scan = |cert: &str| {
        dlp_scan(&pki, &dir, Some(cert), &["--server", &url, &file])
            .status
            .code()
    };
    assert_eq!(scan("client"), Some(0));
    assert_eq!(scan("wrong-client"), Some(2));

    // The client CA file now holds the other CA.
    std::fs::copy(pki.file("wrong-ca.pem"), &ca).unwrap();
    hup();
    gw.wait_log("reloaded TLS certificate, key and client CA");
    assert_eq!(scan("wrong-client"), Some(0));
    assert_eq!(scan("client"), Some(2));

    // A file that cannot be used: the old set stays.
    write_file(&ca, b"not a certificate\n");
    hup();
    gw.wait_log("TLS reload failed, keeping the old ones");
    assert_eq!(scan("wrong-client"), Some(0));
}

/// The gateway's metrics text.
fn scrape(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn options_probes_mark_a_dead_upstream_down_and_revive_it_after_the_delay() {
    let _serial = serial();
    let dir = TempDir::new("gateway-health");
    let pki = Pki::new();
    let (a_port, mut a) = dlp_server(&dir);
    let (b_port, _b) = dlp_server(&dir);
    let metrics_port = free_port();
    let gw = Gateway::start(
        &pki,
        &[
            format!("icap://127.0.0.1:{a_port}/reqmod"),
            format!("icap://127.0.0.1:{b_port}/reqmod"),
        ],
        &[
            "--failure-limit",
            "2",
            "--revival-delay",
            "2",
            "--probe-interval",
            "0.1",
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &dir,
    );
    let up = |p: u16, v: u8| {
        format!("icap_gateway_upstream_up{{upstream=\"icap://127.0.0.1:{p}/reqmod\"}} {v}\n")
    };
    let wait_for = |want: &str, limit: Duration| {
        let end = Instant::now() + limit;
        loop {
            let text = scrape(metrics_port);
            if text.contains(want) {
                return Instant::now();
            }
            assert!(Instant::now() < end, "no {want:?} in:\n{text}");
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    wait_for(&up(a_port, 1), Duration::from_secs(5));
    // No traffic at all: the probes alone find the dead upstream.
    a.stop();
    let down_at = wait_for(&up(a_port, 0), Duration::from_secs(5));
    let (_, _a2) = dlp_server_on(&dir, a_port);
    // Up again at once, but the gateway waits for the revival delay and a good probe.
    std::thread::sleep(Duration::from_millis(300));
    assert!(scrape(metrics_port).contains(&up(a_port, 0)));
    let up_at = wait_for(&up(a_port, 1), Duration::from_secs(10));
    assert!(
        up_at - down_at >= Duration::from_secs(2),
        "{:?}",
        up_at - down_at
    );
    assert!(scrape(metrics_port).contains(&up(b_port, 1)));
    // Both take transactions again.
    let files: Vec<String> = (0..6).map(|_| data("meeting-notes.md")).collect();
    let mut args = vec!["--server".to_string(), gw.url("reqmod")];
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dlp_scan(&pki, &dir, Some("client"), &args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let log = gw.wait_matching(" REQMOD ", 6);
    for p in [a_port, b_port] {
        let on = format!("upstream=127.0.0.1:{p} ");
        assert!(
            log.iter()
                .any(|l| l.contains(" REQMOD ") && l.contains(&on)),
            "{log:#?}"
        );
    }
}

#[test]
fn an_upstream_killed_mid_run_fails_over_and_every_file_gets_its_verdict() {
    let _serial = serial();
    let dir = TempDir::new("gateway-failover");
    let pki = Pki::new();
    let (a_port, mut a) = dlp_server(&dir);
    let (b_port, _b) = dlp_server(&dir);
    let gw = Gateway::start(
        &pki,
        &[
            format!("icap://127.0.0.1:{a_port}/reqmod"),
            format!("icap://127.0.0.1:{b_port}/reqmod"),
        ],
        &["--failure-limit", "1", "--revival-delay", "600"],
        &dir,
    );
    // 120 files, every third one with card numbers.
    let files = sample_files(dir.path(), 120);
    let mut cmd = Command::new(example("dlp-scan"));
    cmd.args(["--ca", &pki.file("ca.pem"), "--timeout", "20", "--json"])
        .args(["--client-cert", &pki.file("client.pem")])
        .args(["--client-key", &pki.file("client.key")])
        .args(["--server", &gw.url("reqmod")])
        .args(&files);
    let scan_out = dir.join("scan.out");
    cmd.stdout(std::fs::File::create(&scan_out).unwrap())
        .stderr(std::process::Stdio::null());
    let mut scan = cmd.spawn().unwrap();
    // Kill one upstream once both have answered some transactions.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let log = gw.access();
        let on = |p: u16| {
            log.iter()
                .filter(|l| {
                    l.contains(" REQMOD ") && l.contains(&format!("upstream=127.0.0.1:{p} "))
                })
                .count()
        };
        if on(a_port) >= 5 && on(b_port) >= 5 {
            break;
        }
        assert!(Instant::now() < end, "no progress: {log:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = gw.access().len();
    Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .unwrap();
    a.stop();
    let Some(status) = wait_for(&mut scan, Duration::from_secs(60)) else {
        let _ = scan.kill();
        panic!("dlp-scan did not finish");
    };
    let out = std::fs::read_to_string(&scan_out).unwrap();
    let verdicts = scan_verdicts(&out);
    assert_eq!(verdicts.len(), 120, "{out}");
    assert_sample_verdicts(&verdicts, "");
    assert_eq!(status.code(), Some(1), "{out}");
    // After the kill every transaction was answered by the survivor.
    let log = gw.wait_matching(" REQMOD ", 120);
    let after: Vec<&String> = log[killed_at..]
        .iter()
        .filter(|l| l.contains(" REQMOD "))
        .collect();
    assert!(!after.is_empty());
    let b = format!("upstream=127.0.0.1:{b_port} ");
    // Transactions that completed on the victim between the snapshot and the kill are
    // fine; one in flight at the kill may have had part of its answer relayed, and is then
    // the only one that can break off (dlp-scan sends it again).
    let lost: Vec<&&String> = after.iter().filter(|l| l.contains(" error=")).collect();
    assert!(lost.len() <= 1, "{lost:#?}");
    // The kill was found out by a transaction (replayed on the survivor, or the broken
    // one); from then on the survivor answers everything.
    let found = after
        .iter()
        .position(|l| l.contains(" failovers=") || l.contains(" error="))
        .unwrap_or_else(|| panic!("{after:#?}"));
    for l in &after[found + 1..] {
        assert!(l.contains(&b), "{l}");
    }
}

/// One tapped connection: the bytes to the upstream and the bytes from it.
type Recorded = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

/// A TCP relay that records, per connection, the bytes each way.
struct Tap {
    port: u16,
    conns: Arc<Mutex<Vec<Recorded>>>,
}

impl Tap {
    fn start(backend: u16) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let list = conns.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { return };
                let Ok(b) = TcpStream::connect(("127.0.0.1", backend)) else {
                    return;
                };
                let rec = Arc::new(Mutex::new((Vec::new(), Vec::new())));
                list.lock().unwrap().push(rec.clone());
                for (mut from, mut to, up) in [
                    (c.try_clone().unwrap(), b.try_clone().unwrap(), true),
                    (b, c, false),
                ] {
                    let rec = rec.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            {
                                let mut r = rec.lock().unwrap();
                                let side = if up { &mut r.0 } else { &mut r.1 };
                                side.extend_from_slice(&buf[..n]);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Tap { port, conns }
    }

    /// The recorded connections, `(to upstream, from upstream)`, probes left out.
    fn transactions(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .filter(|(up, _)| !up.starts_with(b"OPTIONS "))
            .collect()
    }
}

/// A TLS client presenting `client.pem`, speaking raw bytes.
fn tls_client(pki: &Pki, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = icap::tls::ClientTls::default()
        .with_ca_file(pki.file("ca.pem"))
        .unwrap()
        .with_client_cert_files(pki.file("client.pem"), pki.file("client.key"))
        .unwrap()
        .build()
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads one whole ICAP response (through any `100 Continue` when `through_100`), returning
/// its raw bytes and status.
fn read_answer(s: &mut impl Read, through_100: bool) -> (Vec<u8>, u16) {
    let mut dec = ResponseDecoder::default();
    let mut raw = Vec::new();
    let mut status = 0;
    let mut buf = [0u8; 16384];
    loop {
        match dec.decode().unwrap() {
            Some(ResponseEvent::Head(h)) => status = h.status,
            Some(ResponseEvent::End(_)) if status == 100 && through_100 => {}
            Some(ResponseEvent::End(_)) => {
                // Only what the decoder used: nothing follows a complete answer anyway.
                assert!(dec.buffered().is_empty());
                return (raw, status);
            }
            Some(_) => {}
            None => {
                let n = s.read(&mut buf).unwrap();
                assert!(
                    n > 0,
                    "closed inside an answer: {}",
                    String::from_utf8_lossy(&raw)
                );
                raw.extend_from_slice(&buf[..n]);
                dec.feed(&buf[..n]);
            }
        }
    }
}

fn respmod(path: &str, port: u16, body: &[u8], preview: Option<usize>) -> (Vec<u8>, Vec<u8>) {
    let http = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Odd-Case: KeEp Me\r\n\r\n";
    let mut head = format!(
        "RESPMOD icap://127.0.0.1:{port}/{path} ICAP/1.0\r\nHost: 127.0.0.1:{port}\r\nAllow: 204\r\nX-Custom:   spaced value \r\nEncapsulated: res-hdr=0, res-body={}\r\n",
        http.len()
    );
    let split = preview.map_or(0, |p| p.min(body.len()));
    if let Some(p) = preview {
        head.push_str(&format!("Preview: {p}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(http);
    let mut first = head.into_bytes();
    let mut rest = Vec::new();
    let chunk = |out: &mut Vec<u8>, data: &[u8]| {
        for c in data.chunks(7000) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
    };
    if preview.is_some() {
        chunk(&mut first, &body[..split]);
        first.extend_from_slice(b"0\r\n\r\n");
        chunk(&mut rest, &body[split..]);
        rest.extend_from_slice(b"0\r\n\r\n");
    } else {
        chunk(&mut first, body);
        first.extend_from_slice(b"0\r\n\r\n");
    }
    (first, rest)
}

#[test]
fn bytes_reach_c_icap_and_come_back_identical_with_preview_and_keep_alive() {
    let _serial = serial();
    if !available(&["c-icap"]) {
        return;
    }
    let dir = TempDir::new("gateway-bytes");
    let pki = Pki::new();
    let cicap = CIcap::start("");
    let tap = Tap::start(cicap.port);
    let gw = Gateway::start(
        &pki,
        &[format!("icap://127.0.0.1:{}/echo", tap.port)],
        &["--probe-interval", "600"],
        &dir,
    );
    let mut s = tls_client(&pki, gw.port);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = Vec::new();
    let mut got = Vec::new();
    // 1: preview of 1024, the upstream asks for the rest with 100 Continue.
    let (first, rest) = respmod("echo", gw.port, &body, Some(1024));
    s.write_all(&first).unwrap();
    s.flush().unwrap();
    sent.extend_from_slice(&first);
    let (cont, status) = read_answer(&mut s, false);
    assert_eq!(status, 100, "{}", String::from_utf8_lossy(&cont));
    got.extend_from_slice(&cont);
    s.write_all(&rest).unwrap();
    s.flush().unwrap();
    sent.extend_from_slice(&rest);
    let (answer, status) = read_answer(&mut s, false);
    assert_eq!(status, 200);
    got.extend_from_slice(&answer);
    // 2: on the same connections, no preview, the whole body.
    let (whole, _) = respmod("echo", gw.port, &body[..5000], None);
    s.write_all(&whole).unwrap();
    s.flush().unwrap();
    sent.extend_from_slice(&whole);
    let (answer, status) = read_answer(&mut s, false);
    assert!(status == 200 || status == 204, "{status}");
    got.extend_from_slice(&answer);
    drop(s);

    let t = tap.transactions();
    assert_eq!(t.len(), 1, "one upstream connection, kept alive");
    assert!(
        t[0].0 == sent,
        "the upstream got other bytes than the client sent"
    );
    assert!(
        t[0].1 == got,
        "the client got other bytes than the upstream answered"
    );
    assert!(got.len() > body.len(), "the echo came back whole");
    let log = gw.wait_access(2);
    assert!(
        log[0].contains(&format!(" in={} ", first.len() + rest.len())),
        "{}",
        log[0]
    );
}

#[test]
fn no_upstream_up_gets_503_and_the_connection_stays_usable() {
    let _serial = serial();
    let dir = TempDir::new("gateway-503");
    let pki = Pki::new();
    let dead = free_port();
    let gw = Gateway::start(
        &pki,
        &[format!("icap://127.0.0.1:{dead}/reqmod")],
        &["--failure-limit", "1"],
        &dir,
    );
    let mut s = tls_client(&pki, gw.port);
    let body = vec![b'x'; 100_000];
    for _ in 0..2 {
        let (whole, _) = respmod("reqmod", gw.port, &body, None);
        s.write_all(&whole).unwrap();
        s.flush().unwrap();
        let (answer, status) = read_answer(&mut s, false);
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&answer));
        assert!(answer.starts_with(b"ICAP/1.0 503 Service Unavailable\r\n"));
    }
    let log = gw.wait_access(2);
    assert!(log
        .iter()
        .all(|l| l.contains(" status=503 ") && l.contains("upstream=- ")));
}

/// stunnel in client mode presenting `cert` (with its key): one local plain port per
/// `(name, TLS port)` target, in the order given.
fn stunnel_client(
    pki: &Pki,
    dir: &TempDir,
    cert: &str,
    targets: &[(&str, u16)],
) -> (Vec<u16>, Process) {
    let mut conf = format!(
        "foreground = yes\npid = {}\ndebug = info\n",
        dir.join("stunnel-client.pid").display()
    );
    let mut ports = Vec::new();
    for (name, tls_port) in targets {
        let port = free_port();
        conf.push_str(&format!(
            "[{name}]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{tls_port}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\n",
            pki.file(&format!("{cert}.pem")),
            pki.file(&format!("{cert}.key")),
            pki.file("ca.pem"),
        ));
        ports.push(port);
    }
    let path = dir.join("stunnel-client.conf");
    write_file(&path, conf.as_bytes());
    let mut cmd = Command::new(find_program("stunnel4").expect("stunnel4 installed"));
    cmd.arg(&path);
    let mut p = Process::spawn("stunnel4", cmd, dir.join("stunnel-client.log"));
    for &port in &ports {
        p.wait_port(port, Duration::from_secs(10));
    }
    (ports, p)
}

/// `OPTIONS` over plain TCP to `port`; everything answered until the close.
fn options_through(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"OPTIONS icap://127.0.0.1/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_v1_client_certificate_that_stunnel_accepts_is_named_with_the_peer_and_the_fix() {
    let _serial = serial();
    if !available(&["stunnel4"]) {
        return;
    }
    let dir = TempDir::new("gateway-v1-client");
    let pki = Pki::new();
    let (dlp_port, _dlp) = dlp_server(&dir);
    let gw = Gateway::start(
        &pki,
        &[format!("icap://127.0.0.1:{dlp_port}/reqmod")],
        &[],
        &dir,
    );
    // What the site had: stunnel demanding a client certificate from the same CA.
    let front = Stunnel::start(StunnelMode::MutualTls, dlp_port, pki.dir.path(), "");
    let (ports, _client) = stunnel_client(
        &pki,
        &dir,
        "client-v1",
        &[("to-stunnel", front.port), ("to-gateway", gw.port)],
    );
    let answer = options_through(ports[0]);
    assert!(answer.starts_with("ICAP/1.0 200 "), "{answer:?}");

    // The gateway refuses it during the handshake, and says why and what to do.
    let answer = options_through(ports[1]);
    assert_eq!(answer, "", "not one ICAP byte");
    gw.wait_log("X.509 version 1");
    let log = gw.process.log();
    let line = log.lines().find(|l| l.contains("X.509 version 1")).unwrap();
    let named = regex::Regex::new(
        r"^icap-gateway: refused 127\.0\.0\.1:\d+: the client certificate is X\.509 version 1 ",
    )
    .unwrap();
    assert!(named.is_match(line), "{line}");
    assert!(line.contains("-extfile client.ext"), "{line}");
    assert!(line.contains("extendedKeyUsage=clientAuth"), "{line}");
    assert!(line.contains("basicConstraints=CA:FALSE"), "{line}");

    // dlp-scan refuses to present it, naming the file, before connecting.
    let out = dlp_scan(
        &pki,
        &dir,
        Some("client-v1"),
        &["--server", &gw.url("reqmod"), &data("meeting-notes.md")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    let file = pki.file("client-v1.pem");
    assert!(
        said.contains(&format!(
            "{file}: the client certificate is X.509 version 1"
        )),
        "{said}"
    );
    assert!(said.contains("extendedKeyUsage=clientAuth"), "{said}");
    assert!(!said.contains("UnsupportedCertVersion"), "{said}");
}

#[test]
fn a_v1_server_certificate_behind_stunnel_is_named_by_dlp_scan_with_the_fix() {
    let _serial = serial();
    if !available(&["stunnel4"]) {
        return;
    }
    let dir = TempDir::new("gateway-v1-server");
    let pki = Pki::new();
    let (dlp_port, _dlp) = dlp_server(&dir);
    // stunnel takes the v1 certificate as its server certificate without a word.
    let certs = dir.subdir("v1-certs");
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("server-v1.pem", "server.pem"),
        ("server-v1.key", "server.key"),
    ] {
        std::fs::copy(pki.file(from), certs.join(to)).unwrap();
    }
    let front = Stunnel::start(StunnelMode::ServerAuth, dlp_port, &certs, "");
    let server = format!("icaps://127.0.0.1:{}/reqmod", front.port);
    let out = dlp_scan(
        &pki,
        &dir,
        None,
        &["--server", &server, &data("meeting-notes.md")],
    );
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("the server certificate is X.509 version 1"),
        "{said}"
    );
    assert!(
        said.contains(&format!("127.0.0.1:{}", front.port)),
        "{said}"
    );
    assert!(said.contains("extendedKeyUsage=serverAuth"), "{said}");
    assert!(said.contains("subjectAltName="), "{said}");
}
