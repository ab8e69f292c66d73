//! Client and server on loopback, keep-alive, in one tokio runtime (2 worker threads), beside
//! a raw echo of the same bytes over the same kind of socket, in the same run.
//!
//! - `small-1KiB/{tcp,tls}`: RESPMOD with a 1 KiB body, `Allow: 204`, no preview; the
//!   service reads the whole body and answers 204. Baseline `raw-echo`: the request's wire
//!   bytes written, the same number read back.
//! - `64MiB/{tcp,tls}`: the same RESPMOD with a 64 MiB body, as `icap-204` (the service
//!   reads it all and answers 204) and `icap-200-echo` (no `Allow: 204`: the server spools
//!   the body, to disk past 1 MiB, and echoes it in a 200). Baselines: `raw-echo` (request
//!   bytes out, as many back: the work of the 200 echo) and `raw-oneway` (request bytes out, one
//!   byte back: the work of the 204).
//!
//! After criterion's groups, CPU time per transaction (user + system of the whole process,
//! client and server together, from /proc/self/stat over every timed iteration) is printed.
//!
//! `cargo bench --features client,server --bench loopback -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icap::client::{Client, ClientConfig, ClientRequest, PreviewPolicy};
use icap::server::{IncomingRequest, Reply, Server, ServerConfig};
use icap::tls::{ClientTls, ServerTls, Trust};
use icap::BoxError;
use icap::{Encoder, HttpRequestHead, HttpResponseHead, IcapUri, Method, Request, ServiceOptions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Reads the whole body, keeps nothing, answers "unmodified" (204, or a 200 echo).
async fn drain(mut req: IncomingRequest) -> Result<Reply, BoxError> {
    while let Ok(Some(_)) = req.body.data().await {}
    Ok(Reply::unmodified())
}

fn drain_options() -> ServiceOptions {
    ServiceOptions::default()
        .with_methods(vec![Method::Reqmod, Method::Respmod])
        .with_istag("\"bench-1\"")
        .with_allow_204(true)
        .with_options_ttl(Some(3600))
}

struct Pki {
    server: ServerTls,
    client: ClientTls,
}

/// A CA and a server certificate for 127.0.0.1, made in memory as examples/dlp-scan.rs does.
fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let mut srv = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    srv.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let srv_cert = srv.signed_by(&srv_key, &issuer).unwrap();
    let der = |c: &rcgen::Certificate| CertificateDer::from(c.der().to_vec());
    Pki {
        server: ServerTls::new(
            vec![der(&srv_cert), der(&ca_cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key.serialize_der())),
        ),
        client: ClientTls::default().with_trust(Trust::Ca(vec![der(&ca_cert)])),
    }
}

/// Process CPU time (user + system, all threads) in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

const TICK: Duration = Duration::from_millis(10);

/// CPU ticks, wall time and iterations per benchmark id, over every timed call.
#[derive(Default, Clone, Copy)]
struct Cpu {
    ticks: u64,
    wall: Duration,
    iters: u64,
}

static CPU: Mutex<BTreeMap<String, Cpu>> = Mutex::new(BTreeMap::new());

/// Runs `iters` iterations of `one` in the runtime; records CPU and wall time for `id`.
fn timed<F, Fut>(rt: &Runtime, id: &str, iters: u64, one: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let c0 = cpu_ticks();
    let t0 = Instant::now();
    rt.block_on(async {
        for _ in 0..iters {
            one().await;
        }
    });
    let wall = t0.elapsed();
    let c1 = cpu_ticks();
    let mut m = CPU.lock().unwrap();
    let e = m.entry(id.to_string()).or_default();
    e.ticks += c1 - c0;
    e.wall += wall;
    e.iters += iters;
    wall
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a raw peer does with what it reads.
#[derive(Clone, Copy)]
enum Raw {
    /// Writes every byte back.
    Echo,
    /// Counts `n` bytes, then writes one byte.
    Ack(usize),
}

/// A raw TCP or TLS server on loopback.
async fn raw_server(mode: Raw, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(cfg) => Box::new(
                        tokio_rustls::TlsAcceptor::from(cfg)
                            .accept(tcp)
                            .await
                            .unwrap(),
                    ),
                };
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0usize;
                loop {
                    let n = match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    match mode {
                        Raw::Echo => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            let _ = io.flush().await;
                        }
                        Raw::Ack(want) => {
                            got += n;
                            if got >= want {
                                got = 0;
                                if io.write_all(b"k").await.is_err() {
                                    return;
                                }
                                let _ = io.flush().await;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A raw client connection, split so that writing and reading overlap.
struct RawConn {
    rd: tokio::sync::Mutex<tokio::io::ReadHalf<Box<dyn Io>>>,
    wr: tokio::sync::Mutex<tokio::io::WriteHalf<Box<dyn Io>>>,
}

async fn raw_client(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> RawConn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(cfg) => Box::new(
            tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap(),
        ),
    };
    let (rd, wr) = tokio::io::split(io);
    RawConn {
        rd: tokio::sync::Mutex::new(rd),
        wr: tokio::sync::Mutex::new(wr),
    }
}

impl RawConn {
    /// Writes `wire` in 64 KiB writes while reading `back` bytes.
    async fn exchange(&self, wire: &Bytes, back: usize) {
        let mut wr = self.wr.lock().await;
        let mut rd = self.rd.lock().await;
        let write = async {
            for piece in wire.chunks(64 * 1024) {
                wr.write_all(piece).await.unwrap();
            }
            wr.flush().await.unwrap();
        };
        let read = async {
            let mut buf = vec![0u8; (64 * 1024).min(back.max(1))];
            let mut left = back;
            while left > 0 {
                let n = rd.read(&mut buf[..left.min(64 * 1024)]).await.unwrap();
                assert!(n > 0, "raw peer closed");
                left -= n;
            }
        };
        tokio::join!(write, read);
    }
}

fn embedded_heads(len: usize) -> (HttpRequestHead, HttpResponseHead) {
    let req = HttpRequestHead::new(
        "GET",
        "http://download.example/file.bin",
        [("Host", "download.example")].into_iter().collect(),
    );
    let res = HttpResponseHead::new(
        200,
        "OK",
        [
            ("Content-Type", "application/octet-stream".to_string()),
            ("Content-Length", len.to_string()),
        ]
        .into_iter()
        .collect(),
    );
    (req, res)
}

fn build_request(
    uri: &IcapUri,
    len: usize,
    allow_204: bool,
) -> Result<Request, icap::builder::BuildError> {
    let (req, res) = embedded_heads(len);
    let mut b = Request::respmod(uri)
        .http_request(req)
        .http_response(res)
        .with_body();
    if allow_204 {
        b = b.allow_204();
    }
    b.build()
}

/// The wire bytes of the request as the client frames it: head, 64 KiB chunks, last chunk.
fn request_wire(uri: &IcapUri, body: &Bytes, allow_204: bool) -> Bytes {
    let req = build_request(uri, body.len(), allow_204).unwrap();
    let mut enc = Encoder::new();
    enc.request_head(&req).unwrap();
    let mut off = 0;
    while off < body.len() {
        let end = (off + 64 * 1024).min(body.len());
        enc.data(body.slice(off..end)).unwrap();
        off = end;
    }
    enc.end(false).unwrap();
    let mut out = BytesMut::new();
    while bytes::Buf::has_remaining(&enc) {
        let c = bytes::Buf::chunk(&enc);
        out.extend_from_slice(c);
        let n = c.len();
        bytes::Buf::advance(&mut enc, n);
    }
    out.freeze()
}

fn body_of(len: usize) -> Bytes {
    // Text-like content, not all zeroes.
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ\n";
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(line.len());
        v.extend_from_slice(&line[..n]);
    }
    Bytes::from(v)
}

struct Setup {
    client_204: Client,
    client_echo: Client,
    uri: IcapUri,
    echo: RawConn,
    oneway: Option<RawConn>,
}

async fn setup(
    secure: Option<&Pki>,
    oneway_len: Option<usize>,
) -> (Setup, tokio::sync::oneshot::Sender<()>) {
    let server_tls = secure.map(|p| p.server.build().unwrap());
    let client_tls = secure.map(|p| p.client.build().unwrap());
    let mut server = Server::new(ServerConfig::default()).route(
        "respmod",
        drain_options(),
        tower::service_fn(drain),
    );
    if let Some(t) = &server_tls {
        server = server.tls(t.clone());
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .serve(l, async {
                let _ = stopped.await;
            })
            .await;
    });
    let scheme = if secure.is_some() { "icaps" } else { "icap" };
    let url = format!("{scheme}://127.0.0.1:{port}/respmod");
    let client = |allow_204: bool| {
        Client::new(
            &[url.as_str()],
            ClientConfig::default()
                .tls(secure.map_or_else(ClientTls::default, |p| p.client.clone()))
                .allow_204(allow_204)
                .preview(PreviewPolicy::Off)
                .max_connections_per_server(1),
        )
        .unwrap()
    };
    let echo = raw_client(
        raw_server(Raw::Echo, server_tls.clone()).await,
        client_tls.clone(),
    )
    .await;
    let oneway = match oneway_len {
        Some(n) => Some(raw_client(raw_server(Raw::Ack(n), server_tls).await, client_tls).await),
        None => None,
    };
    (
        Setup {
            client_204: client(true),
            client_echo: client(false),
            uri: IcapUri::parse(&url).unwrap(),
            echo,
            oneway,
        },
        stop,
    )
}

async fn icap_once(client: &Client, body: &Bytes, len: usize, allow_204: bool, status: u16) {
    let (req, res) = embedded_heads(len);
    let call = ClientRequest::respmod(res)
        .http_request(req)
        .allow_204(allow_204)
        .body(body.clone());
    let x = client.exchange(&call).await.unwrap();
    assert_eq!(x.response.status, status);
    if status == 200 {
        assert_eq!(x.body_digest.map(|d| d.0), Some(len as u64));
    }
}

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn small(c: &mut Criterion) {
    let rt = rt();
    let pki = pki();
    let body = body_of(1024);
    let source = body.clone();
    for secure in [false, true] {
        let t = if secure { "tls" } else { "tcp" };
        let (s, stop) = rt.block_on(setup(secure.then_some(&pki), None));
        let wire = request_wire(&s.uri, &body, true);
        // Warm the connections (and TLS handshakes) outside the timing.
        rt.block_on(icap_once(&s.client_204, &source, body.len(), true, 204));
        let mut g = c.benchmark_group(format!("loopback/small-1KiB/{t}"));
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: wire.len() as u64,
        });
        let id = format!("small-1KiB/{t}/icap-204");
        g.bench_function("icap-204", |b| {
            b.iter_custom(|n| {
                timed(&rt, &id, n, || {
                    icap_once(&s.client_204, &source, body.len(), true, 204)
                })
            })
        });
        let id = format!("small-1KiB/{t}/raw-echo");
        g.bench_function("raw-echo", |b| {
            b.iter_custom(|n| timed(&rt, &id, n, || s.echo.exchange(&wire, wire.len())))
        });
        g.finish();
        eprintln!("loopback: small/{t}: request wire {} bytes", wire.len());
        let _ = stop.send(());
    }
}

fn big(c: &mut Criterion) {
    let rt = rt();
    let pki = pki();
    let len = 64 << 20;
    let body = body_of(len);
    let source = body.clone();
    for secure in [false, true] {
        let t = if secure { "tls" } else { "tcp" };
        // The raw peers are told the length before the ICAP server has a port: frame the
        // request for a 5-digit port (the bytes differ from the real ones only in the URI).
        let uri = IcapUri::parse("icap://127.0.0.1:40000/respmod").unwrap();
        let wire = request_wire(&uri, &body, true);
        let (s, stop) = rt.block_on(setup(secure.then_some(&pki), Some(wire.len())));
        rt.block_on(icap_once(&s.client_204, &source, len, true, 204));
        rt.block_on(icap_once(&s.client_echo, &source, len, false, 200));
        let mut g = c.benchmark_group(format!("loopback/64MiB/{t}"));
        g.sample_size(10);
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: len as u64,
        });
        let id = format!("64MiB/{t}/icap-204");
        g.bench_function("icap-204", |b| {
            b.iter_custom(|n| {
                timed(&rt, &id, n, || {
                    icap_once(&s.client_204, &source, len, true, 204)
                })
            })
        });
        let id = format!("64MiB/{t}/raw-oneway");
        let oneway = s.oneway.as_ref().unwrap();
        g.bench_function("raw-oneway", |b| {
            b.iter_custom(|n| timed(&rt, &id, n, || oneway.exchange(&wire, 1)))
        });
        let id = format!("64MiB/{t}/icap-200-echo");
        g.bench_function("icap-200-echo", |b| {
            b.iter_custom(|n| {
                timed(&rt, &id, n, || {
                    icap_once(&s.client_echo, &source, len, false, 200)
                })
            })
        });
        let id = format!("64MiB/{t}/raw-echo");
        g.bench_function("raw-echo", |b| {
            b.iter_custom(|n| timed(&rt, &id, n, || s.echo.exchange(&wire, wire.len())))
        });
        g.finish();
        let _ = stop.send(());
    }
}

fn report(_: &mut Criterion) {
    let m = CPU.lock().unwrap();
    eprintln!();
    eprintln!("loopback: CPU per transaction (user+sys, whole process: client and server), over all timed iterations");
    eprintln!(
        "{:<32} {:>10} {:>14} {:>14} {:>8}",
        "bench", "iters", "wall/txn", "cpu/txn", "cpu/wall"
    );
    for (id, c) in m.iter() {
        let cpu = TICK * c.ticks as u32;
        let it = c.iters.max(1) as u32;
        eprintln!(
            "{:<32} {:>10} {:>14?} {:>14?} {:>8.2}",
            id,
            c.iters,
            c.wall / it,
            cpu / it,
            cpu.as_secs_f64() / c.wall.as_secs_f64().max(1e-9)
        );
    }
}

criterion_group!(benches, small, big, report);
criterion_main!(benches);
