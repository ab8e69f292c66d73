//! The example binaries end to end: dlp-scan's main job (embedded TLS DLP pair), its JSON
//! output, exit codes, connection types, timeout and answer cap against hostile partners;
//! icap-client against dlp-server; the benches' load generator (`icap-load`) against
//! dlp-server and c-icap's echo.
#![cfg(all(feature = "client", feature = "server"))]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use icap_bench_fixtures::load::{LoadConfig, LoadReport};
use serde_json::Value;

mod example_bins;
use example_bins::{data, example};
mod peers_support;

#[test]
fn dlp_scan_main_job_blocks_the_export_and_allows_the_rest() {
    let out = Command::new(example("dlp-scan")).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 1: something blocked\n{stdout}\n{stderr}"
    );
    // The connectivity test ran on both embedded servers, over TLS 1.3 with client certs.
    assert_eq!(
        stderr.matches(": OK methods=REQMOD preview=4096").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("tls=TLSv1_3"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].contains("customer-export.csv: blocked: X-Violations-Found: 4"),
        "{}",
        lines[0]
    );
    assert!(
        !stdout.contains("4111 1111 1111 1111"),
        "findings are masked"
    );
    assert!(
        lines[1].contains("meeting-notes.md: allowed: 204"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("quarterly-report.txt: allowed: 204"),
        "{}",
        lines[2]
    );
}

#[test]
fn dlp_scan_json_and_connection_types() {
    for (ct, reason) in [
        (
            "symantec",
            "REQMOD answered with an HTTP response (HTTP/1.1 200 OK)",
        ),
        ("forcepoint", "HTTP 403 block page"),
        ("generic-respmod", "X-Violations-Found: "),
    ] {
        let out = Command::new(example("dlp-scan"))
            .args([
                "--json",
                "--connection-type",
                ct,
                &data("customer-export.csv"),
                &data("meeting-notes.md"),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{ct}");
        let v: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"file\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 2, "{ct}");
        assert_eq!(v[0]["verdict"], "blocked", "{ct}");
        assert!(
            v[0]["reason"].as_str().unwrap().starts_with(reason),
            "{ct}: {}",
            v[0]["reason"]
        );
        assert_eq!(v[0]["icap_status"], 200);
        assert_eq!(v[1]["verdict"], "allowed", "{ct}");
        assert_eq!(v[1]["icap_status"], 204);
    }
}

#[test]
fn dlp_scan_errors_exit_2_and_fail_open_is_explicit() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let url = format!("icap://127.0.0.1:{port}/reqmod");
    let out = Command::new(example("dlp-scan"))
        .args(["--server", &url, &data("meeting-notes.md")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("error:"));
    let out = Command::new(example("dlp-scan"))
        .args(["--server", &url, "--fail-open", &data("meeting-notes.md")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("allowed: fail-open after error"));
    let out = Command::new(example("dlp-scan"))
        .args(["--server", &url, "--test-connection"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED"));
}

/// A fake partner on loopback, a thread per connection: `endless` answers OPTIONS and then
/// every request with a 200 whose body never ends; otherwise it reads and never answers.
fn fake_partner(endless: bool) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                    if !endless || !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    if buf.starts_with(b"OPTIONS") {
                        buf.clear();
                        let opts = b"ICAP/1.0 200 OK\r\nMethods: REQMOD\r\nISTag: \"e\"\r\n\
                                     Encapsulated: null-body=0\r\n\r\n";
                        if s.write_all(opts).is_err() {
                            return;
                        }
                        continue;
                    }
                    let head = b"ICAP/1.0 200 OK\r\nISTag: \"e\"\r\n\
                                 Encapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
                    let mut chunk = b"1000\r\n".to_vec();
                    chunk.extend_from_slice(&[b'e'; 0x1000]);
                    chunk.extend_from_slice(b"\r\n");
                    // Endless for the client; bounded for the test (1 GiB).
                    let _ = s.write_all(head);
                    for _ in 0..(1 << 18) {
                        if s.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                    return;
                }
            });
        }
    });
    port
}

#[test]
fn dlp_scan_gives_up_on_a_black_hole_within_its_timeout() {
    let url = format!("icap://127.0.0.1:{}/reqmod", fake_partner(false));
    let start = Instant::now();
    let out = Command::new(example("dlp-scan"))
        .args(["--server", &url, "--timeout", "1.5"])
        .args([data("meeting-notes.md"), data("quarterly-report.txt")])
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(l.contains(": error: ") && l.contains("timed out"), "{l}");
    }
    // Each file gets at most its 1.5 s (here a third of it: one attempt on the only
    // server); before, it had no timeout option and took 3 attempts of 5 min.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn dlp_scan_cuts_an_endless_answer_at_max_answer() {
    let url = format!("icap://127.0.0.1:{}/reqmod", fake_partner(true));
    let file = data("meeting-notes.md");
    let len = std::fs::metadata(&file).unwrap().len();
    let start = Instant::now();
    let out = Command::new(example("dlp-scan"))
        .args(["--server", &url, "--max-answer", "100000"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    // The cap is --max-answer beyond the file sent (read whole before anything is written).
    let cap = format!("more than the {} allowed", 100_000 + len);
    assert!(
        stdout.contains(": error: ")
            && stdout.contains("answer too large: ")
            && stdout.contains(&cap),
        "{stdout}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// dlp-server on a free port, stopped on drop.
struct DlpServer(std::process::Child, u16);

impl DlpServer {
    fn start() -> DlpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(example("dlp-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so that a failed start still kills and reaps it (Drop).
        let srv = DlpServer(child, port);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return srv;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dlp-server did not start");
    }
}

impl Drop for DlpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn icap_client_against_dlp_server() {
    let srv = DlpServer::start();
    let base = format!("icap://127.0.0.1:{}", srv.1);
    let out = Command::new(example("icap-client"))
        .args(["--url", &format!("{base}/respmod")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("ICAP/1.0 200 OK")
            && s.contains("Methods: RESPMOD")
            && s.contains("Preview: 4096"),
        "{s}"
    );

    let dir = std::env::temp_dir().join(format!("icap-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("page.html");
    let out = Command::new(example("icap-client"))
        .args([
            "--url",
            &format!("{base}/reqmod"),
            "--req",
            "http://upload.example/x.csv",
            "--file",
            &data("customer-export.csv"),
        ])
        .args(["--output", saved.to_str().unwrap(), "--verbose"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("RESPONSE HEADERS:\n\tHTTP/1.1 403 Forbidden"),
        "{s}"
    );
    let page = std::fs::read_to_string(&saved).unwrap();
    assert!(page.contains("blocked"), "{page}");
    // --verbose shows the request head as sent.
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("REQMOD icap://127.0.0.1:")
            && err.contains("POST http://upload.example/x.csv HTTP/1.1"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs an example with `args`; returns its exit code, stdout and stderr.
fn run_example(name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(example(name)).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn every_example_lists_its_exit_status_in_help_and_exits_2_on_bad_arguments() {
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "dlp-scan",
            "Exit status (the clamscan convention):\n  0  every file allowed\n  1  something blocked or modified\n  2  an error",
            &["--mode", "upload"],
        ),
        (
            "dlp-server",
            "Exit status:\n  0  stopped by SIGINT or SIGTERM",
            &["--tls-cert", "server.pem"],
        ),
        (
            "icap-client",
            "Exit status:\n  0  the server answered",
            &["--url", "icap://127.0.0.1/x", "--method", "PUT"],
        ),
    ];
    for (name, exit_status, bad) in cases {
        let (code, stdout, _) = run_example(name, &["--help"]);
        assert_eq!(code, Some(0), "{name} --help");
        assert!(stdout.contains(exit_status), "{name}: {stdout}");
        assert!(stdout.contains("  2  "), "{name}: {stdout}");
        let (code, stdout, stderr) = run_example(name, bad);
        assert_eq!(code, Some(2), "{name} {bad:?}: {stderr}");
        assert!(stdout.is_empty(), "{name} {bad:?}: {stdout}");
        assert!(stderr.starts_with("error: "), "{name} {bad:?}: {stderr}");
    }
}

#[test]
fn dlp_scan_names_a_missing_file_before_starting_anything() {
    let missing = format!("{}/no-such-file.csv", env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let (code, stdout, stderr) = run_example("dlp-scan", &[&data("meeting-notes.md"), &missing]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    // Named, and found before the embedded servers start (they announce themselves).
    assert_eq!(
        stderr,
        format!("dlp-scan: {missing}: No such file or directory (os error 2)\n")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A directory is not a file to scan.
    let dir = env!("CARGO_MANIFEST_DIR");
    let (code, _, stderr) = run_example("dlp-scan", &[dir]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr, format!("dlp-scan: {dir}: not a regular file\n"));
}

#[test]
fn dlp_server_and_icap_client_name_the_file_they_cannot_use() {
    let missing = format!("{}/no-such-dir/server.pem", env!("CARGO_MANIFEST_DIR"));
    let (code, _, stderr) = run_example(
        "dlp-server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &missing,
            "--tls-key",
            &missing,
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!("dlp-server: TLS configuration: {missing}: no such file\n")
    );
    let rules = format!("{}/no-such-rules.txt", env!("CARGO_MANIFEST_DIR"));
    let (code, _, stderr) = run_example(
        "dlp-server",
        &["--listen", "127.0.0.1:0", "--rules", &rules],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("dlp-server: {rules}: ")),
        "{stderr}"
    );
    let (code, _, stderr) = run_example(
        "icap-client",
        &["--url", "icaps://127.0.0.1:1/x", "--ca", &missing],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!("icap-client: TLS configuration: {missing}: no such file\n")
    );
    assert!(!stderr.contains("byte 0"));
}

/// The load generator of `benches/server_vs_cicap.sh` for `secs` on `port`: 4 connections,
/// `body` in every RESPMOD.
fn load(port: u16, service: &str, body: &[u8], secs: f64, allow_204_preview: bool) -> LoadReport {
    icap_bench_fixtures::load::run(&LoadConfig {
        port,
        service: service.into(),
        body: body.to_vec(),
        conns: 4,
        duration: Duration::from_secs_f64(secs),
        allow_204: allow_204_preview,
        preview: allow_204_preview,
    })
    .expect("the load starts")
}

/// A clean body (no card, SSN or EICAR) over the 56 KiB the server echoes streamed.
fn load_body() -> Vec<u8> {
    let line = b"Quarterly report draft, internal use only, order 4711 shipped\n";
    line.iter().cycle().take(200 * 1024).copied().collect()
}

#[test]
fn load_generator_against_dlp_server() {
    let _serial = peers_support::serial();
    let srv = DlpServer::start();
    let body = load_body();
    let r = load(srv.1, "respmod", &body, 1.0, false);
    assert_eq!(
        (r.errors, r.no_content, &r.first_error),
        (0, 0, &None),
        "{r:?}"
    );
    assert!(r.echoed > 0, "{r:?}");
    assert!(r.cpu.is_some_and(|c| c > Duration::ZERO), "{r:?}");
    let r = load(srv.1, "respmod", &body, 1.0, true);
    assert_eq!((r.errors, r.echoed, &r.first_error), (0, 0, &None), "{r:?}");
    assert!(r.no_content > 0, "{r:?}");
}

#[test]
fn load_generator_against_cicap_echo() {
    if !peers_support::available(&["c-icap"]) {
        return;
    }
    let _serial = peers_support::serial();
    let cicap = peers_support::CIcap::start("");
    let body = load_body();
    let r = load(cicap.port, "echo", &body, 1.0, false);
    assert_eq!(
        (r.errors, r.no_content, &r.first_error),
        (0, 0, &None),
        "{r:?}"
    );
    assert!(r.echoed > 0, "{r:?}");
    // With Allow: 204, c-icap's echo answers 204 and 200 in turn (a toggle in srv_echo.c).
    let r = load(cicap.port, "echo", &body[..1024], 1.0, true);
    assert_eq!((r.errors, &r.first_error), (0, &None), "{r:?}");
    assert!(r.no_content > 0 && r.echoed > 0, "{r:?}");
}

#[test]
fn load_generator_counts_a_changed_echo_as_an_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let body = load_body();
    let mut echo = body.clone();
    echo[150_000] ^= 1;
    // Answers every request with a 200 echoing `body` with one bit changed.
    std::thread::spawn(move || {
        let mut answer = b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\n\
                           HTTP/1.1 200 OK\r\n\r\n"
            .to_vec();
        answer.extend_from_slice(format!("{:x}\r\n", echo.len()).as_bytes());
        answer.extend_from_slice(&echo);
        answer.extend_from_slice(b"\r\n0\r\n\r\n");
        for mut s in l.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0; 65536];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    req.extend_from_slice(&buf[..n]);
                    if req.ends_with(b"\r\n0\r\n\r\n") {
                        req.clear();
                        if s.write_all(&answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let r = load(port, "respmod", &body, 0.3, false);
    assert_eq!((r.echoed, r.no_content), (0, 0), "{r:?}");
    assert!(r.errors > 0, "{r:?}");
    assert_eq!(
        r.first_error.as_deref(),
        Some("echo differs at byte 150000")
    );
}
