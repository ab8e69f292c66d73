//! dlp-server's operations, with the real process: `--metrics ADDR` scraped over HTTP in
//! Prometheus text (counts matching the transactions made), and SIGHUP reloading the
//! certificate and key (new handshakes get the new certificate, a transaction begun before
//! the signal ends after it, unusable files keep the old one, SIGTERM still exits 0).
#![cfg(all(feature = "server", feature = "metrics", feature = "tls"))]

mod tls_pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tls_pki::Pki;

mod example_bins;
use example_bins::example;

/// The process, killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, pki: &Pki) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn =
        rustls::ClientConnection::new(pki.client(), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

fn presented(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// One answer head.
fn answer(s: &mut Tls) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    String::from_utf8(got).unwrap()
}

fn options(s: &mut Tls, port: u16) -> String {
    write!(
        s,
        "OPTIONS icap://127.0.0.1:{port}/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    answer(s)
}

/// GET `path` from the metrics address: status line and body.
fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `name{labels}` (labels as printed, in order).
fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

/// Waits for a stderr line containing `want`.
fn wait_for(lines: &mpsc::Receiver<String>, want: &str) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains(want) => return l,
            Ok(_) => {}
            Err(e) => panic!("no stderr line with {want:?}: {e}"),
        }
    }
}

#[test]
fn dlp_server_serves_metrics_and_reloads_its_certificate_on_sighup() {
    let pki = Pki::new("dlp-server");
    let (a, b) = (pki.leaf("dlp A"), pki.leaf("dlp B"));
    pki.install(&a);
    let child = Command::new(example("dlp-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(pki.path("server.pem"))
        .arg("--tls-key")
        .arg(pki.path("server.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let pid = proc.0.id();
    let mut out = BufReader::new(proc.0.stdout.take().unwrap());
    let (tx, errs) = mpsc::channel();
    let stderr = proc.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let metrics: SocketAddr = line
        .trim()
        .strip_prefix("dlp-server: metrics at http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let icaps: SocketAddr = line
        .strip_prefix("dlp-server: icaps://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let port = icaps.port();

    // Certificate A: OPTIONS, then a REQMOD left halfway through its body.
    let mut old = connect(icaps, &pki);
    assert_eq!(presented(&old), a.der);
    assert!(options(&mut old, port).starts_with("ICAP/1.0 200 OK\r\n"));
    let http = "POST /up HTTP/1.1\r\nHost: upload.example\r\n\r\n";
    write!(
        old,
        "REQMOD icap://127.0.0.1:{port}/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
         Encapsulated: req-hdr=0, req-body={}\r\n\r\n{http}a\r\nfirst half\r\n",
        http.len()
    )
    .unwrap();
    old.flush().unwrap();

    // Renewed files and SIGHUP: no restart, the next handshake presents B.
    pki.install(&b);
    signal(pid, "-HUP");
    wait_for(&errs, "dlp-server: reloaded the TLS certificate and key");
    let mut fresh = connect(icaps, &pki);
    assert_eq!(presented(&fresh), b.der);
    assert!(options(&mut fresh, port).starts_with("ICAP/1.0 200 OK\r\n"));
    // The transaction begun on A ends well.
    write!(old, "b\r\nsecond half\r\n0\r\n\r\n").unwrap();
    old.flush().unwrap();
    let clean = answer(&mut old);
    assert!(clean.starts_with("ICAP/1.0 204 "), "{clean}");

    // The scrape counts what happened, both connections open.
    let (status, text) = scrape(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let tx = |labels: &str| {
        sample(
            &text,
            &format!("icap_server_transactions_total{{{labels}}}"),
        )
    };
    assert_eq!(
        tx(r#"method="OPTIONS",status="200",verdict="options""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        tx(r#"method="REQMOD",status="204",verdict="clean""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "icap_server_connections"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"icap_server_transaction_duration_seconds_count{method="REQMOD"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // Buckets, so that Prometheus can compute quantiles across servers.
    assert!(
        text.contains(
            r#"icap_server_transaction_duration_seconds_bucket{method="REQMOD",le="0.5"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("# HELP icap_server_transactions_total "),
        "{text}"
    );
    let (status, _) = scrape(metrics, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Unusable files: said on stderr, B stays.
    std::fs::write(pki.path("server.key"), "not a key\n").unwrap();
    signal(pid, "-HUP");
    let failed = wait_for(&errs, "TLS reload failed");
    assert!(
        failed.ends_with(&format!(
            "keeping the current certificate: TLS configuration: {}: no private key in the file",
            pki.path("server.key").display()
        )),
        "{failed}"
    );
    let mut after = connect(icaps, &pki);
    assert_eq!(presented(&after), b.der);
    assert!(options(&mut after, port).starts_with("ICAP/1.0 200 OK\r\n"));
    drop((old, fresh, after));

    signal(pid, "-TERM");
    let st = proc.0.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

#[test]
fn dlp_server_names_a_metrics_address_it_cannot_bind_and_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(example("dlp-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("dlp-server: --metrics {addr}: ")),
        "{err}"
    );
}
