//! Our client against real peers: c-icap 0.5.10 (echo, url_check, content_filtering) plain
//! and behind stunnel (TLS and mTLS, TLS 1.3 and 1.2). Each case asserts what came back.
//! Needs `bash .ci/install-peers.sh`; skipped with a message elsewhere, a failure in CI.
#![cfg(feature = "scan")]

mod peers_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use icap::client::{BodySource, Client, ClientConfig, ClientRequest, Exchange, PreviewPolicy};
use icap::client::{ClientError, TlsFailure};
use icap::dlp::{judge, Answer, Profile};
use icap::dlp::{ScanMode, ScanRequest};
use icap::tls::ClientTls;
use icap::{HttpRequestHead, Method};
use peers_support::{available, gen_certs, serial, CIcap, Stunnel, StunnelMode, TempDir};

fn cicap_uri(c: &CIcap, service: &str) -> String {
    format!("icap://127.0.0.1:{}/{service}", c.port)
}

/// A REQMOD of `GET url` with no body.
fn get(url: &'static str) -> ClientRequest {
    let host = url.split('/').nth(2).unwrap_or("x");
    ClientRequest::reqmod(HttpRequestHead::new(
        "GET",
        url,
        [("Host", host)].into_iter().collect(),
    ))
    .allow_204(true)
}

fn verdict(method: Method, x: &Exchange) -> icap::dlp::Verdict {
    judge(
        &Profile::Generic.rules(),
        &Answer {
            method: &method,
            response: &x.response,
            sent_body: x.sent_digest,
            returned_body: x.body_digest,
            body_prefix: &x.body,
            sent_head: None,
        },
    )
}

/// A TCP forwarder that counts connections, to see connection reuse from outside.
async fn counting_proxy(target: u16) -> (u16, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_cicap() {
    if !available(&["c-icap"]) {
        return;
    }
    let _lock = serial();
    let cicap = CIcap::start("");
    let cfg = || ClientConfig::default().retries(0);

    // OPTIONS parsed into the typed view.
    let echo = Client::new(&[cicap_uri(&cicap, "echo")], cfg()).unwrap();
    let o = echo.options().await.unwrap();
    assert_eq!(o.preview, Some(1024));
    assert!(o.allow_204);
    assert!(o.methods.contains(&Method::Respmod) && o.methods.contains(&Method::Reqmod));
    assert!(o.istag.starts_with('"'), "{}", o.istag);
    assert_eq!(o.transfer_preview, vec!["*".to_string()]);

    // url_check: allowed URL -> 204; blocked URL -> a 403 block page, a Blocked verdict.
    let url = Client::new(&[cicap_uri(&cicap, "url_check")], cfg()).unwrap();
    let x = url
        .exchange(&get("http://allowed.example/index.html"))
        .await
        .unwrap();
    assert_eq!(x.response.status, 204);
    assert_eq!(verdict(Method::Reqmod, &x).label(), "allowed");
    let x = url
        .exchange(&get("http://blocked.example/index.html"))
        .await
        .unwrap();
    assert_eq!(x.response.status, 200);
    assert_eq!(x.response.http_response.as_ref().unwrap().status, 403);
    assert!(
        x.body.ends_with(b"\0\0"),
        "c-icap block pages end in two NULs"
    );
    let v = verdict(Method::Reqmod, &x);
    assert!(v.is_blocked(), "{v}");

    // Without Allow: 204, an allowed URL comes back whole (200), unchanged.
    let no204 = Client::new(&[cicap_uri(&cicap, "url_check")], cfg().allow_204(false)).unwrap();
    let req = ClientRequest::reqmod(HttpRequestHead::new(
        "GET",
        "http://allowed.example/a",
        [("Host", "allowed.example")].into_iter().collect(),
    ));
    let x = no204.exchange(&req).await.unwrap();
    assert_eq!(x.response.status, 200);
    assert_eq!(
        x.response.http_request.as_ref().unwrap().line(),
        "GET http://allowed.example/a HTTP/1.1"
    );

    // content_filtering rewrites a word: the new body is asserted, the verdict is Modified.
    let cf = Client::new(&[cicap_uri(&cicap, "content_filtering")], cfg()).unwrap();
    let body = Bytes::from_static(b"first line\nthis has a badword in it\nlast line\n");
    let r = ScanRequest::new(
        ScanMode::Respmod,
        "notes.txt",
        BodySource::Bytes(body.clone()),
    );
    let mut r = r;
    r.content_type = "text/plain".into();
    let out = cf.scan(r).await.unwrap();
    let x = out.exchange.as_ref().unwrap();
    assert_eq!(
        &x.body[..],
        b"first line\nthis has a XXXXXXX in it\nlast line\n"
    );
    assert_eq!(out.verdict.label(), "modified", "{}", out.verdict);

    // Previews smaller, equal to and larger than the body (server preview 1024).
    for size in [100usize, 1024, 3000] {
        let data: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let mut r = ScanRequest::new(
            ScanMode::Respmod,
            "plain.txt",
            BodySource::Bytes(Bytes::from(data.clone())),
        );
        r.content_type = "text/plain".into();
        let out = cf.scan(r).await.unwrap();
        let x = out.exchange.as_ref().unwrap();
        assert_eq!(
            out.verdict.label(),
            "allowed",
            "size {size}: {}",
            out.verdict
        );
        if x.response.status == 200 {
            assert_eq!(
                &x.body[..],
                &data[..],
                "size {size}: the copy is the original"
            );
        }
    }

    // 404 for an unknown service, not retried.
    let none = Client::new(&[cicap_uri(&cicap, "nosuch")], cfg()).unwrap();
    match none
        .exchange(&get("http://allowed.example/"))
        .await
        .unwrap_err()
    {
        ClientError::Status { status: 404, .. } => {}
        e => panic!("{e}"),
    }

    // Keep-alive: many requests, one connection (counted by a forwarder in between).
    let (port, count) = counting_proxy(cicap.port).await;
    let ka = Client::new(&[format!("icap://127.0.0.1:{port}/url_check")], cfg()).unwrap();
    for _ in 0..25 {
        let x = ka.exchange(&get("http://allowed.example/k")).await.unwrap();
        assert_eq!(x.response.status, 204);
    }
    assert_eq!(
        count.load(Ordering::Relaxed),
        1,
        "25 requests over one kept-alive connection"
    );
}

fn tls_cfg(tls: ClientTls) -> ClientConfig {
    ClientConfig::default()
        .tls(tls)
        .retries(0)
        .preview(PreviewPolicy::FromOptions)
}

fn tls_failure(e: ClientError) -> TlsFailure {
    match e {
        ClientError::Tls { failure, .. } => failure,
        ClientError::AllServersFailed(mut v) if v.len() == 1 => tls_failure(v.remove(0)),
        other => panic!("expected a TLS error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_through_stunnel_to_cicap() {
    if !available(&["c-icap", "stunnel4", "openssl"]) {
        return;
    }
    let _lock = serial();
    let pki = TempDir::new("client-tls-pki");
    gen_certs(pki.path());
    let p = |n: &str| pki.join(n);
    let cicap = CIcap::start("");
    let plain_tls = Stunnel::start(StunnelMode::ServerAuth, cicap.port, pki.path(), "");
    let mtls = Stunnel::start(StunnelMode::MutualTls, cicap.port, pki.path(), "");
    let mtls12 = Stunnel::start(
        StunnelMode::MutualTls,
        cicap.port,
        pki.path(),
        "sslVersionMax = TLSv1.2",
    );
    let uri = |port: u16| format!("icaps://localhost:{port}/url_check");
    let ca = || ClientTls::default().with_ca_file(p("ca.pem")).unwrap();
    let with_cert = |c: &str, k: &str| ca().with_client_cert_files(p(c), p(k)).unwrap();

    // TLS, server authentication: a block page through the tunnel.
    let c = Client::new(&[uri(plain_tls.port)], tls_cfg(ca())).unwrap();
    let x = c.exchange(&get("http://blocked.example/")).await.unwrap();
    assert_eq!(x.response.http_response.as_ref().unwrap().status, 403);
    assert_eq!(x.tls_version.as_deref(), Some("TLSv1_3"));

    // Pinning the server's certificate works; an untrusted CA is refused.
    let pinned = ClientTls::default()
        .with_pinned_cert_file(p("server.pem"))
        .unwrap();
    let c = Client::new(&[uri(plain_tls.port)], tls_cfg(pinned)).unwrap();
    assert_eq!(c.options().await.unwrap().preview, Some(0));
    let untrusted = ClientTls::default()
        .with_ca_file(p("wrong-ca.pem"))
        .unwrap();
    let e = Client::new(&[uri(plain_tls.port)], tls_cfg(untrusted))
        .unwrap()
        .options()
        .await
        .unwrap_err();
    assert_eq!(tls_failure(e), TlsFailure::UntrustedServer);
    let other_pin = ClientTls::default()
        .with_pinned_cert_file(p("selfsigned.pem"))
        .unwrap();
    let e = Client::new(&[uri(plain_tls.port)], tls_cfg(other_pin))
        .unwrap()
        .options()
        .await
        .unwrap_err();
    assert_eq!(tls_failure(e), TlsFailure::PinMismatch);

    // mTLS: the right client certificate, none, and one from another CA each give their own
    // result, over TLS 1.3 and TLS 1.2.
    for (st, version) in [(&mtls, "TLSv1_3"), (&mtls12, "TLSv1_2")] {
        let good = Client::new(
            &[uri(st.port)],
            tls_cfg(with_cert("client.pem", "client.key")),
        )
        .unwrap();
        let reports = good.test_connection().await;
        assert!(
            reports[0].result.is_ok(),
            "{version}: {:?}",
            reports[0].result
        );
        assert_eq!(reports[0].tls_version.as_deref(), Some(version));
        let x = good
            .exchange(&get("http://allowed.example/"))
            .await
            .unwrap();
        assert_eq!(x.response.status, 204);

        let missing = Client::new(&[uri(st.port)], tls_cfg(ca())).unwrap();
        let e = missing.options().await.unwrap_err();
        assert_eq!(tls_failure(e), TlsFailure::CertificateRequired, "{version}");

        let wrong = Client::new(
            &[uri(st.port)],
            tls_cfg(with_cert("wrong-client.pem", "wrong-client.key")),
        )
        .unwrap();
        let e = wrong.options().await.unwrap_err();
        assert_eq!(
            tls_failure(e),
            TlsFailure::ClientCertificateRejected,
            "{version}"
        );
    }
}
