//! Structured round trip: arbitrary requests and responses (heads, headers, bodies in
//! arbitrary pieces, previews with and without `ieof`, 206 endings) are written with the
//! `Encoder`, decoded in arbitrary splits, and must come back as the same structure.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use icap::{
    BodyKind, Encoder, Headers, HttpRequestHead, HttpResponseHead, LastChunk, Method, Request,
    RequestDecoder, RequestEvent, Response, ResponseDecoder, ResponseEvent,
};
use libfuzzer_sys::fuzz_target;

const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn token(u: &mut Unstructured) -> arbitrary::Result<String> {
    let n = u.int_in_range(1..=12)?;
    (0..n).map(|_| Ok(*u.choose(TCHARS)? as char)).collect()
}

/// A header value: visible bytes, spaces and obs-text inside, none at the ends.
fn value(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let n = u.int_in_range(0..=24)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let b: u8 = u.arbitrary()?;
        v.push(match b {
            0x21..=0x7e | 0x80..=0xff => b,
            b' ' | b'\t' if !v.is_empty() => b,
            _ => b'a' + b % 26,
        });
    }
    while matches!(v.last(), Some(b' ' | b'\t')) {
        v.pop();
    }
    Ok(v)
}

/// Text without spaces or controls (URIs, request targets).
fn word(u: &mut Unstructured) -> arbitrary::Result<String> {
    let n = u.int_in_range(1..=20)?;
    (0..n)
        .map(|_| Ok(char::from(u.int_in_range(0x21u8..=0x7e)?)))
        .collect()
}

fn headers(u: &mut Unstructured, reserved: &[&str]) -> arbitrary::Result<Headers> {
    let n = u.int_in_range(0..=8)?;
    let mut h = Headers::new();
    for _ in 0..n {
        let name = token(u)?;
        if reserved.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
            continue;
        }
        h.append(&name, value(u)?);
    }
    Ok(h)
}

fn req_head(u: &mut Unstructured) -> arbitrary::Result<HttpRequestHead> {
    Ok(HttpRequestHead::new(
        &token(u)?,
        &word(u)?,
        headers(u, &[])?,
    ))
}

fn res_head(u: &mut Unstructured) -> arbitrary::Result<HttpResponseHead> {
    let reason: String = (0..u.int_in_range(0..=12)?)
        .map(|_| Ok(char::from(u.int_in_range(0x20u8..=0x7e)?)))
        .collect::<arbitrary::Result<_>>()?;
    Ok(HttpResponseHead::new(
        u.int_in_range(100..=999)?,
        &reason,
        headers(u, &[])?,
    ))
}

/// A body as pieces (each becomes one chunk; empty pieces are skipped by the encoder).
fn pieces(u: &mut Unstructured) -> arbitrary::Result<Vec<Vec<u8>>> {
    let n = u.int_in_range(0..=5)?;
    (0..n)
        .map(|_| {
            let len = u.int_in_range(0..=300)?;
            let fill: u8 = u.arbitrary()?;
            Ok((0..len).map(|i| fill.wrapping_add(i as u8)).collect())
        })
        .collect()
}

fn concat(p: &[Vec<u8>]) -> Vec<u8> {
    p.concat()
}

/// What the decoder must report for one message.
#[derive(Debug, PartialEq)]
enum Ev<M> {
    Head(M),
    Body(Vec<u8>),
    PreviewEnd,
    End(LastChunk),
}

/// What one request must decode to, and what the server decides after its preview.
struct ReqCase {
    expect: Vec<Ev<Request>>,
    /// After PreviewEnd: continue (`Some(true)`) or finish (`Some(false)`).
    decision: Option<bool>,
}

fn request(u: &mut Unstructured, enc: &mut Encoder) -> arbitrary::Result<ReqCase> {
    let method = match u.int_in_range(0..=3)? {
        0 => Method::Reqmod,
        1 => Method::Respmod,
        2 => Method::Options,
        _ => {
            let t = token(u)?;
            match Method::from_bytes(t.as_bytes()).unwrap() {
                m @ Method::Other(_) => m,
                _ => Method::Other(Bytes::from_static(b"X-EXT")),
            }
        }
    };
    let mut req = Request::new(method.clone(), word(u)?);
    req.headers = headers(u, &["Encapsulated", "Preview"])?;
    let (http_req, http_res, body) = match method {
        Method::Reqmod => (bool::arbitrary(u)?, false, Some(BodyKind::Request)),
        Method::Respmod => (
            bool::arbitrary(u)?,
            bool::arbitrary(u)?,
            Some(BodyKind::Response),
        ),
        Method::Options => (false, false, Some(BodyKind::Options)),
        Method::Other(_) => (
            bool::arbitrary(u)?,
            bool::arbitrary(u)?,
            Some(*u.choose(&[BodyKind::Request, BodyKind::Response, BodyKind::Options])?),
        ),
    };
    if http_req {
        req.http_request = Some(req_head(u)?);
    }
    if http_res {
        req.http_response = Some(res_head(u)?);
    }
    if bool::arbitrary(u)? {
        req.body = body;
    }
    let previewable = matches!(method, Method::Reqmod | Method::Respmod) && req.body.is_some();
    let preview: Option<u64> = if previewable && bool::arbitrary(u)? {
        Some(u.int_in_range(0..=400)?)
    } else {
        None
    };
    if let Some(p) = preview {
        req.headers.append("Preview", p.to_string());
    }
    let mut expect = vec![Ev::Head(req.clone())];
    enc.request_head(&req).unwrap();
    let mut decision = None;
    if req.body.is_some() {
        let body = pieces(u)?;
        match preview {
            None => {
                for p in &body {
                    enc.data(Bytes::copy_from_slice(p)).unwrap();
                }
                enc.end(false).unwrap();
                push_body(&mut expect, concat(&body));
                expect.push(Ev::End(LastChunk::default()));
            }
            Some(p) => {
                // The preview carries at most p bytes; ieof when the body ends inside it.
                let all = concat(&body);
                let cut = all.len().min(p as usize);
                let (head, tail) = all.split_at(cut);
                let ieof = tail.is_empty() && bool::arbitrary(u)?;
                let mut at = 0;
                for piece in &body {
                    let take = piece.len().min(cut - at);
                    if take > 0 {
                        enc.data(Bytes::copy_from_slice(&piece[..take])).unwrap();
                    }
                    at += take;
                }
                enc.end(ieof).unwrap();
                push_body(&mut expect, head.to_vec());
                if ieof {
                    expect.push(Ev::End(LastChunk {
                        ieof: true,
                        ..LastChunk::default()
                    }));
                } else {
                    expect.push(Ev::PreviewEnd);
                    let cont = bool::arbitrary(u)?;
                    decision = Some(cont);
                    if cont {
                        for piece in tail.chunks(u.int_in_range(1..=200)?) {
                            enc.data(Bytes::copy_from_slice(piece)).unwrap();
                        }
                        enc.end(false).unwrap();
                        push_body(&mut expect, tail.to_vec());
                        expect.push(Ev::End(LastChunk::default()));
                    }
                }
            }
        }
    } else {
        expect.push(Ev::End(LastChunk::default()));
    }
    Ok(ReqCase { expect, decision })
}

fn push_body<M>(expect: &mut Vec<Ev<M>>, body: Vec<u8>) {
    if !body.is_empty() {
        expect.push(Ev::Body(body));
    }
}

fn response(u: &mut Unstructured, enc: &mut Encoder) -> arbitrary::Result<Vec<Ev<Response>>> {
    let shape = u.int_in_range(0..=4)?;
    let status = match shape {
        0 => *u.choose(&[100u16, 204])?,
        _ => loop {
            let s = u.int_in_range(101..=999)?;
            if s != 204 {
                break s;
            }
        },
    };
    let reason: String = (0..u.int_in_range(0..=12)?)
        .map(|_| Ok(char::from(u.int_in_range(0x20u8..=0x7e)?)))
        .collect::<arbitrary::Result<_>>()?;
    let mut res = Response::new(status, reason);
    res.headers = headers(u, &["Encapsulated"])?;
    let with_body = bool::arbitrary(u)?;
    match shape {
        0 => {}
        1 => {
            res.http_request = Some(req_head(u)?);
            res.body = with_body.then_some(BodyKind::Request);
        }
        2 => {
            res.http_response = Some(res_head(u)?);
            res.body = with_body.then_some(BodyKind::Response);
        }
        3 => res.body = with_body.then_some(BodyKind::Options),
        _ => {
            // A 206: a response head, a body prefix, then use-original-body.
            res.http_response = Some(res_head(u)?);
            res.body = Some(BodyKind::Response);
        }
    }
    enc.response_head(&res).unwrap();
    let mut expect = vec![Ev::Head(res.clone())];
    if res.body.is_some() {
        let body = pieces(u)?;
        for p in &body {
            enc.data(Bytes::copy_from_slice(p)).unwrap();
        }
        let mut last = LastChunk::default();
        if shape == 4 {
            let n: u64 = u.arbitrary()?;
            enc.end_use_original_body(n).unwrap();
            last.use_original_body = Some(n);
        } else {
            enc.end(false).unwrap();
        }
        push_body(&mut expect, concat(&body));
        expect.push(Ev::End(last));
    } else {
        expect.push(Ev::End(LastChunk::default()));
    }
    Ok(expect)
}

fn merge<M>(out: &mut Vec<Ev<M>>, ev: Ev<M>) {
    match ev {
        Ev::Body(d) => match out.last_mut() {
            Some(Ev::Body(b)) => b.extend_from_slice(&d),
            _ => out.push(Ev::Body(d)),
        },
        ev => out.push(ev),
    }
}

fn req_ev(ev: RequestEvent) -> Ev<Request> {
    match ev {
        RequestEvent::Head(m) => Ev::Head(m),
        RequestEvent::Data(d) => Ev::Body(d.to_vec()),
        RequestEvent::PreviewEnd => Ev::PreviewEnd,
        RequestEvent::End(l) => Ev::End(l),
        other => panic!("unknown event {other:?}"),
    }
}

fn res_ev(ev: ResponseEvent) -> Ev<Response> {
    match ev {
        ResponseEvent::Head(m) => Ev::Head(m),
        ResponseEvent::Data(d) => Ev::Body(d.to_vec()),
        ResponseEvent::End(l) => Ev::End(l),
        other => panic!("unknown event {other:?}"),
    }
}

fn splits(u: &mut Unstructured) -> arbitrary::Result<Vec<usize>> {
    let n = u.int_in_range(1..=4)?;
    (0..n).map(|_| u.int_in_range(1..=600)).collect()
}

/// Decoded headers hold the Encapsulated line as received; the built message does not.
fn strip_encapsulated(h: &Headers) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(b"Encapsulated"))
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}

fn same_request(a: &Request, b: &Request) -> bool {
    a.method == b.method
        && a.uri == b.uri
        && a.version == b.version
        && strip_encapsulated(&a.headers) == strip_encapsulated(&b.headers)
        && a.http_request == b.http_request
        && a.http_response == b.http_response
        && a.body == b.body
}

fn same_response(a: &Response, b: &Response) -> bool {
    a.version == b.version
        && a.status == b.status
        && a.reason == b.reason
        && strip_encapsulated(&a.headers) == strip_encapsulated(&b.headers)
        && a.http_request == b.http_request
        && a.http_response == b.http_response
        && a.body == b.body
}

fn check_events<M: std::fmt::Debug>(got: &[Ev<M>], want: &[Ev<M>], same: impl Fn(&M, &M) -> bool) {
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    for (g, w) in got.iter().zip(want) {
        let ok = match (g, w) {
            (Ev::Head(a), Ev::Head(b)) => same(a, b),
            (Ev::Body(a), Ev::Body(b)) => a == b,
            (Ev::PreviewEnd, Ev::PreviewEnd) => true,
            (Ev::End(a), Ev::End(b)) => a == b,
            _ => false,
        };
        assert!(ok, "got {g:?}\nwant {w:?}");
    }
}

fn requests(u: &mut Unstructured) -> arbitrary::Result<()> {
    let mut enc = Encoder::new();
    let mut cases = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        cases.push(request(u, &mut enc)?);
    }
    let wire = enc.to_bytes();
    let sizes = splits(u)?;
    let mut dec = RequestDecoder::default();
    let mut got = Vec::new();
    let decisions: Vec<bool> = cases.iter().filter_map(|c| c.decision).collect();
    let mut d = decisions.iter();
    let (mut pos, mut k) = (0, 0);
    loop {
        while let Some(ev) = dec.decode().unwrap_or_else(|e| panic!("{e}")) {
            merge(&mut got, req_ev(ev));
        }
        if dec.awaiting_preview_decision() {
            if *d.next().expect("a preview nobody announced") {
                dec.continue_after_preview().unwrap();
            } else {
                dec.finish_after_preview().unwrap();
            }
            continue;
        }
        if pos == wire.len() {
            break;
        }
        let n = sizes[k % sizes.len()].min(wire.len() - pos);
        k += 1;
        dec.feed(&wire[pos..pos + n]);
        pos += n;
    }
    dec.decode_eof().unwrap();
    assert!(dec.is_idle());
    let want: Vec<Ev<Request>> = cases.into_iter().flat_map(|c| c.expect).collect();
    check_events(&got, &want, same_request);
    Ok(())
}

fn responses(u: &mut Unstructured) -> arbitrary::Result<()> {
    let mut enc = Encoder::new();
    let mut want = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        want.extend(response(u, &mut enc)?);
    }
    let wire = enc.to_bytes();
    let sizes = splits(u)?;
    let mut dec = ResponseDecoder::default();
    let mut got = Vec::new();
    let (mut pos, mut k) = (0, 0);
    loop {
        while let Some(ev) = dec.decode().unwrap_or_else(|e| panic!("{e}")) {
            merge(&mut got, res_ev(ev));
        }
        if pos == wire.len() {
            break;
        }
        let n = sizes[k % sizes.len()].min(wire.len() - pos);
        k += 1;
        dec.feed(&wire[pos..pos + n]);
        pos += n;
    }
    dec.decode_eof().unwrap();
    check_events(&got, &want, same_response);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = if data.first().is_some_and(|b| b & 1 == 1) {
        let _ = u.arbitrary::<u8>();
        requests(&mut u)
    } else {
        let _ = u.arbitrary::<u8>();
        responses(&mut u)
    };
});
