//! The async client against the crate's own server on loopback: verdicts, keep-alive,
//! preview from OPTIONS, TLS and mTLS failures told apart, pinning, failover, fail-open.
#![cfg(all(feature = "scan", feature = "server"))]

mod net;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use icap::client::{BodySource, Client, ClientConfig};
use icap::client::{ClientError, TlsFailure};
use icap::dlp::Verdict;
use icap::dlp::{ScanMode, ScanRequest};
use icap::server::{Server, ServerConfig};
use icap::tls::{ClientTls, ServerTls};
use net::{blocker, pki, start, Blocker, BlockerRoute};
use tokio::io::AsyncWriteExt;

fn scan(body: &'static [u8]) -> ScanRequest {
    ScanRequest::new(
        ScanMode::Reqmod,
        "report.txt",
        BodySource::Bytes(Bytes::from_static(body)),
    )
}

#[tokio::test]
async fn verdicts_over_one_kept_alive_connection() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::new(&[srv.uri("icap", "blocker")], ClientConfig::default()).unwrap();
    let opts = client.options().await.unwrap();
    assert_eq!(opts.preview, Some(8));
    let clean = client
        .scan(scan(b"quarterly numbers, nothing secret"))
        .await
        .unwrap();
    assert_eq!(
        clean.verdict,
        Verdict::Allowed {
            reason: "204: no modification needed".into()
        }
    );
    let blocked = client
        .scan(scan(b"this has the BLOCK word past the preview"))
        .await
        .unwrap();
    assert_eq!(
        blocked.verdict,
        Verdict::Blocked {
            reason: "X-Blocked-Reason: keyword BLOCK".into()
        }
    );
    let x = blocked.exchange.unwrap();
    assert_eq!(x.response.http_response.as_ref().unwrap().status, 403);
    assert_eq!(&x.body[..], net::PAGE);
    assert!(!x.body_truncated);
    // RESPMOD, and a body decided on its preview alone.
    let mut r = ScanRequest::new(
        ScanMode::Respmod,
        "a.bin",
        BodySource::Bytes(Bytes::from_static(b"SKIPPED after the preview BLOCK")),
    );
    r.client_ip = Some("10.1.2.3".parse().unwrap());
    assert_eq!(client.scan(r).await.unwrap().verdict.label(), "allowed");
    let stats = srv.stop().await;
    // OPTIONS and three scans on one connection.
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn without_allow_204_the_echo_is_allowed_unchanged() {
    let srv = blocker(ServerConfig::default()).await;
    let cfg = ClientConfig::default().allow_204(false);
    let client = Client::new(&[srv.uri("icap", "blocker")], cfg).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    let out = client.scan(scan(big)).await.unwrap();
    let x = out.exchange.as_ref().unwrap();
    assert_eq!(x.response.status, 200);
    assert_eq!(x.body_digest, x.sent_digest);
    // Kept: the first 64 KiB, and a word that the rest is only in the digest.
    assert_eq!(&x.body[..], &big[..64 * 1024]);
    assert!(x.body_truncated);
    assert_eq!(
        out.verdict,
        Verdict::Allowed {
            reason: "200 with the message unchanged".into()
        }
    );
    srv.stop().await;
}

#[tokio::test]
async fn keep_body_bounds_the_kept_body_and_says_when_it_cut() {
    let srv = blocker(ServerConfig::default()).await;
    for (keep, truncated) in [(net::PAGE.len() - 1, true), (net::PAGE.len(), false)] {
        let cfg = ClientConfig::default().keep_body(keep);
        let client = Client::new(&[srv.uri("icap", "blocker")], cfg).unwrap();
        let out = client.scan(scan(b"BLOCK this")).await.unwrap();
        let x = out.exchange.unwrap();
        assert_eq!(&x.body[..], &net::PAGE[..keep]);
        assert_eq!(x.body_truncated, truncated, "keep_body {keep}");
        assert_eq!(x.body_digest.unwrap().0, net::PAGE.len() as u64);
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_body_shorter_than_announced_is_not_the_servers_fault() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::new(&[srv.uri("icap", "blocker")], ClientConfig::default()).unwrap();
    let short = BodySource::reader(&b"only ten.."[..], Some(100));
    let e = client
        .scan(ScanRequest::new(ScanMode::Reqmod, "short.bin", short))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Body(io) if io.to_string().contains("body ended after 10 of the 100 bytes announced")),
        "{e}"
    );
    let h = &client.health()[0];
    assert!(h.up && h.total_failures == 0, "{h:?}");
    srv.stop().await;
}

#[tokio::test]
async fn duration_max_means_no_limit_not_a_panic() {
    let srv = blocker(ServerConfig::default()).await;
    let cfg = ClientConfig::default()
        .connect_timeout(Duration::MAX)
        .tls_timeout(Duration::MAX)
        .transaction_timeout(Duration::MAX)
        .deadline(Duration::MAX)
        .backoff(Duration::MAX)
        .revival_delay(Duration::MAX)
        .failure_window(Duration::MAX)
        .failure_limit(1)
        .retries(usize::MAX);
    let down = format!("icap://127.0.0.1:{}/blocker", dead_port().await);
    let client = Client::new(&[down, srv.uri("icap", "blocker")], cfg).unwrap();
    let out = client.scan(scan(b"BLOCK")).await.unwrap();
    assert!(out.verdict.is_blocked(), "{}", out.verdict);
    let h = client.health();
    assert!(!h[0].up && h[1].up, "{h:?}");
    assert!(h[0].next_probe.is_some());
    srv.stop().await;
}

#[tokio::test]
async fn transfer_ignore_skips_the_file() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::new(&[srv.uri("icap", "blocker")], ClientConfig::default()).unwrap();
    let r = ScanRequest::new(
        ScanMode::Reqmod,
        "movie.ignored",
        BodySource::Bytes(Bytes::from_static(b"BLOCK")),
    );
    let out = client.scan(r).await.unwrap();
    assert!(out.exchange.is_none());
    assert!(
        out.verdict.reason().contains("Transfer-Ignore"),
        "{}",
        out.verdict
    );
    srv.stop().await;
}

#[tokio::test]
async fn large_file_streams_from_disk() {
    let srv = blocker(ServerConfig::default()).await;
    let dir = std::env::temp_dir().join(format!("icap-client-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.bin");
    {
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..24 {
            f.write_all(&block).await.unwrap();
        }
        f.write_all(b"BLOCK at the very end").await.unwrap();
    }
    let client = Client::new(&[srv.uri("icap", "blocker")], ClientConfig::default()).unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen2 = seen.clone();
    let mut r = ScanRequest::new(ScanMode::Respmod, "big.bin", BodySource::File(path.clone()));
    r.progress = Some(std::sync::Arc::new(move |n| {
        seen2.store(n, Ordering::Relaxed)
    }));
    let out = client.scan(r).await.unwrap();
    assert!(out.verdict.is_blocked(), "{}", out.verdict);
    assert_eq!(seen.load(Ordering::Relaxed), 24 * (1 << 20) + 21);
    std::fs::remove_dir_all(&dir).unwrap();
    srv.stop().await;
}

fn mtls_server() -> Server {
    let tls = ServerTls::from_pem_files(pki("server-chain.pem"), pki("server.key"))
        .unwrap()
        .require_client_certs(pki("ca.pem"))
        .unwrap()
        .build()
        .unwrap();
    Server::new(ServerConfig::default())
        .route_blocker("blocker", Blocker::default())
        .tls(tls)
}

fn tls_client(uri: &str, tls: ClientTls) -> Client {
    Client::new(&[uri], ClientConfig::default().tls(tls).retries(0)).unwrap()
}

fn tls_failure(e: ClientError) -> TlsFailure {
    match e {
        ClientError::Tls { failure, .. } => failure,
        other => panic!("expected a TLS error, got {other}"),
    }
}

#[tokio::test]
async fn mtls_right_missing_and_wrong_client_certificates() {
    let srv = start(mtls_server()).await;
    let uri = format!("icaps://localhost:{}/blocker", srv.addr.port());
    let good = ClientTls::default()
        .with_ca_file(pki("ca.pem"))
        .unwrap()
        .with_client_cert_files(pki("client.pem"), pki("client.key"))
        .unwrap();
    let c = tls_client(&uri, good);
    let report = c.test_connection().await;
    assert!(report[0].result.is_ok(), "{:?}", report[0].result);
    assert_eq!(report[0].tls_version.as_deref(), Some("TLSv1_3"));
    assert_eq!(
        c.scan(scan(b"BLOCK me")).await.unwrap().verdict.label(),
        "blocked"
    );

    let missing = ClientTls::default().with_ca_file(pki("ca.pem")).unwrap();
    let e = tls_client(&uri, missing).options().await.unwrap_err();
    let ClientError::AllServersFailed(mut v) = e else {
        panic!("{e}")
    };
    assert_eq!(tls_failure(v.remove(0)), TlsFailure::CertificateRequired);

    let wrong = ClientTls::default()
        .with_ca_file(pki("ca.pem"))
        .unwrap()
        .with_client_cert_files(pki("wrong-client.pem"), pki("wrong-client.key"))
        .unwrap();
    let ClientError::AllServersFailed(mut v) = tls_client(&uri, wrong).options().await.unwrap_err()
    else {
        panic!()
    };
    assert_eq!(
        tls_failure(v.remove(0)),
        TlsFailure::ClientCertificateRejected
    );

    let untrusting = ClientTls::default()
        .with_ca_file(pki("wrong-ca.pem"))
        .unwrap();
    let ClientError::AllServersFailed(mut v) =
        tls_client(&uri, untrusting).options().await.unwrap_err()
    else {
        panic!()
    };
    assert_eq!(tls_failure(v.remove(0)), TlsFailure::UntrustedServer);
    drop(srv);
}

#[tokio::test]
async fn pinned_self_signed_and_expired_certificates() {
    let tls = ServerTls::from_pem_files(pki("selfsigned.pem"), pki("selfsigned.key"))
        .unwrap()
        .build()
        .unwrap();
    let srv = start(
        Server::new(ServerConfig::default())
            .route_blocker("blocker", Blocker::default())
            .tls(tls),
    )
    .await;
    let uri = format!("icaps://127.0.0.1:{}/blocker", srv.addr.port());
    let pinned = ClientTls::default()
        .with_pinned_cert_file(pki("selfsigned.pem"))
        .unwrap();
    assert_eq!(
        tls_client(&uri, pinned)
            .scan(scan(b"fine"))
            .await
            .unwrap()
            .verdict
            .label(),
        "allowed"
    );
    let other_pin = ClientTls::default()
        .with_pinned_cert_file(pki("server.pem"))
        .unwrap();
    let ClientError::AllServersFailed(mut v) =
        tls_client(&uri, other_pin).options().await.unwrap_err()
    else {
        panic!()
    };
    assert_eq!(tls_failure(v.remove(0)), TlsFailure::PinMismatch);
    drop(srv);

    let tls = ServerTls::from_pem_files(pki("expired.pem"), pki("expired.key"))
        .unwrap()
        .build()
        .unwrap();
    let srv = start(
        Server::new(ServerConfig::default())
            .route_blocker("blocker", Blocker::default())
            .tls(tls),
    )
    .await;
    let uri = format!("icaps://localhost:{}/blocker", srv.addr.port());
    let ca = ClientTls::default().with_ca_file(pki("ca.pem")).unwrap();
    let ClientError::AllServersFailed(mut v) = tls_client(&uri, ca).options().await.unwrap_err()
    else {
        panic!()
    };
    assert_eq!(tls_failure(v.remove(0)), TlsFailure::Expired);
}

/// A port with nothing listening.
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn failover_when_the_first_server_is_down_refuses_or_resets() {
    let good = blocker(ServerConfig::default()).await;
    let good_uri = good.uri("icap", "blocker");

    // Down: nothing listens.
    let down = format!("icap://127.0.0.1:{}/blocker", dead_port().await);
    let c = Client::new(&[down.clone(), good_uri.clone()], ClientConfig::default()).unwrap();
    let out = c.scan(scan(b"hello")).await.unwrap();
    assert_eq!(out.exchange.unwrap().server.to_string(), good_uri);

    // Overloaded: every connection gets 503.
    let busy = start(
        Server::new(
            ServerConfig::default()
                .max_connections(0)
                .queue_timeout(Duration::ZERO),
        )
        .route_blocker("blocker", Blocker::default()),
    )
    .await;
    let c = Client::new(
        &[busy.uri("icap", "blocker"), good_uri.clone()],
        ClientConfig::default().preview(icap::client::PreviewPolicy::Off),
    )
    .unwrap();
    let out = c.scan(scan(b"hello")).await.unwrap();
    assert_eq!(out.exchange.unwrap().server.to_string(), good_uri);

    // Resets in the middle of the body: reads a little, then closes with unread data (RST).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rst_port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut b = [0u8; 100];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut b).await;
            drop(s);
        }
    });
    let c = Client::new(
        &[
            format!("icap://127.0.0.1:{rst_port}/blocker"),
            good_uri.clone(),
        ],
        ClientConfig::default().preview(icap::client::PreviewPolicy::Off),
    )
    .unwrap();
    let body: &'static [u8] = Box::leak(vec![b'z'; 4 << 20].into_boxed_slice());
    let out = c.scan(scan(body)).await.unwrap();
    assert_eq!(out.exchange.unwrap().server.to_string(), good_uri);

    // Not retried: a 404 is the request's fault, not the server's.
    let c = Client::new(
        &[good.uri("icap", "nosuch")],
        ClientConfig::default().preview(icap::client::PreviewPolicy::Off),
    )
    .unwrap();
    match c.scan(scan(b"x")).await.unwrap_err() {
        ClientError::Status { status: 404, .. } => {}
        e => panic!("{e}"),
    }
    good.stop().await;
}

#[tokio::test]
async fn errors_fail_closed_unless_fail_open_is_asked_for() {
    let down = format!("icap://127.0.0.1:{}/blocker", dead_port().await);
    let closed = Client::new(
        &[down.as_str()],
        ClientConfig::default().connect_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    assert!(closed.scan(scan(b"x")).await.is_err());
    let open = Client::new(&[down.as_str()], ClientConfig::default().fail_open(true)).unwrap();
    let out = open.scan(scan(b"x")).await.unwrap();
    assert_eq!(out.verdict.label(), "allowed");
    assert!(
        out.verdict.reason().starts_with("fail-open after error:"),
        "{}",
        out.verdict
    );
    assert!(out.error.is_some());
}

#[tokio::test]
async fn servers_failing_the_connectivity_test_are_tried_last() {
    let good = blocker(ServerConfig::default()).await;
    // A "server" that accepts and hangs up at once, counting connections.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let c = Client::new(
        &[
            format!("icap://127.0.0.1:{bad_port}/blocker"),
            good.uri("icap", "blocker"),
        ],
        ClientConfig::default(),
    )
    .unwrap();
    let reports = c.test_connection().await;
    assert!(reports[0].result.is_err() && reports[1].result.is_ok());
    let after_test = hits.load(Ordering::Relaxed);
    for _ in 0..4 {
        let out = c.scan(scan(b"fine")).await.unwrap();
        assert_eq!(
            out.exchange.unwrap().server.to_string(),
            good.uri("icap", "blocker")
        );
    }
    assert_eq!(
        hits.load(Ordering::Relaxed),
        after_test,
        "the failed server was not tried again"
    );
    good.stop().await;
}
