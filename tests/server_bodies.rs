//! The server's reply bodies on the wire (issue 12): a reply whose body does not match its
//! response is answered 500 instead of being written as invalid HTTP.
#![cfg(feature = "server")]

mod net;

use std::time::Duration;

use bytes::Bytes;
use icap::server::{Body, BoxFuture, IncomingRequest, Reply, ReplyBody, Server, Service};
use icap::{Method, Response, ServiceOptions};
use net::PAGE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: &str = env!("CARGO_PKG_VERSION");

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
struct Pages;

impl Service for Pages {
    fn options(&self) -> ServiceOptions {
        ServiceOptions {
            methods: vec![Method::Reqmod],
            istag: "\"pages-1\"".into(),
            ..Default::default()
        }
    }

    fn handle<'a>(
        &'a self,
        req: &'a IncomingRequest,
        _body: &'a mut Body<'_, '_>,
    ) -> BoxFuture<'a, Reply> {
        let uri = String::from_utf8_lossy(&req.uri).into_owned();
        Box::pin(async move {
            let page =
                || Response::ok("pages-1").http_error_page(403, "Forbidden", "text/html", PAGE);
            let full = ReplyBody::Full(Bytes::from_static(PAGE));
            let (res, body) = match uri.rsplit('/').next().unwrap() {
                "good" => (page(), full),
                // The page's head, Content-Length and all, without its bytes.
                "empty" => (page(), ReplyBody::Empty),
                // A body for a response built without with_body().
                "undeclared" => (
                    Response::ok("pages-1").http_response_parts(
                        403,
                        "Forbidden",
                        [("Content-Type", "text/html")],
                    ),
                    full,
                ),
                // Bytes other than the page the head was built for.
                "length" => (page(), ReplyBody::Full(Bytes::from_static(b"short"))),
                // The same through a reader, which cannot be measured before it is sent.
                "reader" => (
                    Response::ok("pages-1").http_response_parts(403, "Forbidden", [("A", "b")]),
                    ReplyBody::Reader(Box::new(std::io::Cursor::new(PAGE))),
                ),
                other => panic!("{other}"),
            };
            Reply::Respond(res.build().unwrap(), body)
        })
    }
}

#[tokio::test]
async fn replies_whose_body_does_not_match_the_response_get_500_not_invalid_http() {
    let srv = net::start(
        Server::default()
            .route("good", Pages)
            .route("empty", Pages)
            .route("undeclared", Pages)
            .route("length", Pages)
            .route("reader", Pages),
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
