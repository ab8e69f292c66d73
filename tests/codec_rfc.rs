//! RFC 3507's example messages (4.8.3, 4.9.3, 4.10.3, and the preview examples of 4.5):
//! each decodes to the expected structure under every split of its bytes, and encodes back
//! to the same bytes.

mod common;

use bytes::{Bytes, BytesMut};
use common::{data, requests_all_splits, responses_all_splits, Ev};
use icap::{BodyKind, Encoder, Method, Request, Response, Version};

fn encode_request(req: &Request, body: Option<&[u8]>) -> Bytes {
    let mut e = Encoder::new();
    e.request_head(req).unwrap();
    if let Some(b) = body {
        e.data(Bytes::copy_from_slice(b)).unwrap();
        e.end(false).unwrap();
    }
    e.to_bytes()
}

fn encode_response(res: &Response, body: Option<&[u8]>) -> Bytes {
    let mut e = Encoder::new();
    e.response_head(res).unwrap();
    if let Some(b) = body {
        e.data(Bytes::copy_from_slice(b)).unwrap();
        e.end(false).unwrap();
    }
    e.to_bytes()
}

fn one_request(name: &str) -> (Request, Option<Vec<u8>>, Vec<u8>) {
    let wire = data(name);
    let evs = requests_all_splits(&wire).unwrap();
    match &evs[..] {
        [Ev::Head(r), Ev::End(l)] => {
            assert!(!l.ieof);
            (r.clone(), None, wire)
        }
        [Ev::Head(r), Ev::Body(b), Ev::End(l)] => {
            assert!(!l.ieof && l.use_original_body.is_none() && l.trailers.is_none());
            (r.clone(), Some(b.clone()), wire)
        }
        other => panic!("{name}: unexpected events {other:?}"),
    }
}

fn one_response(name: &str) -> (Response, Option<Vec<u8>>, Vec<u8>) {
    let wire = data(name);
    let evs = responses_all_splits(&wire).unwrap();
    match &evs[..] {
        [Ev::Head(r), Ev::End(_)] => (r.clone(), None, wire),
        [Ev::Head(r), Ev::Body(b), Ev::End(_)] => (r.clone(), Some(b.clone()), wire),
        other => panic!("{name}: unexpected events {other:?}"),
    }
}

fn header_list(h: &icap::Headers) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into(),
                String::from_utf8_lossy(v).into(),
            )
        })
        .collect()
}

#[test]
fn example1_reqmod_get() {
    let (req, body, wire) = one_request("rfc/ex1-request.bin");
    assert_eq!(req.method, Method::Reqmod);
    assert_eq!(&req.uri[..], b"icap://icap-server.net/server?arg=87");
    assert_eq!(req.version, Version::ICAP_1_0);
    assert_eq!(
        header_list(&req.headers),
        vec![
            ("Host".into(), "icap-server.net".into()),
            ("Encapsulated".into(), "req-hdr=0, null-body=170".into())
        ]
    );
    let http = req.http_request.as_ref().unwrap();
    assert_eq!(http.line(), "GET / HTTP/1.1");
    assert_eq!(http.headers.len(), 5);
    assert_eq!(
        http.headers.get("cookie"),
        Some(&b"ff39fk3jur@4ii0e02i"[..])
    );
    assert_eq!(
        http.headers.get("If-None-Match"),
        Some(&br#""xyzzy", "r2d2xxxx""#[..])
    );
    assert!(req.http_response.is_none());
    assert_eq!((req.body, body), (None, None));
    assert_eq!(req.encapsulated().to_string(), "req-hdr=0, null-body=170");
    assert_eq!(encode_request(&req, None), wire);

    let (res, body, wire) = one_response("rfc/ex1-response.bin");
    assert_eq!((res.status, &res.reason[..]), (200, &b"OK"[..]));
    assert_eq!(
        res.headers.get("Date"),
        Some(&b"Mon, 10 Jan 2000  09:55:21 GMT"[..])
    );
    assert_eq!(res.headers.get("ISTag"), Some(&br#""W3E4R7U9-L2E4-2""#[..]));
    let http = res.http_request.as_ref().unwrap();
    assert_eq!(http.line(), "GET /modified-path HTTP/1.1");
    assert_eq!(
        http.headers.get("Via"),
        Some(&b"1.0 icap-server.net (ICAP Example ReqMod Service 1.1)"[..])
    );
    assert_eq!(body, None);
    assert_eq!(encode_response(&res, None), wire);
}

#[test]
fn example2_reqmod_post() {
    let (req, body, wire) = one_request("rfc/ex2-request.bin");
    assert_eq!(req.body, Some(BodyKind::Request));
    assert_eq!(
        req.http_request.as_ref().unwrap().line(),
        "POST /origin-resource/form.pl HTTP/1.1"
    );
    assert_eq!(
        body.as_deref(),
        Some(&b"I am posting this information."[..])
    );
    assert_eq!(encode_request(&req, body.as_deref()), wire);

    let (res, body, wire) = one_response("rfc/ex2-response.bin");
    let http = res.http_request.as_ref().unwrap();
    assert_eq!(http.headers.get("Content-Length"), Some(&b"45"[..]));
    assert_eq!(
        body.as_deref(),
        Some(&b"I am posting this information.  ICAP powered!"[..])
    );
    assert_eq!(res.body, Some(BodyKind::Request));
    assert_eq!(encode_response(&res, body.as_deref()), wire);
}

#[test]
fn example3_reqmod_answered_with_403() {
    let (req, body, wire) = one_request("rfc/ex3-request.bin");
    assert_eq!(&req.uri[..], b"icap://icap-server.net/content-filter");
    assert_eq!(body, None);
    assert_eq!(encode_request(&req, None), wire);

    let (res, body, wire) = one_response("rfc/ex3-response.bin");
    assert!(res.http_request.is_none());
    let http = res.http_response.as_ref().unwrap();
    assert_eq!((http.status, &http.reason[..]), (403, &b"Forbidden"[..]));
    assert_eq!(http.line(), "HTTP/1.1 403 Forbidden");
    assert_eq!(http.headers.len(), 6);
    assert_eq!(res.body, Some(BodyKind::Response));
    assert_eq!(
        body.as_deref(),
        Some(&b"Sorry, you are not allowed to access that naughty content."[..])
    );
    assert_eq!(encode_response(&res, body.as_deref()), wire);
}

#[test]
fn example4_respmod() {
    let (req, body, wire) = one_request("rfc/ex4-request.bin");
    assert_eq!(req.method, Method::Respmod);
    assert_eq!(
        req.http_request.as_ref().unwrap().line(),
        "GET /origin-resource HTTP/1.1"
    );
    let res_head = req.http_response.as_ref().unwrap();
    assert_eq!(res_head.line(), "HTTP/1.1 200 OK");
    assert_eq!(
        res_head.headers.get("etag"),
        Some(&br#""63840-1ab7-378d415b""#[..])
    );
    assert_eq!(
        req.encapsulated().to_string(),
        "req-hdr=0, res-hdr=137, res-body=296"
    );
    assert_eq!(
        body.as_deref(),
        Some(&b"This is data that was returned by an origin server."[..])
    );
    assert_eq!(encode_request(&req, body.as_deref()), wire);

    let (res, body, wire) = one_response("rfc/ex4-response.bin");
    assert_eq!(
        res.http_response
            .as_ref()
            .unwrap()
            .headers
            .get("Content-Length"),
        Some(&b"92"[..])
    );
    assert_eq!(body.as_ref().map(Vec::len), Some(92));
    assert_eq!(encode_response(&res, body.as_deref()), wire);
}

#[test]
fn example5_options() {
    let (req, body, wire) = one_request("rfc/ex5-request.bin");
    assert_eq!(req.method, Method::Options);
    assert_eq!(
        req.headers.get("User-Agent"),
        Some(&b"BazookaDotCom-ICAP-Client-Library/2.3"[..])
    );
    assert!(req.headers.get("Encapsulated").is_none());
    assert_eq!(body, None);
    // No Encapsulated in, none out: the request is rebuilt exactly.
    assert_eq!(encode_request(&req, None), wire);

    let (res, body, wire) = one_response("rfc/ex5-response.bin");
    assert_eq!(res.headers.get("Methods"), Some(&b"RESPMOD"[..]));
    assert_eq!(res.headers.get("Preview"), Some(&b"2048"[..]));
    assert_eq!(
        res.headers.get("Transfer-Complete"),
        Some(&b"asp, bat, exe, com"[..])
    );
    assert_eq!(res.headers.len(), 12);
    assert_eq!(body, None);
    // Encapsulated keeps its place among the headers.
    assert_eq!(encode_response(&res, None), wire);
}

/// Builds a RESPMOD with a `Preview` header and the given chunked body framing.
fn preview_request(preview: u64, chunks: &[&[u8]]) -> Vec<u8> {
    let mut head = BytesMut::new();
    let mut req = Request::new(Method::Respmod, "icap://icap.example.org/satisf");
    req.headers.append("Host", "icap.example.org");
    req.headers.append("Preview", preview.to_string());
    req.http_response = Some(icap::HttpResponseHead::new(200, "OK", icap::Headers::new()));
    req.body = Some(BodyKind::Response);
    req.write_to(&mut head);
    let mut out = head.to_vec();
    for c in chunks {
        out.extend_from_slice(c);
    }
    out
}

#[test]
fn preview_zero_byte_body_with_ieof() {
    // RFC 3507 4.5: "\r\n0; ieof\r\n\r\n" after the heads: the whole (empty) body.
    let wire = preview_request(1024, &[b"0; ieof\r\n\r\n"]);
    let evs = requests_all_splits(&wire).unwrap();
    match &evs[..] {
        [Ev::Head(r), Ev::End(l)] => {
            assert_eq!(r.preview(), Some(1024));
            assert!(l.ieof);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn preview_whole_body_in_two_chunks_with_ieof() {
    let half = vec![b'a'; 512];
    let mut c = b"200\r\n".to_vec();
    c.extend_from_slice(&half);
    c.extend_from_slice(b"\r\n");
    let wire = preview_request(1024, &[&c, &c, b"0; ieof\r\n\r\n"]);
    let evs = requests_all_splits(&wire).unwrap();
    match &evs[..] {
        [Ev::Head(_), Ev::Body(b), Ev::End(l)] => {
            assert_eq!(b.len(), 1024);
            assert!(l.ieof);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn preview_then_100_continue_then_rest() {
    let half = vec![b'a'; 512];
    let mut c = b"200\r\n".to_vec();
    c.extend_from_slice(&half);
    c.extend_from_slice(b"\r\n");
    let wire = preview_request(1024, &[&c, &c, b"0\r\n\r\n", b"1\r\nz\r\n0\r\n\r\n"]);
    let evs = requests_all_splits(&wire).unwrap();
    match &evs[..] {
        [Ev::Head(_), Ev::Body(p), Ev::PreviewEnd, Ev::Body(rest), Ev::End(l)] => {
            assert_eq!(p.len(), 1024);
            assert_eq!(rest, b"z");
            assert!(!l.ieof);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn preview_answered_without_continue_then_next_request() {
    // The server answered the preview (204): the next bytes are a new request.
    let mut wire = preview_request(4, &[b"4\r\nabcd\r\n0\r\n\r\n"]);
    wire.extend_from_slice(&data("rfc/ex5-request.bin"));
    let mut dec = icap::RequestDecoder::default();
    dec.feed(&wire);
    assert!(matches!(
        dec.decode().unwrap(),
        Some(icap::RequestEvent::Head(_))
    ));
    assert!(
        matches!(dec.decode().unwrap(), Some(icap::RequestEvent::Data(d)) if &d[..] == b"abcd")
    );
    assert!(matches!(
        dec.decode().unwrap(),
        Some(icap::RequestEvent::PreviewEnd)
    ));
    assert!(dec.decode().unwrap().is_none(), "waits for the decision");
    dec.finish_after_preview().unwrap();
    match dec.decode().unwrap() {
        Some(icap::RequestEvent::Head(r)) => assert_eq!(r.method, Method::Options),
        other => panic!("{other:?}"),
    }
}

#[test]
fn keep_alive_sequence_decodes_in_order() {
    let mut wire = Vec::new();
    for n in [
        "rfc/ex1-request.bin",
        "rfc/ex2-request.bin",
        "rfc/ex5-request.bin",
        "rfc/ex4-request.bin",
    ] {
        wire.extend_from_slice(&data(n));
    }
    let evs = requests_all_splits(&wire).unwrap();
    let methods: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Ev::Head(r) => Some(r.method.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        methods,
        vec![
            Method::Reqmod,
            Method::Reqmod,
            Method::Options,
            Method::Respmod
        ]
    );
    assert_eq!(evs.iter().filter(|e| matches!(e, Ev::End(_))).count(), 4);

    let mut wire = Vec::new();
    for n in [
        "rfc/ex1-response.bin",
        "rfc/ex3-response.bin",
        "rfc/ex5-response.bin",
    ] {
        wire.extend_from_slice(&data(n));
    }
    wire.extend_from_slice(
        b"ICAP/1.0 204 Unmodified\r\nISTag: \"a\"\r\n\r\nICAP/1.0 100 Continue\r\n\r\n",
    );
    let evs = responses_all_splits(&wire).unwrap();
    let statuses: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Ev::Head(r) => Some(r.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 204, 100]);
}
