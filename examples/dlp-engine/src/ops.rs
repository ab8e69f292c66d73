//! Operations of the example servers: the Prometheus scrape endpoint of `--metrics ADDR`,
//! and the reload of the TLS certificate, key and client CA on SIGHUP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use icap::tls::ReloadableServerTls;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Histogram buckets of the `*_seconds` metrics: a millisecond to a minute, so that the
/// quantiles of scans from small files to large ones can be computed by Prometheus.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A scrape answers within this, or its connection is closed (a client that sends nothing
/// holds no task for long).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs the Prometheus recorder as the process's `metrics` recorder and serves
/// `GET /metrics` in Prometheus text on `addr` (other paths: 404). Returns the bound
/// address (port 0 picks one). Call once, in the tokio runtime, before the client or
/// server records anything; the library records only when built with its `metrics`
/// feature, which the caller checks (and then calls `icap::metrics::describe`).
pub async fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("--metrics: {e}"))?;
    // The recorder keeps histogram samples until upkeep folds them in.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => {
                    // Out of descriptors and the like: try again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| scrape(handle.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(SCRAPE_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), svc);
                let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
            });
        }
    });
    Ok(local)
}

async fn scrape(
    handle: PrometheusHandle,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if req.uri().path() == "/metrics" {
        (StatusCode::OK, handle.render())
    } else {
        (
            StatusCode::NOT_FOUND,
            "not found: try /metrics\n".to_string(),
        )
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

/// Reloads `tls` from its files on every SIGHUP, saying on stderr whether it worked
/// (`NAME: reloaded the TLS certificate and key` or `NAME: TLS reload failed, keeping the
/// current certificate: ...`). Handshakes after a good reload present the new certificate
/// (and check client certificates against the new CA);
/// connections already open are left alone.
pub fn reload_on_sighup(name: &'static str, tls: ReloadableServerTls) -> Result<(), String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP: {e}"))?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => eprintln!("{name}: reloaded the TLS certificate and key"),
                    Err(e) => {
                        eprintln!("{name}: TLS reload failed, keeping the current certificate: {e}")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (name, tls);
    Ok(())
}
