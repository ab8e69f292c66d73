//! Property tests of the codec: round trips of generated messages through the `Encoder` and the
//! decoders, split independence of valid and damaged streams, and the memory bounds the limits
//! promise. Case counts are kept small so that the file runs in a few seconds in debug builds;
//! the fuzz targets in `fuzz/` cover the same ground at volume.

mod common;

use bytes::Bytes;
use common::{decode_requests, decode_responses, Ev};
use icap::{
    BodyKind, Encoder, Error, ErrorKind, Headers, HttpRequestHead, HttpResponseHead, LastChunk,
    Limits, Method, Request, RequestDecoder, RequestEvent, Response, ResponseDecoder,
    ResponseEvent,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[!#$%&'*+.^_`|~0-9a-zA-Z-]{1,10}"
}

/// A header value as the decoder returns it: visible ASCII, obs-text and inner whitespace.
fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff, Just(b' '), Just(b'\t')],
        0..16,
    )
    .prop_map(|mut v| {
        while matches!(v.last(), Some(b' ' | b'\t')) {
            v.pop();
        }
        while matches!(v.first(), Some(b' ' | b'\t')) {
            v.remove(0);
        }
        v
    })
}

fn headers(reserved: &'static [&'static str]) -> impl Strategy<Value = Headers> {
    vec((token(), value()), 0..6).prop_map(move |list| {
        let mut h = Headers::new();
        for (n, v) in list {
            if !reserved.iter().any(|r| r.eq_ignore_ascii_case(&n)) {
                h.append(&n, v);
            }
        }
        h
    })
}

fn req_head() -> impl Strategy<Value = HttpRequestHead> {
    (token(), "[!-~]{1,24}", headers(&[])).prop_map(|(m, t, h)| HttpRequestHead::new(&m, &t, h))
}

fn res_head() -> impl Strategy<Value = HttpResponseHead> {
    (100u16..1000, "[ -~]{0,12}", headers(&[]))
        .prop_map(|(s, r, h)| HttpResponseHead::new(s, &r, h))
}

/// A body as pieces of random sizes; each non-empty piece becomes one chunk.
fn pieces() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(vec(any::<u8>(), 0..120), 0..5)
}

#[derive(Debug, Clone)]
struct Preview {
    size: u64,
    /// End the body inside the preview with `ieof` (when it fits).
    ieof: bool,
    /// After the preview: the server sent 100 (the rest follows) or a final answer.
    cont: bool,
    /// Chunk size of the rest after 100.
    rest_chunk: usize,
}

#[derive(Debug, Clone)]
struct ReqCase {
    req: Request,
    body: Vec<Vec<u8>>,
    preview: Option<Preview>,
}

fn req_case() -> impl Strategy<Value = ReqCase> {
    (
        (0u8..4, token(), "[!-~]{1,30}"),
        headers(&["Encapsulated", "Preview"]),
        (option::of(req_head()), option::of(res_head())),
        (any::<bool>(), 0u8..3, pieces()),
        option::of((0u64..300, any::<bool>(), any::<bool>(), 1usize..100)),
    )
        .prop_map(|((m, ext, uri), h, (rq, rs), (has_body, kind, body), pv)| {
            let method = match m {
                0 => Method::Reqmod,
                1 => Method::Respmod,
                2 => Method::Options,
                _ => match Method::from_bytes(ext.as_bytes()).unwrap() {
                    o @ Method::Other(_) => o,
                    _ => Method::Other(Bytes::from_static(b"X-EXT")),
                },
            };
            let mut req = Request::new(method.clone(), uri);
            req.headers = h;
            let kinds = [BodyKind::Request, BodyKind::Response, BodyKind::Options];
            let (rq, rs, kind) = match method {
                Method::Reqmod => (rq, None, BodyKind::Request),
                Method::Respmod => (rq, rs, BodyKind::Response),
                Method::Options => (None, None, BodyKind::Options),
                Method::Other(_) => (rq, rs, kinds[kind as usize]),
            };
            req.http_request = rq;
            req.http_response = rs;
            req.body = has_body.then_some(kind);
            let previewable =
                matches!(method, Method::Reqmod | Method::Respmod) && req.body.is_some();
            let preview = pv
                .filter(|_| previewable)
                .map(|(size, ieof, cont, rest_chunk)| {
                    req.headers.append("Preview", size.to_string());
                    Preview {
                        size,
                        ieof,
                        cont,
                        rest_chunk,
                    }
                });
            ReqCase { req, body, preview }
        })
}

#[derive(Debug, Clone)]
struct ResCase {
    res: Response,
    body: Vec<Vec<u8>>,
    use_original_body: Option<u64>,
}

fn res_case() -> impl Strategy<Value = ResCase> {
    (
        (0u8..5, 101u16..1000, prop_oneof![Just(100u16), Just(204)]),
        "[ -~]{0,12}",
        headers(&["Encapsulated"]),
        (
            req_head(),
            res_head(),
            any::<bool>(),
            pieces(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((shape, s, s0), reason, h, (rq, rs, with_body, body, uob))| {
                let status = match shape {
                    0 => s0,
                    _ if s == 204 => 200,
                    _ => s,
                };
                let mut res = Response::new(status, reason);
                res.headers = h;
                let mut use_original_body = None;
                match shape {
                    0 => {}
                    1 => {
                        res.http_request = Some(rq);
                        res.body = with_body.then_some(BodyKind::Request);
                    }
                    2 => {
                        res.http_response = Some(rs);
                        res.body = with_body.then_some(BodyKind::Response);
                    }
                    3 => res.body = with_body.then_some(BodyKind::Options),
                    _ => {
                        res.http_response = Some(rs);
                        res.body = Some(BodyKind::Response);
                        use_original_body = Some(uob);
                    }
                }
                ResCase {
                    res,
                    body,
                    use_original_body,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------
// Encoding a case and what decoding it must give
// ---------------------------------------------------------------------------------------

/// The decoded form of a built message: the headers gain the computed Encapsulated at the end
/// (where the encoder writes it), except where no Encapsulated is written at all.
fn decoded_request(req: &Request) -> Request {
    let mut r = req.clone();
    if !(req.method == Method::Options && req.body.is_none()) {
        r.headers
            .append("Encapsulated", req.encapsulated().to_string());
    }
    r
}

fn decoded_response(res: &Response) -> Response {
    let mut r = res.clone();
    let bare = matches!(res.status, 100 | 204)
        && res.body.is_none()
        && res.http_request.is_none()
        && res.http_response.is_none();
    if !bare {
        r.headers
            .append("Encapsulated", res.encapsulated().to_string());
    }
    r
}

fn push_body<M>(expect: &mut Vec<Ev<M>>, body: &[u8]) {
    if !body.is_empty() {
        expect.push(Ev::Body(body.to_vec()));
    }
}

fn ieof(ieof: bool) -> LastChunk {
    LastChunk {
        ieof,
        ..LastChunk::default()
    }
}

/// Encodes `cases` one after another; returns the wire bytes, the events a server must
/// decode, and the decision it makes after each preview without ieof.
fn encode_requests(cases: &[ReqCase]) -> (Vec<u8>, Vec<Ev<Request>>, Vec<bool>) {
    let mut enc = Encoder::new();
    let mut expect = Vec::new();
    let mut decisions = Vec::new();
    for c in cases {
        enc.request_head(&c.req).unwrap();
        expect.push(Ev::Head(decoded_request(&c.req)));
        if c.req.body.is_none() {
            expect.push(Ev::End(LastChunk::default()));
            continue;
        }
        let all = c.body.concat();
        let Some(p) = &c.preview else {
            for piece in &c.body {
                enc.data(Bytes::copy_from_slice(piece)).unwrap();
            }
            enc.end(false).unwrap();
            push_body(&mut expect, &all);
            expect.push(Ev::End(LastChunk::default()));
            continue;
        };
        let cut = all.len().min(p.size as usize);
        let (head, tail) = all.split_at(cut);
        // The preview goes out in the generated pieces, cut at the preview size.
        let mut at = 0;
        for piece in &c.body {
            let take = piece.len().min(cut - at);
            enc.data(Bytes::copy_from_slice(&piece[..take])).unwrap();
            at += take;
        }
        let ends_inside = tail.is_empty() && p.ieof;
        enc.end(ends_inside).unwrap();
        push_body(&mut expect, head);
        if ends_inside {
            expect.push(Ev::End(ieof(true)));
            continue;
        }
        expect.push(Ev::PreviewEnd);
        decisions.push(p.cont);
        if p.cont {
            for piece in tail.chunks(p.rest_chunk) {
                enc.data(Bytes::copy_from_slice(piece)).unwrap();
            }
            enc.end(false).unwrap();
            push_body(&mut expect, tail);
            expect.push(Ev::End(LastChunk::default()));
        }
    }
    (enc.to_bytes().to_vec(), expect, decisions)
}

fn encode_responses(cases: &[ResCase]) -> (Vec<u8>, Vec<Ev<Response>>) {
    let mut enc = Encoder::new();
    let mut expect = Vec::new();
    for c in cases {
        enc.response_head(&c.res).unwrap();
        expect.push(Ev::Head(decoded_response(&c.res)));
        if c.res.body.is_none() {
            expect.push(Ev::End(LastChunk::default()));
            continue;
        }
        for piece in &c.body {
            enc.data(Bytes::copy_from_slice(piece)).unwrap();
        }
        let mut last = LastChunk::default();
        match c.use_original_body {
            Some(n) => {
                enc.end_use_original_body(n).unwrap();
                last.use_original_body = Some(n);
            }
            None => enc.end(false).unwrap(),
        }
        push_body(&mut expect, &c.body.concat());
        expect.push(Ev::End(last));
    }
    (enc.to_bytes().to_vec(), expect)
}

fn merge(out: &mut Vec<Ev<Request>>, ev: RequestEvent) {
    match ev {
        RequestEvent::Head(m) => out.push(Ev::Head(m)),
        RequestEvent::Data(d) => match out.last_mut() {
            Some(Ev::Body(b)) => b.extend_from_slice(&d),
            _ => out.push(Ev::Body(d.to_vec())),
        },
        RequestEvent::PreviewEnd => out.push(Ev::PreviewEnd),
        RequestEvent::End(l) => out.push(Ev::End(l)),
        other => panic!("unknown event {other:?}"),
    }
}

/// A server's view: feeds `wire` in pieces cycling through `sizes` and makes the given preview
/// decisions in order.
fn serve(wire: &[u8], sizes: &[usize], decisions: &[bool]) -> Result<Vec<Ev<Request>>, Error> {
    let mut dec = RequestDecoder::default();
    let mut out = Vec::new();
    let mut d = decisions.iter();
    let (mut pos, mut k) = (0, 0);
    loop {
        while let Some(ev) = dec.decode()? {
            merge(&mut out, ev);
        }
        if dec.awaiting_preview_decision() {
            if *d.next().expect("an unannounced preview") {
                dec.continue_after_preview()?;
            } else {
                dec.finish_after_preview()?;
            }
            continue;
        }
        if pos == wire.len() {
            dec.decode_eof()?;
            assert!(dec.is_idle());
            assert!(d.next().is_none(), "a preview decision was not asked for");
            return Ok(out);
        }
        let n = sizes[k % sizes.len()].min(wire.len() - pos);
        k += 1;
        dec.feed(&wire[pos..pos + n]);
        pos += n;
    }
}

fn same<M: PartialEq>(a: &Result<Vec<Ev<M>>, Error>, b: &Result<Vec<Ev<M>>, Error>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => (a.kind(), a.offset()) == (b.kind(), b.offset()),
        _ => false,
    }
}

/// Damages `wire`: each edit replaces, inserts or deletes one byte at a position.
fn damage(wire: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = wire.to_vec();
    for &(at, op, byte) in edits {
        if v.is_empty() {
            v.push(byte);
            continue;
        }
        let i = at % v.len();
        match op % 3 {
            0 => v[i] = byte,
            1 => v.insert(i, byte),
            _ => {
                v.remove(i);
            }
        }
    }
    v
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..64, 1..5)
}

/// Bytes that often matter to the grammar, so that edits hit framing, not just text.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b' '),
        Just(b';'),
        Just(b':'),
        Just(b'0'),
        Just(b'f'),
        Just(0u8),
        any::<u8>()
    ]
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Requests written by the Encoder decode to the same structure, body and preview events,
    /// under any split.
    #[test]
    fn requests_round_trip(cases in vec(req_case(), 1..4), sizes in sizes()) {
        let (wire, expect, decisions) = encode_requests(&cases);
        let whole = serve(&wire, &[wire.len()], &decisions).unwrap();
        prop_assert_eq!(&whole, &expect);
        let split = serve(&wire, &sizes, &decisions).unwrap();
        prop_assert_eq!(&split, &expect);
    }

    /// Responses (100/204 without heads, 200s with either head or none, 206 with
    /// use-original-body) round-trip the same way.
    #[test]
    fn responses_round_trip(cases in vec(res_case(), 1..4), sizes in sizes()) {
        let (wire, expect) = encode_responses(&cases);
        prop_assert_eq!(&decode_responses(&wire, &[wire.len()]).unwrap(), &expect);
        prop_assert_eq!(&decode_responses(&wire, &sizes).unwrap(), &expect);
    }

    /// Any split of a damaged request stream gives the same events or the same error (kind
    /// and offset) as the stream fed whole.
    #[test]
    fn damaged_requests_decode_the_same_under_any_split(
        cases in vec(req_case(), 1..3),
        edits in vec((any::<usize>(), any::<u8>(), edit_byte()), 0..4),
        sizes in sizes(),
    ) {
        let (wire, _, _) = encode_requests(&cases);
        let input = damage(&wire, &edits);
        let whole = decode_requests(&input, &[input.len().max(1)]);
        let split = decode_requests(&input, &sizes);
        let bytewise = decode_requests(&input, &[1]);
        prop_assert!(same(&whole, &split), "{} vs {}", common::short(&whole), common::short(&split));
        prop_assert!(same(&whole, &bytewise), "{} vs {}", common::short(&whole), common::short(&bytewise));
    }

    /// The same for responses.
    #[test]
    fn damaged_responses_decode_the_same_under_any_split(
        cases in vec(res_case(), 1..3),
        edits in vec((any::<usize>(), any::<u8>(), edit_byte()), 0..4),
        sizes in sizes(),
    ) {
        let (wire, _) = encode_responses(&cases);
        let input = damage(&wire, &edits);
        let whole = decode_responses(&input, &[input.len().max(1)]);
        let split = decode_responses(&input, &sizes);
        prop_assert!(same(&whole, &split), "{} vs {}", common::short(&whole), common::short(&split));
    }

    /// Whatever the bytes, with small limits the decoder never holds more than its largest
    /// head or trailer limit between calls, and an error leaves it failed for good.
    #[test]
    fn buffered_bytes_stay_within_the_limits(
        cases in vec(req_case(), 1..3),
        edits in vec((any::<usize>(), any::<u8>(), edit_byte()), 0..6),
        garbage in vec(any::<u8>(), 0..600),
        sizes in sizes(),
    ) {
        let limits = Limits::default().with_max_icap_head(200).with_max_http_head(250).with_max_headers(5).with_max_folded_value(100).with_max_chunk_line(16).with_max_trailer(40).with_max_preview(100).with_max_body(Some(400));
        let bound = 250;
        let (wire, _, _) = encode_requests(&cases);
        let mut input = damage(&wire, &edits);
        input.extend_from_slice(&garbage);
        let mut dec = RequestDecoder::new(limits);
        let (mut pos, mut k) = (0, 0);
        let failed = loop {
            let r = loop {
                match dec.decode() {
                    Ok(Some(_)) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if r.is_err() {
                break true;
            }
            if dec.awaiting_preview_decision() {
                dec.continue_after_preview().unwrap();
                continue;
            }
            prop_assert!(dec.buffered().len() <= bound, "held {}", dec.buffered().len());
            if pos == input.len() {
                break dec.decode_eof().is_err();
            }
            let n = sizes[k % sizes.len()].min(input.len() - pos);
            k += 1;
            dec.feed(&input[pos..pos + n]);
            pos += n;
        };
        if failed {
            prop_assert!(dec.is_failed());
            prop_assert_eq!(dec.decode().unwrap_err().kind(), ErrorKind::InvalidState);
        }
    }

    /// A head that never ends: the decoder holds at most `max_icap_head` bytes between calls
    /// and refuses at exactly that offset, whatever the line shapes and piece sizes.
    #[test]
    fn a_never_ending_head_is_refused_at_the_limit(
        lines in vec(("[A-Za-z-]{1,12}", "[ -~]{0,40}"), 1..400),
        sizes in sizes(),
        max in 64usize..2048,
    ) {
        let mut input = b"RESPMOD icap://x/ ICAP/1.0\r\n".to_vec();
        while input.len() <= max + 64 {
            for (n, v) in &lines {
                input.extend_from_slice(format!("{n}: {}\r\n", v.trim()).as_bytes());
            }
        }
        let mut dec = RequestDecoder::new(Limits::default().with_max_icap_head(max).with_max_headers(10_000));
        let (mut pos, mut k) = (0, 0);
        let e = loop {
            match dec.decode() {
                Ok(None) => {}
                Ok(Some(ev)) => panic!("event {ev:?} from an endless head"),
                Err(e) => break e,
            }
            prop_assert!(dec.buffered().len() <= max);
            prop_assert!(pos < input.len(), "no error by the end of the input");
            let n = sizes[k % sizes.len()].min(input.len() - pos);
            k += 1;
            dec.feed(&input[pos..pos + n]);
            pos += n;
        };
        prop_assert_eq!((e.kind(), e.offset()), (ErrorKind::IcapHeadTooLarge, max as u64));
        // Refused as soon as the limit was passed: the last piece crossed it.
        prop_assert!(pos - sizes[(k - 1) % sizes.len()].min(pos) <= max);
    }

    /// A chunk-size line that never ends is refused at `max_chunk_line`, and the decoder holds
    /// none of it: a size line is state, and extension bytes are bounded by the limit.
    #[test]
    fn a_never_ending_chunk_line_is_refused_at_the_limit(
        ext in "[a-z=;\" \t]{1,50}",
        zeros in 0usize..8,
        max in 4usize..300,
        sizes in sizes(),
    ) {
        let mut head = b"ICAP/1.0 200 OK\r\nEncapsulated: opt-body=0\r\n\r\n".to_vec();
        let body_at = head.len();
        head.extend(vec![b'0'; zeros]);
        head.extend_from_slice(b"1;");
        while head.len() < body_at + max + 200 {
            head.extend_from_slice(ext.as_bytes());
        }
        let mut dec = ResponseDecoder::new(Limits::default().with_max_chunk_line(max));
        let (mut pos, mut k) = (0, 0);
        let mut held = 0;
        let e = loop {
            match dec.decode() {
                Ok(None) => {}
                Ok(Some(ResponseEvent::Head(_))) => continue,
                Ok(Some(ev)) => panic!("event {ev:?} from an endless chunk line"),
                Err(e) => break e,
            }
            held = held.max(dec.buffered().len());
            prop_assert!(pos < head.len(), "no error by the end of the input");
            let n = sizes[k % sizes.len()].min(head.len() - pos);
            k += 1;
            dec.feed(&head[pos..pos + n]);
            pos += n;
        };
        // Extension syntax may be refused first; the limit must never be overshot.
        if e.kind() == ErrorKind::ChunkLineTooLong {
            prop_assert_eq!(e.offset(), (body_at + max) as u64);
        } else {
            prop_assert!(e.offset() <= (body_at + max) as u64, "{}", e);
        }
        prop_assert!(held <= body_at.max(64), "held {held}");
    }

    /// Many tiny chunks in random pieces: every byte fed is consumed by the time decode()
    /// asks for more, except at most one byte of a possible trailer start.
    #[test]
    fn tiny_chunks_stream_with_a_bounded_buffer(
        n in 500usize..3000,
        width in 1usize..4,
        sizes in vec(1usize..200, 1..5),
    ) {
        let mut input = b"ICAP/1.0 200 OK\r\nEncapsulated: opt-body=0\r\n\r\n".to_vec();
        for i in 0..n {
            input.extend_from_slice(format!("{width:x}\r\n").as_bytes());
            input.extend(vec![b'a' + (i % 26) as u8; width]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"0\r\n\r\n");
        let got = decode_responses(&input, &sizes).unwrap();
        prop_assert_eq!(got.len(), 3);
        prop_assert!(matches!(&got[1], Ev::Body(b) if b.len() == n * width));
        let mut dec = ResponseDecoder::default();
        let (mut pos, mut k) = (0, 0);
        while pos < input.len() {
            let s = sizes[k % sizes.len()].min(input.len() - pos);
            k += 1;
            dec.feed(&input[pos..pos + s]);
            pos += s;
            while dec.decode().unwrap().is_some() {}
            // Past the head, a piece is never kept (a lone CR of "0\r\n\r\n" at most).
            if pos > 60 {
                prop_assert!(dec.buffered().len() <= 1, "held {}", dec.buffered().len());
            }
        }
        prop_assert!(dec.is_idle());
    }
}
