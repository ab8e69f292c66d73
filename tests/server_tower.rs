//! Services as tower services (issue 13): a keyword blocker written with `service_fn`,
//! wrapped in tower's timeout and concurrency-limit layers, served on loopback and driven
//! over a socket: clean bodies get 204 or their echo, the word gets the block page, a slow
//! handler gets the 500 its timeout error becomes, each byte for byte; the limit holds; the
//! owned body can be moved into another task; and a connection the test accepted itself is
//! served through `serve_connection`. c-icap-client (when installed) drives the same
//! layered service as a real ICAP client.
#![cfg(feature = "server")]

mod net;
mod peers_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use icap::server::{IncomingRequest, PeerInfo, Reply, Server, ServerConfig};
use icap::BoxError;
use icap::{Method, ServiceOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const WORD: &[u8] = b"forbidden";

fn options() -> ServiceOptions {
    ServiceOptions::default()
        .with_methods(vec![Method::Reqmod])
        .with_istag("\"words-1\"")
        .with_allow_204(true)
        .with_preview(Some(4))
}

/// The server: the blocker (`X-Delay-Ms` makes it sleep first) behind a 500 ms timeout and
/// at most two calls at once; `busy` counts the calls under way, `most` the most at once.
fn server(busy: Arc<AtomicUsize>, most: Arc<AtomicUsize>) -> Server {
    // The service, as a user writes it.
    let blocker = tower::service_fn(move |mut req: IncomingRequest| {
        let (busy, most) = (busy.clone(), most.clone());
        async move {
            most.fetch_max(busy.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            let delay = req
                .headers
                .get_str("X-Delay-Ms")
                .and_then(|v| v.parse().ok());
            tokio::time::sleep(Duration::from_millis(delay.unwrap_or(0))).await;
            let (mut tail, mut found) = (Vec::new(), false);
            while let Some(piece) = req.body.data().await? {
                tail.extend_from_slice(&piece);
                found |= tail.windows(WORD.len()).any(|w| w == WORD);
                tail.drain(..tail.len().saturating_sub(WORD.len() - 1));
            }
            busy.fetch_sub(1, Ordering::SeqCst);
            if found {
                return Ok(Reply::page(403, "Forbidden", "text/plain", "blocked\n")?);
            }
            Ok::<_, BoxError>(Reply::unmodified())
        }
    });
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(500)))
        .layer(ConcurrencyLimitLayer::new(2))
        .service(blocker);
    Server::new(ServerConfig::default()).route("words", options(), service)
}

const HTTP: &str = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";

/// A REQMOD to /words with `body` in one chunk (none when empty), `extra` ICAP headers.
fn reqmod(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "REQMOD icap://127.0.0.1/words ICAP/1.0\r\nHost: 127.0.0.1\r\n{extra}Encapsulated: req-hdr=0, req-body={}\r\n\r\n{HTTP}",
        HTTP.len()
    )
    .into_bytes();
    if !body.is_empty() {
        v.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        v.extend_from_slice(body);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

/// Sends `wire` on a new connection and reads until the server closes it.
async fn exchange(addr: std::net::SocketAddr, wire: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(wire).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server closes")
        .unwrap();
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn a_service_fn_behind_tower_layers_blocks_passes_and_times_out() {
    let (busy, most) = Default::default();
    let srv = net::start(server(busy, most)).await;
    let close = "Connection: close\r\n";

    // Clean, 204 allowed.
    let got = exchange(
        srv.addr,
        &reqmod(&format!("Allow: 204\r\n{close}"), b"all fine"),
    )
    .await;
    assert_eq!(
        got,
        format!("ICAP/1.0 204 No Content\r\nServer: icap/{VERSION}\r\nISTag: \"words-1\"\r\nConnection: close\r\n\r\n")
    );

    // Clean, no 204: the message comes back whole.
    let got = exchange(srv.addr, &reqmod(close, b"all fine")).await;
    assert_eq!(
        got,
        format!(
            "ICAP/1.0 200 OK\r\nServer: icap/{VERSION}\r\nISTag: \"words-1\"\r\nConnection: close\r\nEncapsulated: req-hdr=0, req-body={}\r\n\r\n{HTTP}8\r\nall fine\r\n0\r\n\r\n",
            HTTP.len()
        )
    );

    // The word, split across two chunks: the block page, with the service's ISTag.
    let mut wire = reqmod(&format!("Allow: 204\r\n{close}"), b"a forb");
    wire.truncate(wire.len() - 5);
    wire.extend_from_slice(b"6\r\nidden!\r\n0\r\n\r\n");
    let got = exchange(srv.addr, &wire).await;
    let page = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n";
    assert_eq!(
        got,
        format!(
            "ICAP/1.0 200 OK\r\nISTag: \"words-1\"\r\nServer: icap/{VERSION}\r\nConnection: close\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n{page}8\r\nblocked\n\r\n0\r\n\r\n",
            page.len()
        )
    );

    // Slower than the timeout layer allows: its error becomes a 500.
    let got = exchange(
        srv.addr,
        &reqmod("Allow: 204\r\nX-Delay-Ms: 2000\r\n", b"fine"),
    )
    .await;
    assert_eq!(
        got,
        format!("ICAP/1.0 500 Server Error\r\nConnection: close\r\nServer: icap/{VERSION}\r\nISTag: \"words-1\"\r\nEncapsulated: null-body=0\r\n\r\n")
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_concurrency_limit_layer_holds_across_connections() {
    let busy = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let srv = net::start(server(busy.clone(), most.clone())).await;
    let wire = reqmod(
        "Allow: 204\r\nConnection: close\r\nX-Delay-Ms: 100\r\n",
        b"ok",
    );
    let addr = srv.addr;
    let answers = futures_join(
        (0..6)
            .map(|_| {
                let wire = wire.clone();
                async move { exchange(addr, &wire).await }
            })
            .collect::<Vec<_>>(),
    )
    .await;
    for a in answers {
        assert!(a.starts_with("ICAP/1.0 204 No Content\r\n"), "{a}");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "two calls at once, never more"
    );
    assert_eq!(busy.load(Ordering::SeqCst), 0);
    srv.stop().await;
}

/// Runs the futures concurrently on the test's runtime.
async fn futures_join<F: std::future::Future<Output = String> + Send + 'static>(
    fs: Vec<F>,
) -> Vec<String> {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The body is owned and `'static`: a service hands it to another task and waits for the
/// verdict; the preview is looked at without asking for more, and 100 Continue goes out only
/// when the other task reads past it.
#[tokio::test]
async fn the_body_moves_to_another_task_and_continue_goes_out_when_it_reads_on() {
    let svc = tower::service_fn(|req: IncomingRequest| async move {
        let (_head, _peer, mut body) = req.into_parts();
        let preview = body.preview().await?.unwrap_or_default();
        if preview.starts_with(b"OK") {
            return Ok(Reply::unmodified());
        }
        let n = tokio::spawn(async move {
            let mut n = 0;
            while let Some(p) = body.data().await? {
                n += p.len();
            }
            Ok::<_, BoxError>(n)
        })
        .await??;
        let page = format!("{n} bytes\n");
        Ok::<_, BoxError>(Reply::page(403, "Forbidden", "text/plain", page)?)
    });
    let srv = net::start(Server::default().route("words", options(), svc)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let head = reqmod("Preview: 4\r\n", b"");
    let head = &head[..head.len() - 5];

    // Decided on the preview: 204 (allowed in answer to a preview), no 100.
    s.write_all(head).await.unwrap();
    s.write_all(b"4\r\nOKAY\r\n0\r\n\r\n").await.unwrap();
    let want =
        format!("ICAP/1.0 204 No Content\r\nServer: icap/{VERSION}\r\nISTag: \"words-1\"\r\n\r\n");
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);

    // Read on in the spawned task: 100 Continue, then the answer counts the whole body.
    s.write_all(head).await.unwrap();
    s.write_all(b"4\r\nabcd\r\n0\r\n\r\n").await.unwrap();
    let mut got = vec![0u8; 25];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ICAP/1.0 100 Continue\r\n\r\n");
    s.write_all(b"6\r\nefghij\r\n0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("ICAP/1.0 200 OK\r\n"), "{got}");
    assert!(got.ends_with("9\r\n10 bytes\n\r\n0\r\n\r\n"), "{got}");
    srv.stop().await;
}

/// A connection accepted by the test (here a TCP socket; a Unix socket or a TLS stream
/// would do as well) is served by `serve_connection`, requests on it kept alive.
#[tokio::test]
async fn serve_connection_serves_a_connection_the_caller_accepted() {
    let (busy, most) = Default::default();
    let server = Arc::new(server(busy, most));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = server.clone();
    let task = tokio::spawn(async move {
        let (io, peer) = listener.accept().await.unwrap();
        srv.serve_connection(io, PeerInfo::new(peer)).await;
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    let want =
        format!("ICAP/1.0 204 No Content\r\nServer: icap/{VERSION}\r\nISTag: \"words-1\"\r\n\r\n");
    for _ in 0..2 {
        s.write_all(&reqmod("Allow: 204\r\n", b"fine"))
            .await
            .unwrap();
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve_connection returns when the client closes")
        .unwrap();
    assert_eq!(server.stats().requests.load(Ordering::Relaxed), 2);
}

/// The body is an `http_body::Body`: http-body-util's `collect` reads it whole, across
/// chunks and 100 Continue.
#[tokio::test]
async fn the_body_is_an_http_body() {
    use http_body_util::BodyExt;
    let svc = tower::service_fn(|req: IncomingRequest| async move {
        let (_, _, body) = req.into_parts();
        let all = body.collect().await?.to_bytes();
        let page = format!("{}\n", String::from_utf8_lossy(&all));
        Ok::<_, BoxError>(Reply::page(403, "Forbidden", "text/plain", page)?)
    });
    let srv = net::start(Server::default().route("words", options(), svc)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let head = reqmod("Preview: 4\r\nConnection: close\r\n", b"");
    s.write_all(&head[..head.len() - 5]).await.unwrap();
    s.write_all(b"4\r\nabcd\r\n0\r\n\r\n").await.unwrap();
    let mut got = vec![0u8; 25];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ICAP/1.0 100 Continue\r\n\r\n");
    s.write_all(b"2\r\nef\r\n3\r\nghi\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert!(got.ends_with("a\r\nabcdefghi\n\r\n0\r\n\r\n"), "{got}");
    srv.stop().await;
}

/// The server reads a body only a little ahead of the service: a service that stops reading
/// stops the server reading, and a client sending 32 MiB is held back by TCP instead of
/// being buffered in the server.
#[tokio::test]
async fn a_service_that_stops_reading_stops_the_server_reading() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let taken = Arc::new(AtomicUsize::new(0));
    let (g, t) = (gate.clone(), taken.clone());
    let svc = tower::service_fn(move |mut req: IncomingRequest| {
        let (gate, taken) = (g.clone(), t.clone());
        async move {
            let first = req.body.data().await?.map_or(0, |b| b.len());
            taken.fetch_add(first, Ordering::SeqCst);
            gate.notified().await;
            while let Some(p) = req.body.data().await? {
                taken.fetch_add(p.len(), Ordering::SeqCst);
            }
            Ok::<_, BoxError>(Reply::unmodified())
        }
    });
    let srv = net::start(Server::default().route("words", options(), svc)).await;
    let body = vec![b'x'; 32 << 20];
    let mut wire = reqmod("Allow: 204\r\n", b"");
    wire.truncate(wire.len() - 5);
    for c in body.chunks(64 * 1024) {
        wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        wire.extend_from_slice(c);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let (mut r, mut w) = TcpStream::connect(srv.addr).await.unwrap().into_split();
    let write = tokio::spawn(async move { w.write_all(&wire).await.map(|_| w) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the server took the whole body");
    let held = taken.load(Ordering::SeqCst);
    assert!(held > 0 && held <= 64 * 1024, "{held} bytes taken");
    gate.notify_one();
    let _w = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the body goes through once the service reads on")
        .unwrap()
        .unwrap();
    let want =
        format!("ICAP/1.0 204 No Content\r\nServer: icap/{VERSION}\r\nISTag: \"words-1\"\r\n\r\n");
    let mut got = vec![0u8; want.len()];
    r.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert_eq!(taken.load(Ordering::SeqCst), body.len());
    srv.stop().await;
}

/// c-icap-client against the layered blocker: OPTIONS (for the preview and Allow: 204), then
/// a clean upload gets 204 and one with the word gets the block page as the new body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cicap_client_drives_the_layered_service() {
    if !peers_support::available(&["c-icap-client"]) {
        return;
    }
    let (busy, most) = Default::default();
    let srv = net::start(server(busy, most)).await;
    let port = srv.addr.port();
    let dir = peers_support::TempDir::new("tower-cc");
    let run = |name: &'static str, content: &'static [u8]| {
        let (file, saved) = (dir.join(name), dir.join(format!("{name}.out")));
        peers_support::write_file(&file, content);
        let mut cmd = std::process::Command::new("c-icap-client");
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-s",
            "words",
            "-v",
        ])
        .args(["-req", "http://origin.example/up", "-f"])
        .arg(&file)
        .arg("-o")
        .arg(&saved);
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let out = peers_support::run_tool(&dir, &mut cmd, Duration::from_secs(30));
            assert!(out.status.success(), "{}", out.stderr);
            (
                format!("{}{}", out.stdout, out.stderr),
                std::fs::read(saved).ok(),
            )
        })
    };
    let (out, _) = run("clean.txt", b"nothing to see here\n").await.unwrap();
    assert!(out.contains("ICAP/1.0 204"), "{out}");
    let (out, saved) = run("bad.txt", b"this is forbidden text\n").await.unwrap();
    assert!(out.contains("ICAP/1.0 200 OK"), "{out}");
    assert!(out.contains("ISTag: \"words-1\""), "{out}");
    assert_eq!(saved.as_deref(), Some(&b"blocked\n"[..]), "{out}");
    srv.stop().await;
}
