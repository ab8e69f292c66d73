//! The cost of the operations layer: 1 KiB RESPMOD transactions (Allow: 204, no preview,
//! keep-alive, client and server in one current-thread runtime) with nothing listening,
//! with a Prometheus recorder installed (every counter and histogram recorded), and with
//! the recorder plus a `tracing` fmt subscriber that formats each transaction's span on
//! close (to a sink), in the same run. The `off` case is the baseline of the ratios.
//!
//! `cargo bench --features client,server,metrics --bench observe -- --warm-up-time 1 --measurement-time 3`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icap::client::{Client, ClientConfig, ClientRequest, PreviewPolicy};
use icap::server::{IncomingRequest, Reply, Server, ServerConfig};
use icap::BoxError;
use icap::{HttpRequestHead, HttpResponseHead, Method, ServiceOptions};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tracing_subscriber::fmt::format::FmtSpan;

async fn drain(mut req: IncomingRequest) -> Result<Reply, BoxError> {
    while let Ok(Some(_)) = req.body.data().await {}
    Ok(Reply::unmodified())
}

fn heads(len: usize) -> (HttpRequestHead, HttpResponseHead) {
    let req = HttpRequestHead::new(
        "GET",
        "http://download.example/file.bin",
        [("Host", "download.example")].into_iter().collect(),
    );
    let res = HttpResponseHead::new(
        200,
        "OK",
        [("Content-Length", len.to_string())].into_iter().collect(),
    );
    (req, res)
}

async fn setup() -> Client {
    let options = ServiceOptions::default()
        .with_methods(vec![Method::Respmod])
        .with_istag("\"bench-1\"")
        .with_allow_204(true)
        .with_options_ttl(Some(3600));
    let server =
        Server::new(ServerConfig::default()).route("respmod", options, tower::service_fn(drain));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(server.serve(l, std::future::pending()));
    Client::new(
        &[format!("icap://127.0.0.1:{port}/respmod")],
        ClientConfig::default()
            .preview(PreviewPolicy::Off)
            .max_connections_per_server(1),
    )
    .unwrap()
}

async fn once(client: &Client, body: &Bytes) {
    let (req, res) = heads(body.len());
    let call = ClientRequest::respmod(res)
        .http_request(req)
        .allow_204(true)
        .body(body.clone());
    let x = client.exchange(&call).await.unwrap();
    assert_eq!(x.response.status, 204);
}

fn run(rt: &Runtime, client: &Client, body: &Bytes, n: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            once(client, body).await;
        }
        start.elapsed()
    })
}

fn observe(c: &mut Criterion) {
    // Current-thread: the thread-local recorder and subscriber see client and server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(setup());
    let body = Bytes::from(vec![b'x'; 1024]);
    rt.block_on(once(&client, &body));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let mut g = c.benchmark_group("observe/small-1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function("off", |b| b.iter_custom(|n| run(&rt, &client, &body, n)));
    g.bench_function("metrics", |b| {
        b.iter_custom(|n| {
            let _m = metrics::set_default_local_recorder(&recorder);
            run(&rt, &client, &body, n)
        })
    });
    g.bench_function("metrics+tracing", |b| {
        b.iter_custom(|n| {
            let _m = metrics::set_default_local_recorder(&recorder);
            let sub = tracing_subscriber::fmt()
                .with_span_events(FmtSpan::CLOSE)
                .with_writer(std::io::sink)
                .finish();
            let _t = tracing::subscriber::set_default(sub);
            run(&rt, &client, &body, n)
        })
    });
    g.finish();
    // Keep the histograms from growing over the run.
    handle.run_upkeep();
}

criterion_group!(benches, observe);
criterion_main!(benches);
