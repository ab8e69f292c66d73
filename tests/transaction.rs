//! The transaction machines driven through every path of RFC 3507 4.5 (preview) and 4.6
//! (204 outside previews), plus 206, early answers, errors, EOF and connection reuse. The
//! client's wire bytes are checked exactly; the server is fed the bytes real peers send
//! (c-icap-client, squid); and a property test runs both machines against each other over
//! random body sizes, previews, decisions and byte splits.

use bytes::{Buf, Bytes};
use icap::builder::ErrorStatus;
use icap::{
    ClientEvent, ClientTransaction, CloseReason, ErrorKind, IcapUri, Request, RequestBody,
    RequestDecoder, Response, ResponseDecoder, Reuse, ServerEvent, ServerTransaction,
};
use icap::{ClientState, ServerState};
use proptest::prelude::*;

const HEAD: &str = "RESPMOD icap://icap.example/respmod ICAP/1.0\r\nHost: icap.example\r\n";
const HTTP: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";

/// A RESPMOD with a body; `allow` is the Allow value, `preview` the Preview.
fn request(preview: Option<u64>, allow: &str) -> Request {
    let mut b = Request::respmod(&IcapUri::parse("icap://icap.example/respmod").unwrap())
        .http_response_parts(200, "OK", [("Content-Type", "text/plain")])
        .with_body();
    if allow.contains("204") {
        b = b.allow_204();
    }
    if allow.contains("206") {
        b = b.allow_206();
    }
    if let Some(p) = preview {
        b = b.preview(p);
    }
    b.build().unwrap()
}

/// The wire head of [`request`], for byte-exact checks.
fn head(preview: Option<u64>, allow: &str) -> String {
    let mut h = HEAD.to_string();
    if !allow.is_empty() {
        h += &format!("Allow: {allow}\r\n");
    }
    if let Some(p) = preview {
        h += &format!("Preview: {p}\r\n");
    }
    h + "Encapsulated: res-hdr=0, res-body=45\r\n\r\n" + HTTP
}

fn client(preview: Option<u64>, allow: &str, body: RequestBody) -> ClientTransaction {
    ClientTransaction::new(&request(preview, allow), body, ResponseDecoder::default()).unwrap()
}

fn out(tx: &mut ClientTransaction) -> String {
    String::from_utf8(tx.outgoing().to_bytes().to_vec()).unwrap()
}

fn sout(tx: &mut ServerTransaction) -> String {
    String::from_utf8(tx.outgoing().to_bytes().to_vec()).unwrap()
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn client_events(tx: &mut ClientTransaction) -> Vec<ClientEvent> {
    let mut v = Vec::new();
    while let Some(e) = tx.poll_event().unwrap() {
        v.push(e);
    }
    v
}

fn server_events(tx: &mut ServerTransaction) -> Vec<ServerEvent> {
    let mut v = Vec::new();
    while let Some(e) = tx.poll_event().unwrap() {
        v.push(e);
    }
    v
}

fn data_of(evs: &[ServerEvent]) -> Vec<u8> {
    evs.iter()
        .filter_map(|e| match e {
            ServerEvent::Data(d) => Some(&d[..]),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

const CONTINUE: &[u8] = b"ICAP/1.0 100 Continue\r\n\r\n";
const NO_CONTENT: &[u8] = b"ICAP/1.0 204 No Content\r\nISTag: \"t\"\r\n\r\n";
const OK_BODY: &[u8] = b"ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n3\r\nnew\r\n0\r\n\r\n";

fn assert_ok_body(evs: &[ClientEvent]) {
    match evs {
        [ClientEvent::Response(r), ClientEvent::Data(d), ClientEvent::End(l)] => {
            assert_eq!(r.status, 200);
            assert_eq!(&d[..], b"new");
            assert!(!l.ieof && l.use_original_body.is_none());
        }
        other => panic!("{other:?}"),
    }
}

// ---- Client: preview smaller than, equal to and larger than the body -------------------

#[test]
fn client_preview_smaller_than_body_continues_after_100() {
    let mut tx = client(Some(4), "", RequestBody::Unknown);
    assert_eq!(tx.state(), ClientState::Preview);
    tx.send_body(b("0123456789")).unwrap();
    assert_eq!(out(&mut tx), head(Some(4), "") + "4\r\n0123\r\n0\r\n\r\n");
    assert_eq!(tx.state(), ClientState::AwaitContinue);
    assert!(!tx.wants_body());
    let e = tx.send_body(b("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);

    tx.feed(CONTINUE);
    assert_eq!(client_events(&mut tx), [ClientEvent::Continue]);
    // The rest of the piece that crossed the preview goes first, with no ieof anywhere.
    assert_eq!(out(&mut tx), "6\r\n456789\r\n");
    assert!(tx.wants_body());
    tx.send_body(b("AB")).unwrap();
    tx.end_body().unwrap();
    assert_eq!(out(&mut tx), "2\r\nAB\r\n0\r\n\r\n");
    assert_eq!(tx.state(), ClientState::AwaitResponse);
    assert_eq!(tx.reuse(), Reuse::Pending);

    tx.feed(OK_BODY);
    assert_ok_body(&client_events(&mut tx));
    assert_eq!(tx.state(), ClientState::Done);
    assert_eq!(tx.reuse(), Reuse::Keep);
}

#[test]
fn client_preview_smaller_than_known_body_sends_rest_and_ends_itself() {
    let mut tx = client(Some(4), "", RequestBody::Known(6));
    tx.send_body(b("0123")).unwrap();
    // Known to go on: the preview ends at once, without waiting for the next piece.
    assert_eq!(out(&mut tx), head(Some(4), "") + "4\r\n0123\r\n0\r\n\r\n");
    tx.feed(CONTINUE);
    assert_eq!(client_events(&mut tx), [ClientEvent::Continue]);
    tx.send_body(b("45")).unwrap();
    assert_eq!(out(&mut tx), "2\r\n45\r\n0\r\n\r\n");
    tx.end_body().unwrap(); // already ended by the length: a no-op
    assert_eq!(out(&mut tx), "");
    assert_eq!(
        tx.send_body(b("6")).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
}

#[test]
fn client_preview_equal_to_body() {
    // Unknown length: the client cannot tell the body ended until end_body(), so the
    // preview ends with ieof then (RFC 3507 4.5's 1024-in-two-chunks example).
    let mut tx = client(Some(4), "", RequestBody::Unknown);
    tx.send_body(b("ab")).unwrap();
    tx.send_body(b("cd")).unwrap();
    assert_eq!(tx.state(), ClientState::Preview);
    tx.end_body().unwrap();
    assert_eq!(
        out(&mut tx),
        head(Some(4), "") + "2\r\nab\r\n2\r\ncd\r\n0; ieof\r\n\r\n"
    );
    // A known length ends it with ieof on the last byte.
    let mut tx = client(Some(4), "", RequestBody::Known(4));
    tx.send_body(b("abcd")).unwrap();
    assert_eq!(
        out(&mut tx),
        head(Some(4), "") + "4\r\nabcd\r\n0; ieof\r\n\r\n"
    );
    // After ieof a 100 is a protocol violation (RFC 3507 4.5).
    tx.feed(CONTINUE);
    let e = tx.poll_event().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedResponse);
    assert_eq!(tx.state(), ClientState::Failed);
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ProtocolViolation));
}

#[test]
fn client_preview_equal_to_body_then_more_data_ends_preview_without_ieof() {
    let mut tx = client(Some(4), "", RequestBody::Unknown);
    tx.send_body(b("abcd")).unwrap();
    tx.send_body(b("e")).unwrap();
    assert_eq!(out(&mut tx), head(Some(4), "") + "4\r\nabcd\r\n0\r\n\r\n");
    // The body ends while the preview waits: the held byte and `0` follow the 100.
    tx.end_body().unwrap();
    assert_eq!(out(&mut tx), "");
    tx.feed(CONTINUE);
    assert_eq!(client_events(&mut tx), [ClientEvent::Continue]);
    assert_eq!(out(&mut tx), "1\r\ne\r\n0\r\n\r\n");
    assert_eq!(tx.state(), ClientState::AwaitResponse);
}

#[test]
fn client_preview_larger_than_body() {
    let mut tx = client(Some(1024), "204", RequestBody::Unknown);
    tx.send_body(b("hello")).unwrap();
    tx.end_body().unwrap();
    assert_eq!(
        out(&mut tx),
        head(Some(1024), "204") + "5\r\nhello\r\n0; ieof\r\n\r\n"
    );
    tx.feed(NO_CONTENT);
    match &client_events(&mut tx)[..] {
        [ClientEvent::Unmodified(r), ClientEvent::End(_)] => assert_eq!(r.status, 204),
        other => panic!("{other:?}"),
    }
    assert_eq!(tx.reuse(), Reuse::Keep);
}

#[test]
fn client_zero_byte_body_sends_ieof_at_once() {
    let mut tx = client(Some(1024), "", RequestBody::Known(0));
    assert_eq!(out(&mut tx), head(Some(1024), "") + "0; ieof\r\n\r\n");
    assert_eq!(tx.state(), ClientState::AwaitResponse);
    let mut tx = client(Some(0), "", RequestBody::Unknown);
    tx.end_body().unwrap();
    assert_eq!(out(&mut tx), head(Some(0), "") + "0; ieof\r\n\r\n");
    // RFC 3507 4.5: a 204 in answer to a preview needs no Allow: 204.
    tx.feed(NO_CONTENT);
    assert!(matches!(
        client_events(&mut tx)[..],
        [ClientEvent::Unmodified(_), ClientEvent::End(_)]
    ));
}

#[test]
fn client_preview_zero_with_body() {
    // Preview: 0 — heads only, then stop and wait.
    let mut tx = client(Some(0), "", RequestBody::Known(3));
    assert_eq!(out(&mut tx), head(Some(0), "") + "0\r\n\r\n");
    assert_eq!(tx.state(), ClientState::AwaitContinue);
    tx.feed(CONTINUE);
    client_events(&mut tx);
    tx.send_body(b("abc")).unwrap();
    assert_eq!(out(&mut tx), "3\r\nabc\r\n0\r\n\r\n");
    let mut tx = client(Some(0), "", RequestBody::Unknown);
    tx.send_body(b("abc")).unwrap();
    assert_eq!(out(&mut tx), head(Some(0), "") + "0\r\n\r\n");
    tx.feed(CONTINUE);
    client_events(&mut tx);
    assert_eq!(out(&mut tx), "3\r\nabc\r\n");
}

// ---- Client: 204 rules (RFC 3507 4.6) -----------------------------------------------------

#[test]
fn client_204_after_preview_without_allow_204() {
    let mut tx = client(Some(4), "", RequestBody::Unknown);
    tx.send_body(b("0123456789")).unwrap();
    tx.feed(NO_CONTENT);
    assert!(matches!(
        client_events(&mut tx)[..],
        [ClientEvent::Unmodified(_), ClientEvent::End(_)]
    ));
    // The held rest is never sent; the connection is clean (the request ended at `0`).
    assert_eq!(tx.reuse(), Reuse::Keep);
    assert_eq!(
        tx.send_body(b("x")).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    tx.end_body().unwrap();
    assert_eq!(out(&mut tx), head(Some(4), "") + "4\r\n0123\r\n0\r\n\r\n");
}

#[test]
fn client_204_outside_preview_needs_allow_204() {
    for (allow, ok) in [("", false), ("204", true)] {
        let mut tx = client(None, allow, RequestBody::Unknown);
        assert_eq!(tx.state(), ClientState::Body);
        tx.send_body(b("abc")).unwrap();
        tx.end_body().unwrap();
        assert_eq!(out(&mut tx), head(None, allow) + "3\r\nabc\r\n0\r\n\r\n");
        tx.feed(NO_CONTENT);
        if ok {
            assert!(matches!(
                client_events(&mut tx)[..],
                [ClientEvent::Unmodified(_), ClientEvent::End(_)]
            ));
            assert_eq!(tx.reuse(), Reuse::Keep);
        } else {
            assert_eq!(
                tx.poll_event().unwrap_err().kind(),
                ErrorKind::UnexpectedResponse
            );
            assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ProtocolViolation));
        }
    }
    // After 100 Continue the answer is no longer to a preview.
    let mut tx = client(Some(2), "", RequestBody::Known(4));
    tx.send_body(b("abcd")).unwrap();
    tx.feed(CONTINUE);
    tx.feed(NO_CONTENT);
    assert_eq!(tx.poll_event().unwrap(), Some(ClientEvent::Continue));
    assert_eq!(
        tx.poll_event().unwrap_err().kind(),
        ErrorKind::UnexpectedResponse
    );
}

// ---- Client: 206, early answers, errors, EOF -----------------------------------------------

#[test]
fn client_206_needs_allow_206_and_reports_the_offset() {
    let wire: &[u8] = b"ICAP/1.0 206 Partial Content\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n2\r\nAB\r\n0; use-original-body=2\r\n\r\n";
    let mut tx = client(Some(4), "204, 206", RequestBody::Known(4));
    tx.send_body(b("abcd")).unwrap();
    tx.feed(wire);
    match &client_events(&mut tx)[..] {
        [ClientEvent::Response(r), ClientEvent::Data(d), ClientEvent::End(l)] => {
            assert_eq!(
                (r.status, &d[..], l.use_original_body),
                (206, &b"AB"[..], Some(2))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tx.reuse(), Reuse::Keep);
    let mut tx = client(Some(4), "204", RequestBody::Known(4));
    tx.send_body(b("abcd")).unwrap();
    tx.feed(wire);
    assert_eq!(
        tx.poll_event().unwrap_err().kind(),
        ErrorKind::UnexpectedResponse
    );
}

#[test]
fn client_early_2xx_lets_the_body_go_on() {
    // c-icap's echo streams its 200 before the client's last chunk: keep sending.
    let mut tx = client(None, "", RequestBody::Known(10));
    tx.send_body(b("abc")).unwrap();
    out(&mut tx);
    tx.feed(b"ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n3\r\nabc\r\n");
    match &client_events(&mut tx)[..] {
        [ClientEvent::Response(r), ClientEvent::Data(d)] => {
            assert_eq!((r.status, &d[..]), (200, &b"abc"[..]))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tx.state(), ClientState::Response);
    assert!(tx.wants_body());
    tx.send_body(b("defghij")).unwrap();
    assert_eq!(out(&mut tx), "7\r\ndefghij\r\n0\r\n\r\n");
    assert_eq!(tx.reuse(), Reuse::Pending, "the response has not ended");
    tx.feed(b"7\r\ndefghij\r\n0\r\n\r\n");
    assert_eq!(client_events(&mut tx).len(), 2);
    assert_eq!(tx.reuse(), Reuse::Keep);

    // The response may even end first; reuse waits for the request.
    let mut tx = client(None, "", RequestBody::Unknown);
    tx.send_body(b("abc")).unwrap();
    tx.feed(OK_BODY);
    assert_ok_body(&client_events(&mut tx));
    assert_eq!(
        (tx.state(), tx.reuse()),
        (ClientState::Done, Reuse::Pending)
    );
    tx.end_body().unwrap();
    assert_eq!(tx.reuse(), Reuse::Keep);

    // The caller may stop instead: then the connection closes.
    let mut tx = client(None, "", RequestBody::Unknown);
    tx.send_body(b("abc")).unwrap();
    tx.feed(OK_BODY);
    client_events(&mut tx);
    tx.abort_body();
    assert!(!tx.wants_body());
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::UnfinishedRequest));
}

#[test]
fn client_early_error_or_close_stops_the_body() {
    let answers: [&[u8]; 3] = [
        b"ICAP/1.0 200 OK\r\nConnection: close\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body=26\r\n\r\nHTTP/1.1 403 Forbidden\r\n\r\n0\r\n\r\n",
        b"ICAP/1.0 500 Server Error\r\nISTag: \"t\"\r\nEncapsulated: null-body=0\r\n\r\n",
        NO_CONTENT,
    ];
    for wire in answers {
        let mut tx = client(None, "204", RequestBody::Known(10));
        tx.send_body(b("abc")).unwrap();
        tx.feed(wire);
        let evs = client_events(&mut tx);
        assert!(matches!(evs.last(), Some(ClientEvent::End(_))), "{evs:?}");
        assert!(!tx.wants_body());
        let e = tx.send_body(b("def")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
        assert!(e.message().contains("stopped"));
        tx.end_body().unwrap(); // nothing to end: the body was stopped
        assert_eq!(tx.reuse(), Reuse::Close(CloseReason::UnfinishedRequest));
    }
}

#[test]
fn client_server_errors_close_the_connection() {
    // c-icap's 404 with Connection: close.
    let mut tx = client(Some(4), "204", RequestBody::Known(2));
    tx.send_body(b("ab")).unwrap();
    tx.feed(b"ICAP/1.0 404 Service not found\r\nServer: C-ICAP/0.5.10\r\nConnection: close\r\nISTag: \"x\"\r\nEncapsulated: null-body=0\r\n\r\n");
    match &client_events(&mut tx)[..] {
        [ClientEvent::Response(r), ClientEvent::End(_)] => assert_eq!(r.status, 404),
        other => panic!("{other:?}"),
    }
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ServerAsked));
    // An error without Connection: close still closes.
    let mut tx = client(None, "", RequestBody::Known(0));
    assert_eq!(out(&mut tx), head(None, "") + "0\r\n\r\n");
    assert_eq!(tx.state(), ClientState::AwaitResponse);
    tx.feed(
        b"ICAP/1.0 503 Service Overloaded\r\nISTag: \"x\"\r\nEncapsulated: null-body=0\r\n\r\n",
    );
    client_events(&mut tx);
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ErrorStatus(503)));
}

#[test]
fn client_eof_and_garbage() {
    let mut tx = client(None, "204", RequestBody::Known(0));
    tx.feed(b"ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n5\r\nab");
    assert_eq!(client_events(&mut tx).len(), 2);
    let e = tx.on_eof().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::Eof));

    let mut tx = client(None, "204", RequestBody::Known(0));
    tx.feed(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(tx.poll_event().unwrap_err().kind(), ErrorKind::BadVersion);
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::DecodeError));
    assert_eq!(tx.poll_event().unwrap_err().kind(), ErrorKind::InvalidState);

    // A 100 to a request that has no preview.
    let mut tx = client(None, "", RequestBody::Known(1));
    tx.send_body(b("a")).unwrap();
    tx.feed(CONTINUE);
    assert_eq!(
        tx.poll_event().unwrap_err().kind(),
        ErrorKind::UnexpectedResponse
    );
}

#[test]
fn client_refuses_misuse() {
    let req = request(Some(4), "");
    let e =
        ClientTransaction::new(&req, RequestBody::None, ResponseDecoder::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    let mut tx = client(None, "", RequestBody::Known(3));
    assert_eq!(
        tx.send_body(b("abcd")).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(tx.end_body().unwrap_err().kind(), ErrorKind::InvalidState);
    tx.send_body(b("abc")).unwrap();
    assert_eq!(
        tx.send_body(b("d")).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    // A bodiless request (REQMOD GET) is complete with its heads.
    let get = Request::reqmod(&IcapUri::parse("icap://h/req").unwrap())
        .http_request_parts("GET", "http://x/", [("Host", "x")])
        .connection_close()
        .build()
        .unwrap();
    let mut tx =
        ClientTransaction::new(&get, RequestBody::None, ResponseDecoder::default()).unwrap();
    assert_eq!(tx.state(), ClientState::AwaitResponse);
    assert!(!tx.wants_body());
    assert!(out(&mut tx).ends_with("null-body=35\r\n\r\nGET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"));
    tx.feed(b"ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: req-hdr=0, null-body=35\r\n\r\nGET http://x/ HTTP/1.1\r\nHost: y\r\n\r\n");
    match &client_events(&mut tx)[..] {
        [ClientEvent::Response(r), ClientEvent::End(_)] => {
            assert_eq!(
                r.http_request.as_ref().unwrap().headers.get_str("Host"),
                Some("y")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ClientAsked));
}

// ---- Server --------------------------------------------------------------------------------

fn server(wire: &str) -> (ServerTransaction, Vec<ServerEvent>) {
    let mut tx = ServerTransaction::new(RequestDecoder::default());
    tx.feed(wire.as_bytes());
    let evs = server_events(&mut tx);
    (tx, evs)
}

/// A REQMOD without a body (`null-body`), as squid sends for a GET.
const NULL_BODY_REQMOD: &str = "REQMOD icap://icap.example/reqmod ICAP/1.0\r\nHost: icap.example\r\nEncapsulated: req-hdr=0, null-body=35\r\n\r\nGET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn server_answering_a_bodiless_request_without_polling_on_keeps_the_connection() {
    // Two pipelined requests; the application answers the first as soon as it has its head,
    // the way a service that never reads the body does.
    let mut tx = ServerTransaction::new(RequestDecoder::default());
    tx.feed(format!("{NULL_BODY_REQMOD}{NULL_BODY_REQMOD}").as_bytes());
    let Some(ServerEvent::Request(req)) = tx.poll_event().unwrap() else {
        panic!("no head")
    };
    assert_eq!(req.body, None);
    assert!(!tx.receiving());
    assert_eq!(tx.state(), ServerState::Answer);
    let res = Response::ok("t")
        .http_request_parts("GET", "http://x/", [("Host", "y")])
        .build()
        .unwrap();
    tx.respond(res).unwrap();
    assert_eq!(
        sout(&mut tx),
        "ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: req-hdr=0, null-body=35\r\n\r\nGET http://x/ HTTP/1.1\r\nHost: y\r\n\r\n"
    );
    assert_eq!(tx.reuse(), Reuse::Keep);
    // The second request starts at its head on the kept connection.
    let mut next = ServerTransaction::new(tx.into_decoder());
    assert!(matches!(
        next.poll_event().unwrap(),
        Some(ServerEvent::Request(_))
    ));
    // Polled on, it still gives the request's End, once.
    assert!(matches!(
        next.poll_event().unwrap(),
        Some(ServerEvent::End(_))
    ));
    assert_eq!(next.poll_event().unwrap(), None);
    assert_eq!(next.state(), ServerState::Answer);
    let res = Response::ok("t")
        .http_request_parts("GET", "http://x/", [("Host", "y")])
        .build()
        .unwrap();
    next.respond(res).unwrap();
    assert_eq!(next.reuse(), Reuse::Keep);
    assert!(next.into_decoder().is_idle());
}

#[test]
fn server_c_icap_client_sends_body_equal_to_preview_then_0_after_100() {
    let (mut tx, evs) = server(&(head(Some(4), "204") + "4\r\nabcd\r\n0\r\n\r\n"));
    assert!(matches!(evs[0], ServerEvent::Request(_)));
    assert_eq!(data_of(&evs), b"abcd");
    assert_eq!(evs.last(), Some(&ServerEvent::PreviewEnd { ieof: false }));
    assert_eq!(tx.state(), ServerState::Decide { ieof: false });
    tx.send_continue().unwrap();
    assert_eq!(sout(&mut tx), "ICAP/1.0 100 Continue\r\n\r\n");
    assert_eq!(
        tx.send_continue().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    tx.feed(b"0\r\n\r\n");
    let evs = server_events(&mut tx);
    assert!(matches!(evs[..], [ServerEvent::End(_)]));
    assert_eq!(tx.state(), ServerState::Answer);
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert_eq!(
        sout(&mut tx),
        "ICAP/1.0 204 No Content\r\nISTag: \"t\"\r\n\r\n"
    );
    assert_eq!(tx.reuse(), Reuse::Keep);
    assert_eq!(
        tx.respond(Response::no_content("t").build().unwrap())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidState
    );
}

#[test]
fn server_squid_large_body_preview_then_rest() {
    let (mut tx, evs) = server(&(head(Some(3), "") + "3\r\nabc\r\n0\r\n\r\n"));
    assert_eq!(data_of(&evs), b"abc");
    tx.send_continue().unwrap();
    tx.feed(b"4\r\ndefg\r\n0\r\n\r\n");
    let evs = server_events(&mut tx);
    assert_eq!(data_of(&evs), b"defg");
    assert!(matches!(evs.last(), Some(ServerEvent::End(_))));
    // The whole body was read after 100: a 204 now needs Allow: 204.
    let e = tx
        .respond(Response::no_content("t").build().unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    let res = Response::ok("t")
        .http_response_parts(200, "OK", [("A", "b")])
        .with_body()
        .build()
        .unwrap();
    tx.respond(res).unwrap();
    assert_eq!(tx.reuse(), Reuse::Pending);
    tx.send_data(b("abcdefg")).unwrap();
    tx.end_response().unwrap();
    assert_eq!(
        sout(&mut tx),
        "ICAP/1.0 100 Continue\r\n\r\nICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body=25\r\n\r\nHTTP/1.1 200 OK\r\nA: b\r\n\r\n7\r\nabcdefg\r\n0\r\n\r\n"
    );
    assert_eq!(tx.reuse(), Reuse::Keep);
    assert_eq!(tx.poll_event().unwrap(), None);
}

#[test]
fn server_ieof_forbids_100_and_allows_204() {
    let (mut tx, evs) = server(&(head(Some(1024), "") + "5\r\nhello\r\n0; ieof\r\n\r\n"));
    assert_eq!(data_of(&evs), b"hello");
    assert_eq!(evs.last(), Some(&ServerEvent::PreviewEnd { ieof: true }));
    let e = tx.send_continue().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    assert!(e.message().contains("ieof"));
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert_eq!(tx.reuse(), Reuse::Keep);
    // Zero-byte body with ieof.
    let (mut tx, evs) = server(&(head(Some(1024), "") + "0; ieof\r\n\r\n"));
    assert_eq!(evs[1..], [ServerEvent::PreviewEnd { ieof: true }]);
    assert!(tx.send_continue().is_err());
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert_eq!(tx.state(), ServerState::Done);
}

#[test]
fn server_204_after_preview_without_allow_then_next_request_on_same_connection() {
    let first = head(Some(4), "") + "4\r\nabcd\r\n0\r\n\r\n";
    let second = head(None, "204") + "2\r\nxy\r\n0\r\n\r\n";
    let (mut tx, evs) = server(&(first + &second));
    assert_eq!(evs.last(), Some(&ServerEvent::PreviewEnd { ieof: false }));
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert_eq!(tx.reuse(), Reuse::Keep);
    assert_eq!(
        tx.poll_event().unwrap(),
        None,
        "the next request belongs to the next transaction"
    );
    let mut next = ServerTransaction::new(tx.into_decoder());
    let evs = server_events(&mut next);
    assert_eq!(data_of(&evs), b"xy");
    assert!(matches!(evs.last(), Some(ServerEvent::End(_))));
    next.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert_eq!(next.reuse(), Reuse::Keep);
}

#[test]
fn server_204_outside_preview_with_and_without_allow() {
    for (allow, ok) in [("", false), ("204", true)] {
        let (mut tx, evs) = server(&(head(None, allow) + "2\r\nab\r\n0\r\n\r\n"));
        assert!(matches!(evs.last(), Some(ServerEvent::End(_))));
        let r = tx.respond(Response::no_content("t").build().unwrap());
        assert_eq!(r.is_ok(), ok, "allow {allow:?}");
        if !ok {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidState);
            // The application can still answer with the whole message.
            let full = Response::ok("t")
                .http_response_parts(200, "OK", [("A", "b")])
                .with_body()
                .build()
                .unwrap();
            tx.respond(full).unwrap();
            tx.send_data(b("ab")).unwrap();
            tx.end_response().unwrap();
        }
        assert_eq!(tx.reuse(), Reuse::Keep);
    }
}

#[test]
fn server_206_only_with_allow_206() {
    let partial = || {
        Response::partial_content("t")
            .http_response_parts(200, "OK", [("A", "b")])
            .build()
            .unwrap()
    };
    let (mut tx, _) = server(&(head(Some(4), "204, 206") + "4\r\nabcd\r\n0\r\n\r\n"));
    tx.respond(partial()).unwrap();
    assert_eq!(
        tx.end_response().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    tx.end_use_original_body(0).unwrap();
    assert!(
        sout(&mut tx).ends_with("HTTP/1.1 200 OK\r\nA: b\r\n\r\n0; use-original-body=0\r\n\r\n")
    );
    assert_eq!(tx.reuse(), Reuse::Keep);
    let (mut tx, _) = server(&(head(Some(4), "204") + "4\r\nabcd\r\n0\r\n\r\n"));
    assert_eq!(
        tx.respond(partial()).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    // A 200 cannot end with use-original-body.
    tx.respond(
        Response::ok("t")
            .http_response_parts(200, "OK", [("A", "b")])
            .with_body()
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        tx.end_use_original_body(0).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
}

#[test]
fn server_preview_overrun_is_an_error_answered_with_400() {
    let (mut tx, _) = server(&head(Some(4), ""));
    tx.feed(b"6\r\nabcdef\r\n0\r\n\r\n");
    let e = tx.poll_event().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreviewOverrun);
    assert_eq!(tx.state(), ServerState::Failed);
    // Only an error status may follow.
    assert_eq!(
        tx.respond(Response::no_content("t").build().unwrap())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidState
    );
    tx.respond(
        Response::error(ErrorStatus::BadRequest, "t")
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        sout(&mut tx),
        "ICAP/1.0 400 Bad Request\r\nConnection: close\r\nISTag: \"t\"\r\nEncapsulated: null-body=0\r\n\r\n"
    );
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::DecodeError));
}

#[test]
fn server_early_answer_then_reads_the_rest() {
    let (mut tx, evs) = server(&(head(None, "") + "a\r\n0123"));
    assert_eq!(data_of(&evs), b"0123");
    assert_eq!(tx.state(), ServerState::Body);
    // Stream the answer while the request is still arriving, as c-icap's echo does.
    let res = Response::ok("t")
        .http_response_parts(200, "OK", [("A", "b")])
        .with_body()
        .build()
        .unwrap();
    tx.respond(res).unwrap();
    tx.send_data(b("0123")).unwrap();
    assert_eq!(tx.reuse(), Reuse::Pending);
    tx.feed(b"456789\r\n0\r\n\r\n");
    let evs = server_events(&mut tx);
    assert_eq!(data_of(&evs), b"456789");
    assert!(matches!(evs.last(), Some(ServerEvent::End(_))));
    tx.send_data(b("456789")).unwrap();
    tx.end_response().unwrap();
    assert!(!sout(&mut tx).contains("Connection: close"));
    assert_eq!(tx.reuse(), Reuse::Keep);
}

#[test]
fn server_early_answer_abandoning_the_request_closes_and_says_so() {
    let (mut tx, _) = server(&(head(None, "") + "a\r\n0123"));
    tx.abandon_request();
    let res = Response::ok("t")
        .http_error_page(403, "Forbidden", "text/plain", b"no")
        .build()
        .unwrap();
    tx.respond(res).unwrap();
    tx.send_data(b("no")).unwrap();
    tx.end_response().unwrap();
    let wire = sout(&mut tx);
    assert!(
        wire.starts_with("ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nConnection: close\r\n"),
        "{wire}"
    );
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::UnfinishedRequest));
    tx.feed(b"456789\r\n0\r\n\r\n");
    assert_eq!(
        tx.poll_event().unwrap(),
        None,
        "an abandoned request is not read"
    );
}

#[test]
fn server_answer_during_preview_then_preview_end_needs_no_decision() {
    let (mut tx, evs) = server(&(head(Some(8), "") + "4\r\nabcd\r\n"));
    assert_eq!(data_of(&evs), b"abcd");
    assert_eq!(tx.state(), ServerState::Preview);
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    tx.feed(b"4\r\nefgh\r\n0\r\n\r\n");
    let evs = server_events(&mut tx);
    assert_eq!(data_of(&evs), b"efgh");
    assert!(matches!(evs.last(), Some(ServerEvent::End(_))));
    assert_eq!(
        tx.send_continue().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(tx.reuse(), Reuse::Keep);
    assert!(tx.into_decoder().is_idle());
}

#[test]
fn server_errors_and_client_close() {
    // An error status closes, whatever the request said.
    let (mut tx, _) = server(&(head(None, "") + "0\r\n\r\n"));
    tx.respond(Response::new(500, "Server Error")).unwrap();
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ErrorStatus(500)));
    assert!(sout(&mut tx).contains("Connection: close\r\n"));
    // Connection: close from the client is echoed.
    let wire = head(None, "204").replacen(
        "Host: icap.example\r\n",
        "Host: icap.example\r\nConnection: close\r\n",
        1,
    );
    let (mut tx, _) = server(&(wire + "0\r\n\r\n"));
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ClientAsked));
    assert_eq!(
        sout(&mut tx),
        "ICAP/1.0 204 No Content\r\nISTag: \"t\"\r\nConnection: close\r\n\r\n"
    );
    // A malformed request head: 400, then close.
    let (mut tx, _) = server("");
    tx.feed(b"REQMOD icap://h/ ICAP/1.0\r\nHost: h\r\n\r\n");
    assert_eq!(
        tx.poll_event().unwrap_err().kind(),
        ErrorKind::MissingEncapsulated
    );
    tx.respond(
        Response::error(ErrorStatus::BadRequest, "t")
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::DecodeError));
    // 408 before any request.
    let (mut tx, _) = server("");
    tx.respond(
        Response::error(ErrorStatus::RequestTimeout, "t")
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::ServerAsked));
}

#[test]
fn server_refuses_illegal_steps() {
    let (mut tx, _) = server("");
    assert_eq!(
        tx.send_continue().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        tx.respond(Response::no_content("t").build().unwrap())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        tx.send_data(b("x")).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        tx.end_response().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    // 100 Continue without a preview; 100 through respond; a REQMOD-shaped answer to RESPMOD.
    let (mut tx, _) = server(&(head(None, "") + "0\r\n\r\n"));
    assert_eq!(
        tx.send_continue().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        tx.respond(Response::continue_100()).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    let wrong = Response::ok("t")
        .http_request_parts("GET", "/", [("A", "b")])
        .build()
        .unwrap();
    assert_eq!(
        tx.respond(wrong).unwrap_err().kind(),
        ErrorKind::EncapsulatedNotAllowed
    );
    assert_eq!(tx.state(), ServerState::Answer);
}

#[test]
fn server_eof() {
    let (mut tx, _) = server("");
    assert!(tx.on_eof().unwrap(), "a clean close between requests");
    let (mut tx, _) = server(&(head(None, "") + "5\r\nab"));
    assert_eq!(tx.on_eof().unwrap_err().kind(), ErrorKind::UnexpectedEof);
    assert_eq!(tx.reuse(), Reuse::Close(CloseReason::Eof));
    let (mut tx, _) = server(&(head(None, "204") + "0\r\n\r\n"));
    tx.respond(Response::no_content("t").build().unwrap())
        .unwrap();
    assert!(!tx.on_eof().unwrap());
}

// ---- Both machines against each other ------------------------------------------------------

/// What the server application does once the preview (or the request) is in.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Continue,
    NoContent,
    Modify,
    /// Answer 200 on the first body byte and stream the echo while still reading, as
    /// c-icap's echo service does.
    EarlyEcho,
}

/// Moves bytes between the machines in pieces of the given sizes until neither moves.
fn pump(c: &mut ClientTransaction, s: &mut ServerTransaction, sizes: &[usize], i: &mut usize) {
    loop {
        let mut moved = false;
        for dir in 0..2 {
            let src = if dir == 0 { c.outgoing() } else { s.outgoing() };
            if src.remaining() == 0 {
                continue;
            }
            let n = sizes[*i % sizes.len()].min(src.remaining());
            *i += 1;
            let piece = src.copy_to_bytes(n);
            if dir == 0 {
                s.feed(&piece);
            } else {
                c.feed(&piece);
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn run(
    body: &[u8],
    preview: Option<u64>,
    known: bool,
    allow_204: bool,
    decision: Decision,
    pieces: &[usize],
    sizes: &[usize],
) -> Result<(), TestCaseError> {
    let req = request(preview, if allow_204 { "204" } else { "" });
    let len = if known {
        RequestBody::Known(body.len() as u64)
    } else {
        RequestBody::Unknown
    };
    let mut c = ClientTransaction::new(&req, len, ResponseDecoder::default()).unwrap();
    let mut s = ServerTransaction::new(RequestDecoder::default());
    let (mut i, mut at, mut p) = (0, 0, 0);
    let mut got = Vec::new();
    let mut cevs = Vec::new();
    let mut responded = false;
    let mut overtaken = false;
    for _ in 0..10_000 {
        // Client: one piece per round, so that answers can overtake the body.
        if c.wants_body() && at < body.len() {
            let n = pieces[p % pieces.len()].min(body.len() - at);
            p += 1;
            c.send_body(Bytes::copy_from_slice(&body[at..at + n]))
                .unwrap();
            at += n;
        }
        if at == body.len() {
            c.end_body().unwrap();
        }
        pump(&mut c, &mut s, sizes, &mut i);
        while let Some(ev) = s.poll_event().unwrap() {
            match ev {
                ServerEvent::Data(d) => {
                    got.extend_from_slice(&d);
                    if matches!(decision, Decision::EarlyEcho) {
                        if !responded {
                            s.respond(
                                Response::ok("t")
                                    .http_response_parts(200, "OK", [("X", "y")])
                                    .with_body()
                                    .build()
                                    .unwrap(),
                            )
                            .unwrap();
                            responded = true;
                        }
                        s.send_data(d).unwrap();
                    }
                }
                ServerEvent::PreviewEnd { ieof } => match decision {
                    Decision::Continue | Decision::EarlyEcho if !ieof => s.send_continue().unwrap(),
                    Decision::NoContent => {
                        s.respond(Response::no_content("t").build().unwrap())
                            .unwrap();
                        responded = true;
                    }
                    _ => {
                        s.respond(
                            Response::ok("t")
                                .http_response_parts(200, "OK", [("X", "y")])
                                .with_body()
                                .build()
                                .unwrap(),
                        )
                        .unwrap();
                        s.send_data(Bytes::from(got.clone())).unwrap();
                        s.end_response().unwrap();
                        responded = true;
                    }
                },
                ServerEvent::End(_) => {
                    if responded {
                        // The early echo ends with the request.
                        s.end_response().unwrap();
                    } else if allow_204 && matches!(decision, Decision::NoContent) {
                        s.respond(Response::no_content("t").build().unwrap())
                            .unwrap();
                    } else {
                        s.respond(
                            Response::ok("t")
                                .http_response_parts(200, "OK", [("X", "y")])
                                .with_body()
                                .build()
                                .unwrap(),
                        )
                        .unwrap();
                        s.send_data(Bytes::from(got.clone())).unwrap();
                        s.end_response().unwrap();
                    }
                    responded = true;
                }
                ServerEvent::Request(_) => {}
                other => panic!("unknown event {other:?}"),
            }
        }
        pump(&mut c, &mut s, sizes, &mut i);
        while let Some(ev) = c.poll_event().unwrap() {
            if matches!(ev, ClientEvent::Response(_)) && c.wants_body() {
                overtaken = true;
            }
            cevs.push(ev);
        }
        if c.state() == ClientState::Done && c.reuse() != Reuse::Pending {
            break;
        }
    }
    prop_assert!(responded);
    prop_assert_eq!(c.state(), ClientState::Done);
    prop_assert_eq!(s.state(), ServerState::Done);
    prop_assert_eq!(c.reuse(), Reuse::Keep);
    prop_assert_eq!(s.reuse(), Reuse::Keep);
    let unmodified = cevs.iter().any(|e| matches!(e, ClientEvent::Unmodified(_)));
    if unmodified {
        prop_assert!(matches!(decision, Decision::NoContent));
    } else {
        // The modified body echoes what the server saw: all of it, or the preview part.
        let echoed: Vec<u8> = cevs
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Data(d) => Some(d.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        prop_assert_eq!(&echoed, &got);
        let whole = match (decision, preview) {
            (Decision::Continue, _) | (_, None) | (Decision::EarlyEcho, Some(0)) => true,
            (_, Some(p)) => body.len() as u64 <= p,
        };
        if whole {
            prop_assert_eq!(&got[..], body);
        } else {
            prop_assert_eq!(&got[..], &body[..preview.unwrap() as usize]);
        }
    }
    if matches!(decision, Decision::EarlyEcho) && preview.is_none() && body.len() > pieces[0] {
        // The answer came while the body was still going out, and the body went on.
        prop_assert!(overtaken);
    }
    // The server's decoder is idle: the connection is ready for the next request.
    prop_assert!(s.into_decoder().is_idle());
    prop_assert!(c.into_decoder().is_idle());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn client_and_server_agree(
        body in prop::collection::vec(any::<u8>(), 0..600),
        preview in prop::option::of(0u64..700),
        known in any::<bool>(),
        allow_204 in any::<bool>(),
        decision in prop_oneof![
            Just(Decision::Continue),
            Just(Decision::NoContent),
            Just(Decision::Modify),
            Just(Decision::EarlyEcho),
        ],
        pieces in prop::collection::vec(1usize..200, 1..8),
        sizes in prop::collection::vec(1usize..64, 1..16),
    ) {
        run(&body, preview, known, allow_204, decision, &pieces, &sizes)?;
    }
}

#[test]
fn pump_examples() {
    // The paths of RFC 3507 4.5 by name, through both machines.
    let body = [7u8; 10];
    for preview in [None, Some(0), Some(4), Some(10), Some(11), Some(1024)] {
        for known in [false, true] {
            for d in [
                Decision::Continue,
                Decision::NoContent,
                Decision::Modify,
                Decision::EarlyEcho,
            ] {
                run(&body, preview, known, false, d, &[3], &[5]).unwrap();
                run(&[], preview, known, true, d, &[1], &[1]).unwrap();
            }
        }
    }
}

// ---- Real peers: the server machine replays every captured connection ----------------------

/// The answers in a captured response stream: head, body pieces, last chunk. Stops at the
/// first undecodable or cut-short message.
fn recorded_answers(
    wire: &[u8],
) -> std::collections::VecDeque<(Response, Vec<Bytes>, icap::LastChunk)> {
    let mut d = ResponseDecoder::default();
    d.feed(wire);
    let mut out = std::collections::VecDeque::new();
    let mut cur: Option<(Response, Vec<Bytes>)> = None;
    while let Ok(Some(ev)) = d.decode() {
        match ev {
            icap::ResponseEvent::Head(r) => cur = Some((r, Vec::new())),
            icap::ResponseEvent::Data(b) => cur.as_mut().unwrap().1.push(b),
            icap::ResponseEvent::End(last) => {
                let (r, body) = cur.take().unwrap();
                out.push_back((r, body, last));
            }
            _ => unreachable!(),
        }
    }
    out
}

#[test]
fn server_machine_accepts_what_real_clients_send_and_what_c_icap_answers() {
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".request.bin").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 20, "captures missing: {names:?}");
    let (mut continues, mut total) = (0, 0);
    for name in &names {
        let requests = std::fs::read(format!("{dir}/{name}.request.bin")).unwrap();
        let mut answers =
            recorded_answers(&std::fs::read(format!("{dir}/{name}.response.bin")).unwrap());
        let mut dec = RequestDecoder::default();
        dec.feed(&requests);
        let mut answered = 0;
        'conn: loop {
            let mut tx = ServerTransaction::new(dec);
            let mut done = false;
            let mut keep_alive = true;
            while let Some(ev) = tx.poll_event().unwrap_or_else(|e| panic!("{name}: {e}")) {
                let ieof = match ev {
                    ServerEvent::PreviewEnd { ieof } => ieof,
                    ServerEvent::End(_) if tx.state() == ServerState::Answer => false,
                    _ => continue,
                };
                let Some((res, body, last)) = answers.pop_front() else {
                    break 'conn;
                };
                if res.status == 100 {
                    assert!(!ieof, "{name}: c-icap sent 100 after ieof");
                    tx.send_continue().unwrap_or_else(|e| panic!("{name}: {e}"));
                    continues += 1;
                    continue;
                }
                // c-icap's own decision must pass the machine's rules.
                keep_alive = !res.headers.has_token("Connection", "close");
                tx.respond(res.clone())
                    .unwrap_or_else(|e| panic!("{name}: {} answer refused: {e}", res.status));
                if res.body.is_some() {
                    for piece in body {
                        tx.send_data(piece).unwrap();
                    }
                    match last.use_original_body {
                        Some(n) => tx.end_use_original_body(n).unwrap(),
                        None => tx.end_response().unwrap(),
                    }
                }
                answered += 1;
                done = true;
            }
            if !done {
                break;
            }
            match tx.reuse() {
                Reuse::Keep => {
                    assert!(keep_alive, "{name}: kept a connection c-icap closed");
                    dec = tx.into_decoder();
                }
                Reuse::Pending => {
                    // Answered early (c-icap's 206 after the preview) and the rest is not in
                    // the capture: the client stopped there.
                    break;
                }
                Reuse::Close(_) => break,
            }
        }
        assert!(answered >= 1, "{name}: nothing answered");
        total += answered;
    }
    eprintln!("{total} answers over {} captures", names.len());
    // Most captures are OPTIONS then a request on one kept connection.
    assert!(total >= names.len() + 15, "only {total} answers");
    assert!(
        continues >= 4,
        "the captures hold several 100 Continue paths"
    );
}
