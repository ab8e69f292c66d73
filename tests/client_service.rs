//! The client as a tower service: driven by `ServiceExt::oneshot` against the crate's server
//! on loopback with a request body streamed in and the answer body streamed out, wrapped in
//! tower layers, and applying the preview from OPTIONS itself (checked on the wire).
#![cfg(all(feature = "client", feature = "server"))]

mod net;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use icap::client::ClientError;
use icap::client::{BodySource, Client, ClientRequest, ClientResponse};
use icap::server::ServerConfig;
use icap::HttpRequestHead;
use net::blocker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A request body in pieces, of unknown length (so it goes chunked to its end).
struct Pieces(VecDeque<Bytes>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn upload() -> HttpRequestHead {
    HttpRequestHead::new(
        "POST",
        "http://files.example/upload",
        [("Host", "files.example")].into_iter().collect(),
    )
}

/// 300 KiB of a pattern without the blocker's keyword, in 7 KiB pieces.
fn content() -> Vec<u8> {
    (0..300 * 1024u32)
        .map(|i| b"abcdefghij"[(i % 10) as usize])
        .collect()
}

#[tokio::test]
async fn oneshot_reqmod_streams_the_body_both_ways_byte_exact() {
    let srv = blocker(ServerConfig::default()).await;
    // Without Allow: 204, the server echoes the body it read: a 200 with all of it.
    let client = Client::builder()
        .server(srv.uri("icap", "blocker"))
        .allow_204(false)
        .build()
        .unwrap();
    let sent = content();
    let pieces = sent.chunks(7 * 1024).map(Bytes::copy_from_slice).collect();
    let req = ClientRequest::reqmod(upload()).body(BodySource::stream(Pieces(pieces)));
    let res: ClientResponse = client.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.head.http_request.as_ref().unwrap().line(),
        "POST http://files.example/upload HTTP/1.1"
    );
    let mut body = res.into_body();
    let mut got = Vec::new();
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        frames += 1;
    }
    assert!(
        frames > 1,
        "the answer came in {frames} frame(s), not streamed"
    );
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the echo differs from the body sent");
    assert!(body.is_end_stream());

    // The connection went back to the pool: the next call reuses it. (Longer than the
    // 8-byte preview: a body that ends inside it may be answered 204 whatever Allow says.)
    let again = ClientRequest::reqmod(upload()).body("past the preview");
    let res = client.clone().oneshot(again).await.unwrap();
    assert_eq!(
        &res.into_body().to_bytes().await.unwrap()[..],
        b"past the preview"
    );
    assert_eq!(
        client.health()[0].connections_in_use,
        1,
        "one pooled connection"
    );
    srv.stop().await;
}

#[tokio::test]
async fn tower_layers_wrap_the_client() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::builder()
        .server(srv.uri("icap", "blocker"))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .concurrency_limit(2)
        .timeout(Duration::from_secs(10))
        .service(client);
    // Clean: 204, no body. Blocked: a 200 carrying the block page.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(ClientRequest::reqmod(upload()).body("quarterly numbers"))
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.into_body().to_bytes().await.unwrap().is_empty());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(ClientRequest::reqmod(upload()).body("this has the BLOCK word"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.head.http_response.as_ref().unwrap().status, 403);
    assert_eq!(&res.into_body().to_bytes().await.unwrap()[..], net::PAGE);
    srv.stop().await;

    // A server that never answers: the layer's timeout ends the call, long before the
    // client's own deadline, and the error is the layer's.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let client = Client::builder()
        .server(format!("icap://127.0.0.1:{port}/x"))
        .preview(icap::client::PreviewPolicy::Off)
        .build()
        .unwrap();
    let start = Instant::now();
    let e = ServiceBuilder::new()
        .timeout(Duration::from_millis(300))
        .service(client)
        .oneshot(ClientRequest::reqmod(upload()).body("x"))
        .await
        .unwrap_err();
    assert!(e.is::<tower::timeout::error::Elapsed>(), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
    hole.abort();
}

/// Reads one ICAP message head (to the blank line) and what follows up to `until`.
async fn read_until(s: &mut tokio::net::TcpStream, until: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(until) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn the_client_applies_the_preview_the_options_ask_for() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let fake = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let options = read_until(&mut s, b"\r\n\r\n").await;
        assert!(
            options.starts_with(b"OPTIONS icap://127.0.0.1:"),
            "{options:?}"
        );
        s.write_all(
            b"ICAP/1.0 200 OK\r\nISTag: \"p1\"\r\nMethods: REQMOD\r\nPreview: 4\r\n\
              Transfer-Preview: *\r\nEncapsulated: null-body=0\r\n\r\n",
        )
        .await
        .unwrap();
        let req = read_until(&mut s, b"0\r\n\r\n").await;
        s.write_all(
            b"ICAP/1.0 204 No Content\r\nISTag: \"p1\"\r\nEncapsulated: null-body=0\r\n\r\n",
        )
        .await
        .unwrap();
        req
    });
    let client = Client::builder()
        .server(format!("icap://127.0.0.1:{port}/reqmod"))
        .build()
        .unwrap();
    let res = client
        .reqmod(upload())
        .body("abcdefgh")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let req = fake.await.unwrap();
    let text = String::from_utf8_lossy(&req);
    assert!(text.contains("\r\nPreview: 4\r\n"), "{text}");
    // The head, then exactly four bytes of preview and the preview's end: no more was sent
    // before the server answered.
    let head_end = text.find("\r\n\r\nPOST").unwrap() + 4;
    let http_end = head_end + text[head_end..].find("\r\n\r\n").unwrap() + 4;
    assert_eq!(&text[http_end..], "4\r\nabcd\r\n0\r\n\r\n");
}

#[tokio::test]
async fn errors_are_typed_and_a_status_is_not_an_answer() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::builder()
        .server(srv.uri("icap", "nosuch"))
        .build()
        .unwrap();
    match client
        .clone()
        .oneshot(ClientRequest::reqmod(upload()))
        .await
        .unwrap_err()
    {
        ClientError::Status { status: 404, .. } => {}
        e => panic!("{e}"),
    }
    srv.stop().await;
}

#[tokio::test]
async fn an_answer_body_dropped_half_read_does_not_poison_the_pool() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::builder()
        .server(srv.uri("icap", "blocker"))
        .allow_204(false)
        .build()
        .unwrap();
    let sent = content();
    let res = client
        .reqmod(upload())
        .body(Bytes::from(sent.clone()))
        .send()
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.data().await.unwrap().unwrap();
    assert!(!first.is_empty() && first.len() < sent.len());
    drop(body);
    // The half-read connection is closed, not pooled: the next echo is whole and exact.
    let next = client
        .reqmod(upload())
        .body(Bytes::from(sent.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
    let got = next.into_body().to_bytes().await.unwrap();
    assert!(got == sent[..], "the second echo differs");
    srv.stop().await;
}

#[tokio::test]
async fn a_streamed_body_is_bounded_by_the_transaction_timeout() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::builder()
        .server(srv.uri("icap", "blocker"))
        .allow_204(false)
        .transaction_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    // Far more than the pieces the client runs ahead plus the sockets' buffers.
    let sent: Vec<u8> = content().repeat(8);
    let res = client
        .reqmod(upload())
        .body(Bytes::from(sent.clone()))
        .send()
        .await
        .unwrap();
    let mut body = res.into_body();
    body.data().await.unwrap().unwrap();
    // A reader that stalls past the attempt's time gets a typed timeout, not a hang.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let start = Instant::now();
    let mut read = 0;
    let e = loop {
        match body.data().await {
            Some(Ok(d)) => read += d.len(),
            Some(Err(e)) => break e,
            None => panic!("the whole body came after the timeout ({read} bytes)"),
        }
    };
    assert!(
        matches!(
            e,
            ClientError::Timeout {
                phase: "transaction",
                ..
            }
        ),
        "{e}"
    );
    assert!(read < sent.len());
    assert!(start.elapsed() < Duration::from_secs(1));
    srv.stop().await;
}

#[tokio::test]
async fn respmod_from_a_reader_written_while_it_is_sent() {
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::builder()
        .server(srv.uri("icap", "blocker"))
        .allow_204(false)
        .build()
        .unwrap();
    let sent = content();
    let (mut w, r) = tokio::io::duplex(4096);
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(10_000) {
                w.write_all(piece).await.unwrap();
            }
        })
    };
    let download = icap::HttpResponseHead::new(
        200,
        "OK",
        [("Content-Type", "application/octet-stream")]
            .into_iter()
            .collect(),
    );
    let req = ClientRequest::respmod(download)
        .http_request(HttpRequestHead::new(
            "GET",
            "http://files.example/f.bin",
            [("Host", "files.example")].into_iter().collect(),
        ))
        .body(BodySource::reader(r, None));
    let res = client.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.head.http_response.as_ref().unwrap().status, 200);
    let got = res.into_body().to_bytes().await.unwrap();
    assert!(got == sent[..], "the echo differs ({} bytes)", got.len());
    writer.await.unwrap();
    srv.stop().await;
}
