//! The server's reply bodies on the wire (issue 12): a reply whose body does not match its
//! response is answered 500 instead of being written as invalid HTTP; and the spool kept for
//! echoes, which must not be guessable, must leave nothing on disk, and must fail into a
//! proper ICAP answer.
#![cfg(feature = "server")]

mod net;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use icap::server::{IncomingRequest, Reply, ReplyBody, Server, ServerConfig};
use icap::BoxError;
use icap::{Method, ResponseDecoder, ResponseEvent, ServiceOptions};
use net::PAGE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A fresh, empty directory for one test's spool.
fn spool_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("icap-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// A REQMOD to `path` with `body` (chunked in 64 KiB pieces), or `null-body`.
fn reqmod(path: &str, extra: &str, body: Option<&[u8]>) -> Vec<u8> {
    let http = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";
    let enc = match body {
        Some(_) => format!("req-hdr=0, req-body={}", http.len()),
        None => format!("req-hdr=0, null-body={}", http.len()),
    };
    let mut v = format!(
        "REQMOD icap://127.0.0.1/{path} ICAP/1.0\r\nHost: 127.0.0.1\r\n{extra}Encapsulated: {enc}\r\n\r\n{http}"
    )
    .into_bytes();
    if let Some(b) = body {
        for c in b.chunks(64 * 1024) {
            v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            v.extend_from_slice(c);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
    }
    v
}

/// Sends `wire` while reading everything the server sends until it closes (10 s at most).
async fn exchange(addr: std::net::SocketAddr, wire: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let write = async {
        // The server may stop reading once it has answered.
        let _ = w.write_all(wire).await;
    };
    let mut got = Vec::new();
    let read = async {
        tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut got))
            .await
            .expect("the server did not close")
            .unwrap();
    };
    tokio::join!(write, read);
    got
}

/// The 500 the server sends when a reply cannot be sent as given.
fn server_error(istag: &str) -> String {
    format!(
        "ICAP/1.0 500 Server Error\r\nConnection: close\r\nServer: icap/{VERSION}\r\nISTag: \"{istag}\"\r\nEncapsulated: null-body=0\r\n\r\n"
    )
}

/// Answers every request with a block page whose declared body and given body are set up by
/// the path: `good` right, the others wrong in one way each.
async fn pages(req: IncomingRequest) -> Result<Reply, BoxError> {
    let uri = String::from_utf8_lossy(&req.uri).into_owned();
    let page = || Reply::ok().http_error_page(403, "Forbidden", "text/html", PAGE);
    let full = ReplyBody::Full(Bytes::from_static(PAGE));
    let (res, body) = match uri.rsplit('/').next().unwrap() {
        "good" => (page(), full),
        // The page's head, Content-Length and all, without its bytes.
        "empty" => (page(), ReplyBody::Empty),
        // A body for a response built without with_body().
        "undeclared" => (
            Reply::ok().http_response_parts(403, "Forbidden", [("Content-Type", "text/html")]),
            full,
        ),
        // Bytes other than the page the head was built for.
        "length" => (page(), ReplyBody::Full(Bytes::from_static(b"short"))),
        // The same through a reader, which cannot be measured before it is sent.
        "reader" => (
            Reply::ok().http_response_parts(403, "Forbidden", [("A", "b")]),
            ReplyBody::Reader(Box::new(std::io::Cursor::new(PAGE))),
        ),
        other => panic!("{other}"),
    };
    Ok(Reply::Respond(res.build()?, body))
}

fn pages_options() -> ServiceOptions {
    ServiceOptions::default()
        .with_methods(vec![Method::Reqmod])
        .with_istag("\"pages-1\"")
}

#[tokio::test]
async fn replies_whose_body_does_not_match_the_response_get_500_not_invalid_http() {
    let srv = net::start(
        ["good", "empty", "undeclared", "length", "reader"]
            .into_iter()
            .fold(Server::default(), |s, path| {
                s.route(path, pages_options(), tower::service_fn(pages))
            }),
    )
    .await;
    // The control: the page, whole, with the head it was built for.
    let got = exchange(srv.addr, &reqmod("good", "Connection: close\r\n", None)).await;
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        PAGE.len()
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!(
            "ICAP/1.0 200 OK\r\nISTag: \"pages-1\"\r\nServer: icap/{VERSION}\r\nConnection: close\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n{head}{:x}\r\n{}\r\n0\r\n\r\n",
            head.len(),
            PAGE.len(),
            String::from_utf8_lossy(PAGE)
        )
    );
    for path in ["empty", "undeclared", "length", "reader"] {
        // With and without a body to read first.
        for body in [None, Some(&b"hello"[..])] {
            let got = exchange(srv.addr, &reqmod(path, "", body)).await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                server_error("pages-1"),
                "{path}, body {body:?}"
            );
        }
    }
    srv.stop().await;
}

/// Reads the whole body, notes its size and how many entries the spool directory has then
/// (`usize::MAX` when it cannot be read), and lets the message through unmodified (an echo,
/// as the requests do not allow 204).
#[derive(Clone)]
struct Looker {
    dir: PathBuf,
    seen: Arc<AtomicUsize>,
    read: Arc<AtomicUsize>,
}

impl Looker {
    async fn handle(self, mut req: IncomingRequest) -> Result<Reply, BoxError> {
        while let Ok(Some(c)) = req.body.data().await {
            self.read.fetch_add(c.len(), Ordering::SeqCst);
        }
        let n = std::fs::read_dir(&self.dir).map_or(usize::MAX, |d| d.count());
        self.seen.store(n, Ordering::SeqCst);
        Ok(Reply::unmodified())
    }
}

/// Sends a 3 MiB body without Allow: 204 and checks that it comes back whole in a 200.
async fn echo_3mib(addr: std::net::SocketAddr) {
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let got = exchange(addr, &reqmod("look", "Connection: close\r\n", Some(&body))).await;
    let mut dec = ResponseDecoder::default();
    dec.feed(&got);
    let mut echoed = Vec::new();
    let mut status = 0;
    while let Some(ev) = dec.decode().unwrap() {
        match ev {
            ResponseEvent::Head(r) => status = r.status,
            ResponseEvent::Data(d) => echoed.extend_from_slice(&d),
            _ => {}
        }
    }
    assert_eq!(status, 200);
    assert!(dec.is_idle());
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body);
}

/// A server with a [`Looker`] at `/look`; its entry count, and the body bytes it read.
fn looker(dir: &Path, memory: usize) -> (Server, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let read = Arc::new(AtomicUsize::new(0));
    let cfg = ServerConfig::default()
        .spool_memory(memory)
        .spool_dir(dir.to_path_buf());
    let svc = Looker {
        dir: dir.to_path_buf(),
        seen: seen.clone(),
        read: read.clone(),
    };
    let options = ServiceOptions::default()
        .with_methods(vec![Method::Reqmod])
        .with_istag("\"look-1\"");
    let svc = tower::service_fn(move |req| svc.clone().handle(req));
    (Server::new(cfg).route("look", options, svc), seen, read)
}

#[tokio::test]
async fn the_spool_of_a_large_echo_has_no_name_on_disk() {
    let dir = spool_dir("spool-nameless");
    let (server, seen, _) = looker(&dir, 1 << 20);
    let srv = net::start(server).await;
    echo_3mib(srv.addr).await;
    // With 2 MiB of the body spilled to disk, the directory was empty, so a crash (kill -9)
    // could leave nothing behind; and it is empty after the echo.
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    assert_eq!(entries(&dir), 0);
    srv.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_spool_cannot_be_stopped_by_files_made_in_advance() {
    // The names the spool once used (icap-spool-PID-N, N counting per process) taken in
    // advance by another local user.
    let dir = spool_dir("spool-squatted");
    for n in 0..1000 {
        std::fs::write(
            dir.join(format!("icap-spool-{}-{n}", std::process::id())),
            b"",
        )
        .unwrap();
    }
    let (server, _, _) = looker(&dir, 1 << 20);
    let srv = net::start(server).await;
    echo_3mib(srv.addr).await;
    assert_eq!(entries(&dir), 1000);
    srv.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unusable_spool_directory_gets_the_client_a_500() {
    let dir = spool_dir("spool-missing").join("missing");
    let (server, seen, read) = looker(&dir, 64 * 1024);
    let srv = net::start(server).await;
    let body = vec![b'x'; 256 * 1024];
    let got = exchange(srv.addr, &reqmod("look", "", Some(&body))).await;
    assert_eq!(String::from_utf8_lossy(&got), server_error("look-1"));
    // The service read the body to its end all the same.
    assert_eq!(read.load(Ordering::SeqCst), body.len());
    assert_eq!(seen.load(Ordering::SeqCst), usize::MAX);
    // Bodies that fit the memory part need no directory.
    let got = exchange(
        srv.addr,
        &reqmod("look", "Connection: close\r\n", Some(b"small")),
    )
    .await;
    assert!(
        got.starts_with(b"ICAP/1.0 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.ends_with(b"5\r\nsmall\r\n0\r\n\r\n"));
    srv.stop().await;
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
