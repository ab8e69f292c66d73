//! The adaptation layer driven directly (no proxy process): an ICAP server of this crate
//! on loopback with services that answer what a test needs (206 with an offset, an ICAP
//! error, `Transfer-Ignore` in OPTIONS), the layer around a `service_fn` origin, and the
//! bodies checked byte for byte.
#![cfg(all(feature = "adapt", feature = "server"))]

mod net;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use icap::adapt::{AdaptBody, AdaptConfig, AdaptLayer, Disposition, Dispositions};
use icap::builder::ErrorStatus;
use icap::client::Client;
use icap::server::{IncomingRequest, Reply, Server};
use icap::BoxError;
use icap::{Method, ServiceOptions};
use tower::{Layer, ServiceExt};

fn options() -> ServiceOptions {
    ServiceOptions::default()
        .with_methods(vec![Method::Reqmod, Method::Respmod])
        .with_istag("\"adapt-1\"")
        .with_preview(Some(1024))
        .with_allow_204(true)
        .with_allow_206(true)
        .with_transfer_preview(["*"])
        .with_transfer_ignore(["iso"])
}

fn body(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 13 % 241) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// GETs `path` through the layer (RESPMOD to `uri`) from an origin answering `n` bytes.
async fn download(cfg: AdaptConfig, path: &str, n: usize) -> (u16, Bytes, Dispositions) {
    let origin = tower::service_fn(
        move |_req: http::Request<AdaptBody<Full<Bytes>>>| async move {
            Ok::<_, Infallible>(http::Response::new(Full::new(body(n))))
        },
    );
    let svc = AdaptLayer::new(cfg).layer(origin);
    let req = http::Request::get(format!("http://origin.test{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let v = *resp.extensions().get::<Dispositions>().unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes, v)
}

fn client(srv: &net::Running) -> Client {
    Client::builder()
        .server(srv.uri("icap", "svc"))
        .build()
        .unwrap()
}

/// 206 with `use-original-body=10` and a new 5-byte start: the user gets the new start and
/// then the original from byte 10, decided on the whole body (200 KB, all held) and on the
/// preview alone (3 MiB, past the held bound: the held start still covers offset 10).
#[tokio::test]
async fn partial_206_with_an_offset_splices_the_original() {
    let svc = tower::service_fn(|mut req: IncomingRequest| async move {
        // Allow: 204 comes only with a body the layer holds whole: read it all then.
        let whole = req.allows_204();
        if req.body.preview().await?.is_some() && whole {
            while req.body.data().await?.is_some() {}
        }
        let res = Reply::partial_content()
            .http_response(req.http_response.clone().unwrap())
            .with_body()
            .build()?;
        Ok::<_, BoxError>(Reply::Partial(res, Bytes::from_static(b"HELLO"), 10))
    });
    let srv = net::start(Server::default().route("svc", options(), svc)).await;
    for n in [200_000usize, 3 << 20] {
        let cfg = AdaptConfig::default().respmod(client(&srv));
        let (status, got, v) = download(cfg, "/file.bin", n).await;
        assert_eq!(status, 200);
        assert_eq!(v.respmod, Some(Disposition::Partial));
        assert_eq!(got.len(), n - 5, "n={n}");
        assert_eq!(&got[..5], b"HELLO");
        assert!(got[5..] == body(n)[10..], "n={n}");
    }
}

/// An ICAP error status: a 503 page (fail-closed), or the original byte for byte
/// (fail-open).
#[tokio::test]
async fn icap_error_status_fails_closed_or_open() {
    let svc = tower::service_fn(|_req: IncomingRequest| async move {
        Ok::<_, BoxError>(Reply::error(ErrorStatus::ServerError))
    });
    let srv = net::start(Server::default().route("svc", options(), svc)).await;
    let (status, page, v) =
        download(AdaptConfig::default().respmod(client(&srv)), "/a.txt", 5000).await;
    assert_eq!(status, 503);
    assert!(std::str::from_utf8(&page)
        .unwrap()
        .contains("Service Unavailable"));
    assert_eq!(v.respmod, Some(Disposition::FailedClosed));

    let cfg = AdaptConfig::default().respmod(client(&srv)).fail_open(true);
    let (status, got, v) = download(cfg, "/a.txt", 5000).await;
    assert_eq!(status, 200);
    assert_eq!(got, body(5000));
    assert_eq!(v.respmod, Some(Disposition::FailedOpen));
}

/// `Transfer-Ignore: iso` in OPTIONS and the bypass rules: those bodies are never sent.
#[tokio::test]
async fn transfer_ignore_and_bypass_rules_skip_icap() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |_req: IncomingRequest| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(Reply::unmodified()) }
    });
    let srv = net::start(Server::default().route("svc", options(), svc)).await;
    let (status, got, v) = download(
        AdaptConfig::default().respmod(client(&srv)),
        "/disk.iso",
        3000,
    )
    .await;
    assert_eq!((status, v.respmod), (200, Some(Disposition::Bypassed)));
    assert_eq!(got, body(3000));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let cfg = AdaptConfig::default()
        .respmod(client(&srv))
        .bypass_larger_than(2000);
    let (_, got, v) = download(cfg, "/big.txt", 3000).await;
    assert_eq!(v.respmod, Some(Disposition::Bypassed));
    assert_eq!(got, body(3000));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let (_, got, v) = download(
        AdaptConfig::default().respmod(client(&srv)),
        "/doc.txt",
        3000,
    )
    .await;
    assert_eq!(v.respmod, Some(Disposition::Unmodified));
    assert_eq!(got, body(3000));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Who the client is goes only where the service asks for it: with `X-Include:
/// X-Client-IP` the REQMOD carries the address and not the user; with no `X-Include`,
/// neither (RFC 3507 4.10.2).
#[tokio::test]
async fn client_headers_follow_the_services_x_include() {
    use icap::adapt::ClientInfo;
    use std::sync::Mutex;

    // (X-Client-IP, X-Authenticated-User) of each request the service saw.
    type Seen = Vec<(Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = {
        let seen = seen.clone();
        tower::service_fn(move |req: IncomingRequest| {
            let seen = seen.clone();
            async move {
                let get = |n: &str| req.head.headers.get_str(n).map(str::to_string);
                seen.lock()
                    .unwrap()
                    .push((get("X-Client-IP"), get("X-Authenticated-User")));
                Ok::<_, BoxError>(Reply::unmodified())
            }
        })
    };
    let with = options().with_include(["X-Client-IP"]);
    let srv = net::start(Server::default().route("with", with, record.clone()).route(
        "without",
        options(),
        record,
    ))
    .await;
    for path in ["with", "without"] {
        let client = Client::builder()
            .server(srv.uri("icap", path))
            .build()
            .unwrap();
        let origin = tower::service_fn(|_req: http::Request<AdaptBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let svc = AdaptLayer::new(AdaptConfig::default().reqmod(client)).layer(origin);
        let mut req = http::Request::post("http://origin.test/up")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let who = ClientInfo::new("192.0.2.9".parse().unwrap()).user("alice");
        req.extensions_mut().insert(who);
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(Some("192.0.2.9".to_string()), None), (None, None)],
        "with X-Include: X-Client-IP, then without X-Include"
    );
    srv.stop().await;
}
