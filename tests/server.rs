//! The async server on loopback, driven by raw bytes: routing, OPTIONS, 204 rules and echo,
//! preview and 100 Continue, errors, keep-alive, limits, timeouts and shutdown.
#![cfg(feature = "server")]

mod net;

use std::time::Duration;

use icap::server::{IncomingRequest, Reply, Server, ServerConfig};
use icap::BoxError;
use icap::{Method, Response, ResponseDecoder, ResponseEvent, ServiceOptions};
use net::{Running, PAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(cfg: ServerConfig) -> Running {
    net::blocker(cfg).await
}

/// Reads whole responses from `s` until `n` have arrived (or EOF); returns them with bodies.
async fn read_responses(s: &mut TcpStream, n: usize) -> (Vec<(Response, Vec<u8>)>, bool) {
    let mut dec = ResponseDecoder::default();
    let mut out: Vec<(Response, Vec<u8>)> = Vec::new();
    let mut eof = false;
    loop {
        while let Some(ev) = dec.decode().unwrap() {
            match ev {
                ResponseEvent::Head(r) => out.push((r, Vec::new())),
                ResponseEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(&d),
                _ => {}
            }
        }
        if out.len() >= n && dec.is_idle() {
            break;
        }
        let mut buf = [0u8; 65536];
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if k == 0 {
            eof = true;
            break;
        }
        dec.feed(&buf[..k]);
    }
    (out, eof)
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn reqmod(extra: &str, body: Option<&[u8]>) -> Vec<u8> {
    let http = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";
    let enc = match body {
        Some(_) => format!("req-hdr=0, req-body={}", http.len()),
        None => format!("req-hdr=0, null-body={}", http.len()),
    };
    let mut v = format!("REQMOD icap://127.0.0.1/blocker ICAP/1.0\r\nHost: 127.0.0.1\r\n{extra}Encapsulated: {enc}\r\n\r\n{http}").into_bytes();
    if let Some(b) = body {
        if !b.is_empty() {
            v.extend_from_slice(format!("{:x}\r\n", b.len()).as_bytes());
            v.extend_from_slice(b);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
    }
    v
}

#[tokio::test]
async fn options_answered_from_declared_options() {
    let srv = start(ServerConfig::default()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"OPTIONS icap://127.0.0.1/blocker ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    let r = &res[0].0;
    assert_eq!(r.status, 200);
    let o = ServiceOptions::from_response(r).unwrap();
    assert_eq!(o.methods, vec![Method::Reqmod, Method::Respmod]);
    assert_eq!(o.preview, Some(8));
    assert_eq!(o.istag, "\"blk-1\"");
    assert!(o.allow_204);
    assert_eq!(r.headers.get("Encapsulated"), Some(&b"null-body=0"[..]));
    srv.stop().await;
}

#[tokio::test]
async fn verdicts_204_echo_and_block_on_one_connection() {
    let srv = start(ServerConfig::default()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // Pipelined: clean with Allow 204, clean without (echo), blocked.
    let mut wire = reqmod("Allow: 204\r\n", Some(b"hello"));
    wire.extend(reqmod("", Some(b"hello world")));
    wire.extend(reqmod("Allow: 204\r\n", Some(b"xx BLOCK xx")));
    s.write_all(&wire).await.unwrap();
    let (res, eof) = read_responses(&mut s, 3).await;
    assert!(!eof);
    assert_eq!(
        res.iter().map(|r| r.0.status).collect::<Vec<_>>(),
        vec![204, 200, 200]
    );
    assert_eq!(res[0].0.headers.get("ISTag"), Some(&b"\"blk-1\""[..]));
    // The echo carries the original request and body.
    let echo = &res[1];
    assert_eq!(
        echo.0.http_request.as_ref().unwrap().line(),
        "POST http://origin.example/up HTTP/1.1"
    );
    assert_eq!(echo.1, b"hello world");
    // The block page.
    let block = &res[2];
    assert_eq!(block.0.http_response.as_ref().unwrap().status, 403);
    assert_eq!(block.1, PAGE);
    assert_eq!(
        block.0.headers.get("X-Blocked-Reason"),
        Some(&b"keyword BLOCK"[..])
    );
    let stats = srv.stop().await;
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn preview_continue_and_ieof() {
    let srv = start(ServerConfig::default()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // Preview 8 of a 20-byte body: the server asks for the rest.
    let head = reqmod("Preview: 8\r\n", Some(b""));
    let head = &head[..head.len() - 5]; // drop the "0\r\n\r\n"
    s.write_all(head).await.unwrap();
    s.write_all(b"8\r\nabcdefgh\r\n0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ICAP/1.0 100 Continue\r\n\r\n");
    s.write_all(b"c\r\nij BLOCK xyz\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    assert_eq!(res[0].0.status, 200);
    assert_eq!(res[0].1, PAGE);

    // The whole body inside the preview (ieof): no 100, a 204 at once, even without Allow 204.
    s.write_all(head).await.unwrap();
    s.write_all(b"3\r\nabc\r\n0; ieof\r\n\r\n").await.unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    assert_eq!(res[0].0.status, 204);

    // Decided on the preview alone: 204 without Allow 204 and without reading the rest.
    s.write_all(head).await.unwrap();
    s.write_all(b"8\r\nSKIPSKIP\r\n0\r\n\r\n").await.unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    assert_eq!(res[0].0.status, 204);
    // And the connection still works.
    s.write_all(&reqmod("Allow: 204\r\n", None)).await.unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    assert_eq!(res[0].0.status, 204);
    srv.stop().await;
}

#[tokio::test]
async fn errors_and_closing() {
    let srv = start(ServerConfig::default()).await;
    for (wire, status) in [
        (&b"REQMOD icap://127.0.0.1/nosuch ICAP/1.0\r\nHost: x\r\nEncapsulated: null-body=0\r\n\r\n"[..], 404),
        (b"FOO icap://127.0.0.1/blocker ICAP/1.0\r\nHost: x\r\n\r\n", 501),
        (b"OPTIONS icap://127.0.0.1/blocker ICAP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"REQMOD icap://127.0.0.1/blocker ICAP/1.0\r\nHost: x\r\nEncapsulated: req-hdr=0; null-body=5\r\n\r\n", 400),
        (b"garbage\r\n\r\n", 400),
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(wire).await.unwrap();
        let (res, _) = read_responses(&mut s, 1).await;
        assert_eq!(res[0].0.status, status, "{}", String::from_utf8_lossy(wire));
        assert!(res[0].0.headers.has_token("Connection", "close"));
        assert!(closed(&mut s).await, "closed after {status}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn stalled_client_gets_408_and_others_are_served() {
    let cfg = ServerConfig::default()
        .head_timeout(Duration::from_millis(300))
        .read_timeout(Duration::from_millis(300));
    let srv = start(cfg).await;
    // One byte, then nothing: the head never completes.
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"R").await.unwrap();
    // Meanwhile another client is served.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&reqmod("Allow: 204\r\n", Some(b"ok")))
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await.0[0].0.status, 204);
    let (res, _) = read_responses(&mut slow, 1).await;
    assert_eq!(res[0].0.status, 408);
    assert!(closed(&mut slow).await);
    // A body that stalls half way also gets 408.
    let mut half = TcpStream::connect(srv.addr).await.unwrap();
    let w = reqmod("Allow: 204\r\n", Some(b"0123456789"));
    half.write_all(&w[..w.len() - 12]).await.unwrap();
    let (res, _) = read_responses(&mut half, 1).await;
    assert_eq!(res[0].0.status, 408);
    srv.stop().await;
}

/// When full, the connection idle longest (a kept-alive one waiting for its next request,
/// here with no grace) is closed to make room; a connection in the middle of a head keeping
/// up with the minimum rate is not, so with only such connections a newcomer gets 503 (here
/// at once: no wait in the backlog).
#[tokio::test]
async fn connection_limit_closes_idle_connections_first_then_answers_503() {
    let cfg = ServerConfig::default()
        .max_connections(1)
        .eviction_grace(Duration::ZERO)
        .queue_timeout(Duration::ZERO);
    let srv = start(cfg).await;
    let mut first = TcpStream::connect(srv.addr).await.unwrap();
    first
        .write_all(&reqmod("Allow: 204\r\n", None))
        .await
        .unwrap();
    assert_eq!(read_responses(&mut first, 1).await.0[0].0.status, 204);
    // `first` is idle now: the second connection takes its place.
    let mut second = TcpStream::connect(srv.addr).await.unwrap();
    second
        .write_all(&reqmod("Allow: 204\r\n", None))
        .await
        .unwrap();
    assert_eq!(read_responses(&mut second, 1).await.0[0].0.status, 204);
    assert!(closed(&mut first).await, "the idle connection was closed");
    // `second` is in the middle of a head: a third connection is refused.
    second.write_all(b"REQMOD icap://").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(srv.addr).await.unwrap();
    let (res, _) = read_responses(&mut third, 1).await;
    assert_eq!(res[0].0.status, 503);
    assert!(res[0].0.headers.has_token("Connection", "close"));
    drop(third);
    drop(second);
    let stats = srv.stop().await;
    assert_eq!(stats.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.evicted.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn large_echo_spools_to_disk_and_streams_back() {
    let dir = std::env::temp_dir().join(format!("icap-spool-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let srv = start(
        ServerConfig::default()
            .spool_memory(64 * 1024)
            .spool_dir(dir.clone()),
    )
    .await;
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let wire = reqmod("", Some(&body));
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&wire).await.unwrap();
    };
    let mut got = Vec::new();
    let read = async {
        let mut dec = ResponseDecoder::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0);
            dec.feed(&buf[..n]);
            let mut end = false;
            while let Some(ev) = dec.decode().unwrap() {
                match ev {
                    ResponseEvent::Head(h) => assert_eq!(h.status, 200),
                    ResponseEvent::Data(d) => got.extend_from_slice(&d),
                    ResponseEvent::End(_) => end = true,
                    _ => {}
                }
            }
            if end {
                break;
            }
        }
    };
    tokio::join!(write, read);
    assert_eq!(got.len(), body.len());
    assert!(got == body);
    // The spill file is gone once the answer is out.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    srv.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn shutdown_lets_the_transaction_in_flight_finish() {
    let srv = start(ServerConfig::default()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let w = reqmod("Allow: 204\r\n", Some(b"abcdef"));
    // Half a request, then shutdown, then the rest.
    s.write_all(&w[..w.len() - 8]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut srv = srv;
    let addr = srv.addr;
    srv.signal_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
    assert!(!srv.finished(), "waits for the transaction in flight");
    s.write_all(&w[w.len() - 8..]).await.unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    assert_eq!(res[0].0.status, 204);
    // Idle now: the server closes it and finishes.
    assert!(closed(&mut s).await);
    srv.join().await;
}

/// Echoes while scanning: starts the 200 at once and forwards each piece after looking at
/// it; "BLOCK" in a piece stops the echo.
fn streamer() -> (ServiceOptions, impl Svc) {
    let options = ServiceOptions::default()
        .with_methods(vec![Method::Respmod])
        .with_istag("\"stream-1\"")
        .with_preview(Some(1024));
    let svc = tower::service_fn(|mut req: IncomingRequest| async move {
        if req.body.start_echo(4).await.is_err() {
            return Ok(Reply::unmodified());
        }
        while let Some(piece) = req.body.data().await? {
            if piece.windows(5).any(|w| w == b"BLOCK") {
                return Ok(Reply::page(403, "Forbidden", "text/plain", "no")?);
            }
        }
        Ok::<_, BoxError>(Reply::unmodified())
    });
    (options, svc)
}

/// What the test services are.
trait Svc:
    tower::Service<IncomingRequest, Response = Reply, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}
impl<S> Svc for S where
    S: tower::Service<IncomingRequest, Response = Reply, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

fn respmod_head(len: usize) -> Vec<u8> {
    let http = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
    format!(
        "RESPMOD icap://127.0.0.1/stream ICAP/1.0\r\nHost: 127.0.0.1\r\nPreview: 1024\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n{http}",
        http.len()
    )
    .into_bytes()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// Like squid: preview, then at most 64 KiB more until the answer starts.
async fn squid_like(s: &mut TcpStream, body: &[u8]) -> (Response, Vec<u8>, bool) {
    let mut wire = respmod_head(body.len());
    wire.extend(chunk(&body[..1024]));
    wire.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&wire).await.unwrap();
    let mut dec = ResponseDecoder::default();
    let mut buf = vec![0u8; 65536];
    let mut head = None;
    let mut got = Vec::new();
    let mut sent = 1024;
    let mut ended = false;
    loop {
        while let Some(ev) = dec.decode().unwrap() {
            match ev {
                ResponseEvent::Head(r) if r.status == 100 => {
                    // Send up to 64 KiB past the preview, no more until a final head.
                    let upto = (sent + 64 * 1024).min(body.len());
                    s.write_all(&chunk(&body[sent..upto])).await.unwrap();
                    sent = upto;
                    if sent == body.len() {
                        s.write_all(b"0\r\n\r\n").await.unwrap();
                    }
                }
                ResponseEvent::Head(r) => head = Some(r),
                ResponseEvent::Data(d) => got.extend_from_slice(&d),
                ResponseEvent::End(_) if head.is_some() => ended = true,
                _ => {}
            }
        }
        if ended {
            break;
        }
        if head.is_some() && sent < body.len() {
            // The answer has begun: squid now lets the rest go.
            let upto = (sent + 16 * 1024).min(body.len());
            s.write_all(&chunk(&body[sent..upto])).await.unwrap();
            sent = upto;
            if sent == body.len() {
                s.write_all(b"0\r\n\r\n").await.unwrap();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the server answers before the whole body (no stall)")
            .unwrap();
        if n == 0 {
            break;
        }
        dec.feed(&buf[..n]);
    }
    (head.expect("a final answer"), got, ended)
}

#[tokio::test]
async fn streaming_echo_answers_before_the_body_ends_and_cuts_on_a_late_finding() {
    let srv = {
        let (o, svc) = streamer();
        net::start(Server::new(ServerConfig::default()).route("stream", o, svc))
    }
    .await;
    // Clean, 1 MiB: the echo is the body, and the connection carries another request.
    let body: Vec<u8> = (0..(1 << 20)).map(|i| b'a' + (i % 23) as u8).collect();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (head, got, ended) = squid_like(&mut s, &body).await;
    assert_eq!(head.status, 200);
    assert!(ended, "a complete echo");
    let first = got.iter().zip(&body).position(|(a, b)| a != b);
    assert!(
        got == body,
        "the echo is the original body: {} vs {}, first diff {first:?}",
        got.len(),
        body.len()
    );
    let (head, got, ended) = squid_like(&mut s, &body[..5000]).await;
    assert_eq!((head.status, ended, got.len()), (200, true, 5000));

    // "BLOCK" 300 KiB in: the answer is cut, never completed, and the piece holding the
    // finding is not passed on.
    let mut bad = body.clone();
    bad[300 * 1024..300 * 1024 + 5].copy_from_slice(b"BLOCK");
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (head, got, ended) = squid_like(&mut s, &bad).await;
    assert_eq!(head.status, 200);
    assert!(!ended, "no last chunk after a late finding");
    assert!(got.len() < 300 * 1024, "{} bytes passed", got.len());
    assert!(!got.windows(5).any(|w| w == b"BLOCK"));
    srv.stop().await;
}

/// Reads a piece first, then asks for the streaming echo: refused, so it answers the usual
/// way (a 200 echo from the spool, as 204 is not allowed).
fn late_echo() -> (ServiceOptions, impl Svc) {
    let options = ServiceOptions::default()
        .with_methods(vec![Method::Respmod])
        .with_istag("\"late-1\"");
    let svc = tower::service_fn(|mut req: IncomingRequest| async move {
        let first = req.body.data().await?;
        assert!(first.is_some());
        let refused = req.body.start_echo(0).await;
        assert!(refused.is_err(), "start_echo after reading must be refused");
        while req.body.data().await?.is_some() {}
        Ok::<_, BoxError>(Reply::unmodified())
    });
    (options, svc)
}

#[tokio::test]
async fn start_echo_after_reading_is_refused_and_the_answer_is_unchanged() {
    let srv = {
        let (o, svc) = late_echo();
        net::start(Server::new(ServerConfig::default()).route("late", o, svc))
    }
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let http = "HTTP/1.1 200 OK\r\n\r\n";
    let mut wire = format!(
        "RESPMOD icap://127.0.0.1/late ICAP/1.0\r\nHost: x\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n{http}",
        http.len()
    )
    .into_bytes();
    wire.extend(chunk(b"hello "));
    wire.extend(chunk(b"world"));
    wire.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&wire).await.unwrap();
    let (res, _) = read_responses(&mut s, 1).await;
    assert_eq!(res[0].0.status, 200);
    assert_eq!(res[0].1, b"hello world");
    srv.stop().await;
}

/// Answers at once from the heads, never reading the body (a URL filter).
fn heads_only() -> (ServiceOptions, impl Svc) {
    let options = ServiceOptions::default()
        .with_methods(vec![Method::Reqmod])
        .with_istag("\"heads-1\"")
        .with_allow_204(true);
    let svc =
        tower::service_fn(|_req: IncomingRequest| async { Ok::<_, BoxError>(Reply::unmodified()) });
    (options, svc)
}

#[tokio::test]
async fn bodiless_requests_answered_without_reading_keep_the_connection() {
    let (o, svc) = heads_only();
    let srv = net::start(Server::default().route("heads", o, svc)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let req = "REQMOD icap://127.0.0.1/heads ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\nEncapsulated: req-hdr=0, null-body=35\r\n\r\nGET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = format!(
        "ICAP/1.0 204 No Content\r\nServer: icap/{}\r\nISTag: \"heads-1\"\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    // One request, its answer, then a second on the same connection.
    for _ in 0..2 {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = vec![0u8; answer.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got), answer);
    }
    // Nothing more (no Connection: close, no close).
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut b))
            .await
            .is_err(),
        "the connection was closed or got more bytes"
    );
    srv.stop().await;
}
