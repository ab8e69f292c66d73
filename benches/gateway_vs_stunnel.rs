//! The gateway (`icap::gateway` behind a rustls acceptor demanding a client certificate, as
//! `examples/icap-gateway.rs` runs it) against stunnel4 (`verify = 2`, the same
//! certificates) in front of the same plain ICAP server, in the same run.
//!
//! - `1KiB x1`, `1KiB x32`: RESPMOD with a 1 KiB body, `Allow: 204`, no preview, over 1 and
//!   32 keep-alive TLS connections for a fixed time: transactions/s.
//! - `64MiB`: the same RESPMOD with a 64 MiB body (the server reads it all, answers 204): MB/s.
//!
//! The ICAP server (`icap::server`, reading every body and answering 204) and the client
//! (raw pre-encoded requests over tokio-rustls, answers framed by `ResponseDecoder`) are the
//! same for both; the gateway runs on a runtime of its own (2 threads), stunnel in its own
//! process. Rounds alternate between the two and the median of 3 rounds is reported, with
//! the gateway's figure as a ratio of stunnel's.
//!
//! `cargo bench --features gateway,tls,server --bench gateway_vs_stunnel`
//! (needs stunnel4 and openssl; `GW_BENCH_SECS` sets the seconds per 1 KiB run, default 3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use icap::gateway::{Gateway, GatewayConfig};
use icap::server::{IncomingRequest, Reply, Server, ServerConfig};
use icap::tls::{ClientTls, ServerTls};
use icap::BoxError;
use icap::{IcapUri, Method, ResponseDecoder, ResponseEvent, ServiceOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

async fn drain(mut req: IncomingRequest) -> Result<Reply, BoxError> {
    while let Ok(Some(_)) = req.body.data().await {}
    Ok(Reply::unmodified())
}

/// A RESPMOD with `len` body bytes, head and framing included; the body in 64 KiB chunks.
fn respmod(port: u16, len: usize) -> Vec<Bytes> {
    let http = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n";
    let head = format!(
        "RESPMOD icap://127.0.0.1:{port}/respmod ICAP/1.0\r\nHost: 127.0.0.1:{port}\r\nAllow: 204\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n{http}",
        http.len()
    );
    let mut out = vec![Bytes::from(head)];
    let chunk = vec![b'a'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        let mut c = format!("{n:x}\r\n").into_bytes();
        c.extend_from_slice(&chunk[..n]);
        c.extend_from_slice(b"\r\n");
        out.push(Bytes::from(c));
        left -= n;
    }
    out.push(Bytes::from_static(b"0\r\n\r\n"));
    if len <= 64 * 1024 {
        // Small messages in one write, as a client would send them.
        return vec![Bytes::from(out.concat())];
    }
    out
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(port: u16, tls: &TlsConnector) -> Tls {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tls.connect(name, tcp).await.unwrap()
}

/// One transaction: the request out, the whole answer read (must be 204).
async fn transact(s: &mut Tls, msg: &[Bytes], buf: &mut Vec<u8>) {
    for b in msg {
        s.write_all(b).await.unwrap();
    }
    s.flush().await.unwrap();
    let mut dec = ResponseDecoder::default();
    loop {
        match dec.decode().unwrap() {
            Some(ResponseEvent::Head(h)) => assert_eq!(h.status, 204),
            Some(ResponseEvent::End(_)) => return,
            Some(_) => {}
            None => {
                buf.clear();
                let n = s.read_buf(buf).await.unwrap();
                assert!(n > 0, "closed inside an answer");
                dec.feed(buf);
            }
        }
    }
}

/// Transactions/s over `conns` connections for `secs`.
async fn small(port: u16, tls: &TlsConnector, conns: usize, secs: Duration) -> f64 {
    let msg = Arc::new(respmod(port, 1024));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut s = connect(port, tls).await;
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            transact(&mut s, &msg, &mut buf).await; // warm up
            let end = Instant::now() + secs;
            let mut n = 0u64;
            while Instant::now() < end {
                transact(&mut s, &msg, &mut buf).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs.as_secs_f64()
}

/// MB/s of one 64 MiB transaction (median of 3).
async fn bulk(port: u16, tls: &TlsConnector) -> f64 {
    let len = 64 << 20;
    let msg = respmod(port, len);
    let mut s = connect(port, tls).await;
    let mut buf = Vec::with_capacity(4096);
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        transact(&mut s, &msg, &mut buf).await;
        rates.push(len as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    median(rates)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Stunnel(Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_stunnel(dir: &Path, certs: &Path, tls_port: u16, backend: u16) -> Option<Stunnel> {
    let conf = dir.join("stunnel.conf");
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/stunnel/stunnel-mtls.conf.in"),
    )
    .unwrap();
    let text = template
        .replace("@TLS_PORT@", &tls_port.to_string())
        .replace("@PORT@", &backend.to_string())
        .replace("@DIR@", &dir.display().to_string())
        .replace("@CERT@", &certs.join("server.pem").display().to_string())
        .replace("@KEY@", &certs.join("server.key").display().to_string())
        .replace("@CAFILE@", &certs.join("ca.pem").display().to_string())
        .replace("@EXTRA@", "")
        .replace("debug = info", "debug = warning");
    std::fs::write(&conf, text).unwrap();
    let child = Command::new("stunnel4")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < end, "stunnel did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Stunnel(child))
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let secs = Duration::from_secs(
        std::env::var("GW_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("icap-gw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = dir.join("certs");
    let ok = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/gen-certs.sh"))
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: gen-certs.sh (openssl) failed");
        return;
    }

    // The ICAP server, on a runtime of its own.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = server_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = Server::new(
            ServerConfig::default()
                .max_connections(256)
                .max_connections_per_ip(256),
        )
        .route(
            "respmod",
            ServiceOptions::default()
                .with_methods(vec![Method::Respmod])
                .with_istag("\"bench-1\"")
                .with_allow_204(true),
            tower::service_fn(drain),
        );
        tokio::spawn(async move { server.serve(l, std::future::pending::<()>()).await });
        port
    });

    // The gateway, on a runtime of its own.
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server_tls = ServerTls::from_pem_files(certs.join("server.pem"), certs.join("server.key"))
        .unwrap()
        .require_client_certs(certs.join("ca.pem"))
        .unwrap()
        .build()
        .unwrap();
    let gw_port = gw_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let gw = Gateway::new(
            vec![IcapUri::parse(&format!("icap://127.0.0.1:{backend}/respmod")).unwrap()],
            GatewayConfig::default(),
        )
        .unwrap();
        let acceptor = TlsAcceptor::from(server_tls);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                let (acceptor, gw) = (acceptor.clone(), gw.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = gw.serve_connection(tls, |_| {}).await;
                    }
                });
            }
        });
        port
    });

    let st_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(_stunnel) = start_stunnel(&dir, &certs, st_port, backend) else {
        eprintln!("SKIPPED: stunnel4 not installed");
        return;
    };

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_tls = ClientTls::default()
        .with_ca_file(certs.join("ca.pem"))
        .unwrap()
        .with_client_cert_files(certs.join("client.pem"), certs.join("client.key"))
        .unwrap()
        .build()
        .unwrap();
    let tls = TlsConnector::from(client_tls);

    let targets = [("stunnel", st_port), ("gateway", gw_port)];
    let mut results: Vec<[Vec<f64>; 3]> = vec![Default::default(), Default::default()];
    for round in 0..3 {
        for (i, (name, port)) in targets.iter().enumerate() {
            let (a, b, c) = client_rt.block_on(async {
                (
                    small(*port, &tls, 1, secs).await,
                    small(*port, &tls, 32, secs).await,
                    bulk(*port, &tls).await,
                )
            });
            eprintln!("round {round} {name}: {a:.0} tx/s x1, {b:.0} tx/s x32, {c:.0} MB/s");
            results[i][0].push(a);
            results[i][1].push(b);
            results[i][2].push(c);
        }
    }
    let med: Vec<[f64; 3]> = results.into_iter().map(|r| r.map(median)).collect();
    println!("| run | stunnel | gateway | gateway / stunnel |");
    println!("|---|---|---|---|");
    for (k, label) in [
        "1 KiB, 1 connection (tx/s)",
        "1 KiB, 32 connections (tx/s)",
        "64 MiB body (MB/s)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} |",
            med[0][k],
            med[1][k],
            med[1][k] / med[0][k]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
