//! Operations: the tracing span of every transaction on both sides and the metrics the
//! client and server record, read back from a real Prometheus recorder and a capturing
//! tracing layer, with the crate's own server and client on loopback. The byte counts of
//! both sides are compared with each other: what one wrote is what the other read.
#![cfg(all(feature = "metrics", feature = "scan", feature = "server"))]

mod net;

use std::time::Duration;

use bytes::Bytes;
use icap::client::{BodySource, Client, ClientConfig};
use icap::dlp::{ScanMode, ScanRequest};
use icap::server::ServerConfig;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use net::{blocker, start_on, Blocker, BlockerRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn scan(body: &'static [u8]) -> ScanRequest {
    ScanRequest::new(
        ScanMode::Reqmod,
        "report.txt",
        BodySource::Bytes(Bytes::from_static(body)),
    )
}

/// A recorder for this test's thread only (the tests run on current-thread runtimes, so
/// the server's and client's tasks record here too).
fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let r = PrometheusBuilder::new().build_recorder();
    let h = r.handle();
    (r, h)
}

/// The value of the sample `name` whose labels include all of `labels`; the sum when
/// several match.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = key.split_once('{').unwrap_or((key, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

#[tokio::test]
async fn transactions_verdicts_and_bytes_are_counted_alike_on_both_sides() {
    let (rec, prom) = recorder();
    let _local = metrics::set_default_local_recorder(&rec);
    icap::metrics::describe();
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::new(&[srv.uri("icap", "blocker")], ClientConfig::default()).unwrap();
    client.scan(scan(b"quarterly numbers")).await.unwrap();
    client
        .scan(scan(b"this has the BLOCK word past the preview"))
        .await
        .unwrap();
    // Stopping the server waits for its connections: every transaction is recorded.
    drop(client);
    srv.stop().await;
    let text = prom.render();
    let t = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels).unwrap_or(0.0);
    for (side, name) in [
        ("server", icap::metrics::SERVER_TRANSACTIONS),
        ("client", icap::metrics::CLIENT_TRANSACTIONS),
    ] {
        // OPTIONS (the preview size comes from it), a clean REQMOD, a blocked one.
        let opts = [
            ("method", "OPTIONS"),
            ("status", "200"),
            ("verdict", "options"),
        ];
        assert_eq!(t(name, &opts), 1.0, "{side}\n{text}");
        let clean = [
            ("method", "REQMOD"),
            ("status", "204"),
            ("verdict", "clean"),
        ];
        assert_eq!(t(name, &clean), 1.0, "{side}\n{text}");
        let blocked = [
            ("method", "REQMOD"),
            ("status", "200"),
            ("verdict", "blocked"),
        ];
        assert_eq!(t(name, &blocked), 1.0, "{side}\n{text}");
        assert_eq!(t(name, &[]), 3.0, "{side}\n{text}");
    }
    let sent = t(icap::metrics::CLIENT_BYTES_SENT, &[]);
    let answered = t(icap::metrics::SERVER_BYTES_SENT, &[]);
    assert!(sent > 200.0 && answered > 200.0, "{text}");
    assert_eq!(sent, t(icap::metrics::SERVER_BYTES_RECEIVED, &[]), "{text}");
    assert_eq!(
        answered,
        t(icap::metrics::CLIENT_BYTES_RECEIVED, &[]),
        "{text}"
    );
    for d in [
        icap::metrics::SERVER_DURATION,
        icap::metrics::CLIENT_DURATION,
    ] {
        let count = format!("{d}_count");
        assert_eq!(t(&count, &[("method", "REQMOD")]), 2.0, "{text}");
        assert_eq!(t(&count, &[("method", "OPTIONS")]), 1.0, "{text}");
    }
    assert_eq!(t(icap::metrics::SERVER_CONNECTIONS, &[]), 0.0, "{text}");
    assert_eq!(t(icap::metrics::CLIENT_ERRORS, &[]), 0.0, "{text}");
    assert_eq!(t(icap::metrics::SERVER_ERRORS, &[]), 0.0, "{text}");
    // describe() gave the exporter its help texts.
    assert!(
        text.contains("# HELP icap_server_transactions_total ICAP server transactions"),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_that_cannot_be_parsed_counts_as_a_400_and_an_error() {
    let (rec, prom) = recorder();
    let _local = metrics::set_default_local_recorder(&rec);
    let srv = blocker(ServerConfig::default()).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"REQMOD icap://x/blocker ICAP/1.0\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"ICAP/1.0 400 "), "{answer:?}");
    srv.stop().await;
    let text = prom.render();
    let errors = sample(
        &text,
        icap::metrics::SERVER_ERRORS,
        &[("kind", "bad_request")],
    );
    assert_eq!(errors, Some(1.0), "{text}");
    let tx = sample(
        &text,
        icap::metrics::SERVER_TRANSACTIONS,
        &[("status", "400"), ("verdict", "error")],
    );
    assert_eq!(tx, Some(1.0), "{text}");
}

#[tokio::test]
async fn partner_health_is_in_the_metrics_down_probed_and_revived() {
    let (rec, prom) = recorder();
    let _local = metrics::set_default_local_recorder(&rec);
    // A port with nothing behind it (yet).
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = parked.local_addr().unwrap();
    drop(parked);
    let live = blocker(ServerConfig::default()).await;
    let dead_uri = format!("icap://{dead_addr}/blocker");
    let mut cfg = ClientConfig::default();
    cfg.failure_limit = 1;
    cfg.revival_delay = Duration::from_millis(100);
    cfg.retries = 1;
    let client = Client::new(&[dead_uri.clone(), live.uri("icap", "blocker")], cfg).unwrap();
    client.scan(scan(b"quarterly numbers")).await.unwrap();
    let text = prom.render();
    let s = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let dead = ("server", dead_uri.as_str());
    let live_uri = live.uri("icap", "blocker");
    let alive = ("server", live_uri.as_str());
    assert_eq!(
        s(icap::metrics::CLIENT_SERVER_UP, &[dead]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        s(icap::metrics::CLIENT_SERVER_UP, &[alive]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        s(icap::metrics::CLIENT_SERVER_MARKED_DOWN, &[dead]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        s(icap::metrics::CLIENT_ERRORS, &[("kind", "connect")]),
        Some(1.0),
        "{text}"
    );
    // The live server's connection went back to the pool.
    assert_eq!(
        s(icap::metrics::CLIENT_POOL_IDLE, &[alive]),
        Some(1.0),
        "{text}"
    );
    assert!(!client.health()[0].up);

    // The server comes up on the dead port; after the revival delay a probe brings it back.
    let back = start_on(
        tokio::net::TcpListener::bind(dead_addr).await.unwrap(),
        icap::server::Server::default().route_blocker("blocker", Blocker::default()),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reports = client.test_connection().await;
    assert!(reports.iter().all(|r| r.result.is_ok()));
    let text = prom.render();
    let s = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(
        s(icap::metrics::CLIENT_SERVER_UP, &[dead]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        s(icap::metrics::CLIENT_SERVER_REVIVED, &[dead]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        s(icap::metrics::CLIENT_PROBES, &[dead, ("result", "ok")]),
        Some(1.0),
        "{text}"
    );
    assert!(client.health()[0].up);
    drop(back);
}
