//! Peer client against our server, in one run: `icap-rs` 0.3's `Client` (keep-alive, body in
//! memory, plain TCP: its TLS needs its `tls-rustls` feature, left off) beside our
//! [`icap::client::Client`], both sending the same RESPMOD (a 1 KiB and a 64 MiB body,
//! `Allow: 204`, no preview) to the same [`icap::server::Server`] on 127.0.0.1, which reads the
//! whole body and answers 204. One tokio runtime with 2 worker threads.
//!
//! `cargo bench --features bench-peers,client,server,http --bench peers_loopback -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icap::client::{Client, ClientConfig, ClientRequest, PreviewPolicy};
use icap::server::{IncomingRequest, Reply, Server, ServerConfig};
use icap::BoxError;
use icap::{HttpRequestHead, HttpResponseHead, Method, ServiceOptions};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// Reads the whole body and answers 204.
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

fn body_of(len: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ\n";
    line.iter().copied().cycle().take(len).collect()
}

fn ours_request(len: usize) -> ClientRequest {
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
    ClientRequest::respmod(res)
        .http_request(req)
        .allow_204(true)
}

fn peer_request(body: Vec<u8>) -> icap_rs::Request {
    let len = body.len();
    let orig = http::Request::builder()
        .method("GET")
        .uri("http://download.example/file.bin")
        .header("Host", "download.example")
        .body(())
        .unwrap();
    let res = http::Response::builder()
        .status(200)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", len.to_string())
        .body(body)
        .unwrap();
    icap_rs::Request::respmod("respmod")
        .allow_204()
        .with_http_response_and_request_context(res, orig)
        .unwrap()
}

fn peers_loopback(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (port, stop) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::new(ServerConfig::default()).route(
            "respmod",
            drain_options(),
            tower::service_fn(drain),
        );
        tokio::spawn(async move {
            let _ = server
                .serve(l, async {
                    let _ = stopped.await;
                })
                .await;
        });
        (port, stop)
    });
    let url = format!("icap://127.0.0.1:{port}/respmod");
    let ours = Client::new(
        &[url.as_str()],
        ClientConfig::default()
            .preview(PreviewPolicy::Off)
            .max_connections_per_server(1),
    )
    .unwrap();
    let peer = icap_rs::Client::builder()
        .host("127.0.0.1")
        .port(port)
        .keep_alive(true)
        .build();

    for (name, len) in [("small-1KiB", 1024usize), ("64MiB", 64 << 20)] {
        let body = body_of(len);
        let call = ours_request(len).body(Bytes::from(body.clone()));
        let preq = peer_request(body);
        let ours_once = || async {
            let x = ours.exchange(&call).await.unwrap();
            assert_eq!(x.response.status, 204);
        };
        let peer_once = || async {
            let r = peer.send(&preq).await.unwrap();
            assert_eq!(r.status_code().as_u16(), 204);
        };
        // Warm both connections, and check both work before timing.
        rt.block_on(ours_once());
        rt.block_on(peer_once());
        let mut g = c.benchmark_group(format!("peers-loopback/{name}"));
        if len > 1 << 20 {
            g.sample_size(10);
        }
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: len as u64,
        });
        g.bench_function("icap-client", |b| {
            b.iter_custom(|n| {
                let t = std::time::Instant::now();
                rt.block_on(async {
                    for _ in 0..n {
                        ours_once().await;
                    }
                });
                t.elapsed()
            })
        });
        g.bench_function("icap-rs-client", |b| {
            b.iter_custom(|n| {
                let t = std::time::Instant::now();
                rt.block_on(async {
                    for _ in 0..n {
                        peer_once().await;
                    }
                });
                t.elapsed()
            })
        });
        g.finish();
    }
    let _ = stop.send(());
}

criterion_group!(benches, peers_loopback);
criterion_main!(benches);
