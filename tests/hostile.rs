//! Hostile input: request smuggling shapes, chunk-size tricks, header bombs, huge lines, a
//! million tiny chunks, NUL and non-UTF-8 bytes. Each case either gets a typed error (the same
//! under every split of the input, and the decoder stays failed afterwards: the connection is
//! never reused) or is a documented acceptance.
//!
//! Decisions this file pins down:
//!
//! - **Framing belongs to ICAP.** An encapsulated body is framed by its chunks only. The
//!   embedded HTTP heads' `Content-Length` and `Transfer-Encoding` are not framing at this
//!   layer: conflicting or duplicated values are accepted and reported exactly as received, so
//!   that the ICAP service (which judges the HTTP message) sees what the proxy sent.
//! - **obs-text is accepted.** Header values may hold bytes 0x80-0xFF (RFC 7230 obs-text);
//!   they are kept as bytes (`Headers::get`), and `Headers::get_str` returns `None` for values
//!   that are not UTF-8. Header names must be tokens, so a non-ASCII byte there is an error.
//!   The ICAP URI is kept as bytes too; checking it is `IcapUri`'s job, not the decoder's.
//! - **Controls are refused.** NUL, bare CR and other control bytes in start lines and header
//!   values are errors; in chunk data they are just data.
//! - **Chunk sizes are bare hex.** No sign, no `0x`, no whitespace before the digits; leading
//!   zeros are fine (bounded by `max_chunk_line`); whitespace after the digits (BWS) is
//!   accepted before CRLF or `;`.

mod common;

use std::time::{Duration, Instant};

use common::{requests_all_splits, responses_all_splits, Ev};
use icap::{
    ErrorKind, Limits, Method, Request, RequestDecoder, RequestEvent, Response, ResponseDecoder,
    ResponseEvent,
};

const GET: &[u8] = b"GET http://origin.example/ HTTP/1.1\r\nHost: origin.example\r\n\r\n";

/// A REQMOD carrying `http` as req-hdr, then `body` (already chunked) as req-body, or
/// null-body when `body` is `None`.
fn reqmod(http: &[u8], body: Option<&[u8]>) -> Vec<u8> {
    let enc = match body {
        Some(_) => format!("req-hdr=0, req-body={}", http.len()),
        None => format!("req-hdr=0, null-body={}", http.len()),
    };
    let mut v =
        format!("REQMOD icap://icap.example/reqmod ICAP/1.0\r\nHost: icap.example\r\nEncapsulated: {enc}\r\n\r\n")
            .into_bytes();
    v.extend_from_slice(http);
    if let Some(b) = body {
        v.extend_from_slice(b);
    }
    v
}

/// Offset of the first body byte in `reqmod(GET, Some(..))`.
fn body_at() -> u64 {
    reqmod(GET, Some(b"")).len() as u64
}

/// Feeds `input` whole to a fresh request decoder, expects an error, and checks that the
/// decoder refuses everything afterwards: more decoding, a valid next message, EOF.
fn request_fails_for_good(input: &[u8]) -> icap::Error {
    let mut dec = RequestDecoder::default();
    dec.feed(input);
    let e = loop {
        match dec.decode() {
            Ok(Some(_)) => {}
            Ok(None) => match dec.decode_eof() {
                Ok(()) => panic!("accepted: {}", String::from_utf8_lossy(input)),
                Err(e) => break e,
            },
            Err(e) => break e,
        }
    };
    assert!(dec.is_failed(), "{e}");
    assert_eq!(dec.decode().unwrap_err().kind(), ErrorKind::InvalidState);
    dec.feed(b"OPTIONS icap://x/ ICAP/1.0\r\n\r\n");
    assert_eq!(dec.decode().unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(dec.decode_eof().is_err());
    assert!(dec.continue_after_preview().is_err());
    assert!(dec.is_failed());
    e
}

/// [`request_fails_for_good`] for responses.
fn response_fails_for_good(input: &[u8]) -> icap::Error {
    let mut dec = ResponseDecoder::default();
    dec.feed(input);
    let e = loop {
        match dec.decode() {
            Ok(Some(_)) => {}
            Ok(None) => match dec.decode_eof() {
                Ok(()) => panic!("accepted: {}", String::from_utf8_lossy(input)),
                Err(e) => break e,
            },
            Err(e) => break e,
        }
    };
    assert!(dec.is_failed(), "{e}");
    assert_eq!(dec.decode().unwrap_err().kind(), ErrorKind::InvalidState);
    dec.feed(b"ICAP/1.0 204 No Content\r\n\r\n");
    assert_eq!(dec.decode().unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(dec.decode_eof().is_err());
    e
}

/// Expects `kind` at `offset` for a request stream under every split, and a failed decoder.
fn reject_request(input: &[u8], kind: ErrorKind, offset: u64) {
    let e = requests_all_splits(input).expect_err("hostile request accepted");
    assert_eq!((e.kind(), e.offset()), (kind, offset), "{e}");
    let again = request_fails_for_good(input);
    assert_eq!((again.kind(), again.offset()), (kind, offset));
}

/// [`reject_request`] for responses.
fn reject_response(input: &[u8], kind: ErrorKind, offset: u64) {
    let e = responses_all_splits(input).expect_err("hostile response accepted");
    assert_eq!((e.kind(), e.offset()), (kind, offset), "{e}");
    let again = response_fails_for_good(input);
    assert_eq!((again.kind(), again.offset()), (kind, offset));
}

fn heads<M: Clone>(evs: &[Ev<M>]) -> Vec<M> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Head(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn body<M>(evs: &[Ev<M>]) -> Vec<u8> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Body(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

// ---------------------------------------------------------------------------------------
// Smuggling shapes
// ---------------------------------------------------------------------------------------

#[test]
fn two_encapsulated_headers_are_refused_even_when_they_agree() {
    let n = GET.len();
    let mut req = format!(
        "REQMOD icap://x/ ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body={n}\r\nencapsulated: req-hdr=0, null-body={n}\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(GET);
    reject_request(&req, ErrorKind::DuplicateEncapsulated, 0);

    // In a response, where a second value could make the client read a body the server never
    // framed (or skip one it did).
    let res = b"ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: null-body=0\r\nEncapsulated: opt-body=0\r\n\r\n0\r\n\r\n";
    reject_response(res, ErrorKind::DuplicateEncapsulated, 0);
}

#[test]
fn response_offsets_that_do_not_match_the_heads_are_refused() {
    let http = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let chunks = b"5\r\nhello\r\n0\r\n\r\n";
    let head = |res_body: usize| {
        format!("ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body={res_body}\r\n\r\n")
    };
    // res-body points 3 bytes past the head: the section would swallow the first chunk-size
    // line ("5\r\n") into the HTTP head and desynchronise the body framing.
    let mut long = head(http.len() + 3).into_bytes();
    let at = long.len() as u64;
    long.extend_from_slice(http);
    long.extend_from_slice(chunks);
    reject_response(
        &long,
        ErrorKind::EncapsulatedMismatch,
        at + http.len() as u64,
    );
    // res-body points inside the head: the rest of the head would be read as chunk framing.
    let mut short = head(17).into_bytes();
    let at = short.len() as u64;
    short.extend_from_slice(http);
    short.extend_from_slice(chunks);
    reject_response(&short, ErrorKind::EncapsulatedMismatch, at + 17);
}

#[test]
fn conflicting_content_length_in_embedded_heads_is_reported_as_is() {
    // Two different Content-Length values and Transfer-Encoding beside them: HTTP framing that
    // disagrees with itself and with the body. The ICAP layer frames by chunks only, so the
    // message decodes, the body is the 11 chunked bytes, and the headers come through as sent.
    let http = b"POST /upload HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nContent-Length: 500\r\nTransfer-Encoding: chunked\r\n\r\n";
    let req = reqmod(http, Some(b"b\r\nhello world\r\n0\r\n\r\n"));
    let evs = requests_all_splits(&req).unwrap();
    let h = &heads(&evs)[0];
    let hh = &h.http_request.as_ref().unwrap().headers;
    assert_eq!(
        hh.get_all("Content-Length").collect::<Vec<_>>(),
        vec![&b"5"[..], b"500"]
    );
    assert_eq!(hh.get("Transfer-Encoding"), Some(&b"chunked"[..]));
    assert_eq!(body(&evs), b"hello world");
    assert!(matches!(evs.last(), Some(Ev::End(_))));

    // The same in a RESPMOD answer's response head.
    let http = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    let mut res = format!(
        "ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n",
        http.len()
    )
    .into_bytes();
    res.extend_from_slice(http);
    res.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    let evs = responses_all_splits(&res).unwrap();
    let r = &heads(&evs)[0];
    let rh = &r.http_response.as_ref().unwrap().headers;
    assert_eq!(rh.count("Content-Length"), 2);
    assert_eq!(body(&evs), b"abc");
}

// ---------------------------------------------------------------------------------------
// Chunk sizes
// ---------------------------------------------------------------------------------------

#[test]
fn chunk_size_tricks_are_typed_errors() {
    let at = body_at();
    // (chunk stream, kind, offset from the body start)
    let cases: &[(&[u8], ErrorKind, u64)] = &[
        (b"0x5\r\nhello\r\n0\r\n\r\n", ErrorKind::BadChunkSize, 1),
        (b"0x\r\n\r\n", ErrorKind::BadChunkSize, 1),
        (b"-0\r\n\r\n", ErrorKind::BadChunkSize, 0),
        (b"\t5\r\nhello\r\n0\r\n\r\n", ErrorKind::BadChunkSize, 0),
        (b"5h\r\nhello\r\n0\r\n\r\n", ErrorKind::BadChunkSize, 1),
        (b"5,6\r\nhello\r\n0\r\n\r\n", ErrorKind::BadChunkSize, 1),
        (b"\r\n5\r\nhello\r\n0\r\n\r\n", ErrorKind::BadChunkSize, 0),
        (b"5\r\r\nhello\r\n0\r\n\r\n", ErrorKind::MissingChunkCrlf, 2),
        // 17 significant hex digits: past 64 bits, caught at the digit that overflows.
        (b"fffffffffffffffff\r\n", ErrorKind::ChunkSizeOverflow, 16),
        // Data longer than announced: the byte after the data must be CR.
        (b"3\r\nhello\r\n0\r\n\r\n", ErrorKind::MissingChunkCrlf, 6),
    ];
    for (chunks, kind, off) in cases {
        let req = reqmod(GET, Some(chunks));
        let e = requests_all_splits(&req).expect_err("accepted");
        assert_eq!(
            (e.kind(), e.offset()),
            (*kind, at + off),
            "{:?}",
            String::from_utf8_lossy(chunks)
        );
        request_fails_for_good(&req);
    }
}

#[test]
fn chunk_size_forms_that_are_accepted() {
    for chunks in [
        &b"0000000000000000000000005\r\nhello\r\n0\r\n\r\n"[..], // leading zeros
        b"5 \r\nhello\r\n0\r\n\r\n",                             // BWS before CRLF
        b"5\t ;x=1\r\nhello\r\n0\r\n\r\n",                       // BWS before an extension
        b"5;\r\nhello\r\n0\r\n\r\n",                             // empty extension list
        b"2\r\nhe\r\n3\r\nllo\r\n00\r\n\r\n",                    // "00" is a last chunk too
    ] {
        let evs = requests_all_splits(&reqmod(GET, Some(chunks)))
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(chunks)));
        assert_eq!(body(&evs), b"hello");
    }
    // Upper-case hex is hex.
    let evs = requests_all_splits(&reqmod(GET, Some(b"A\r\n0123456789\r\n0\r\n\r\n"))).unwrap();
    assert_eq!(body(&evs), b"0123456789");
}

#[test]
fn the_largest_chunk_size_is_checked_against_the_body_limit_before_any_data() {
    let req = reqmod(GET, Some(b"ffffffffffffffff\r\nabc"));
    // No body limit (the default): the size is legal, the data streams, and the stream ends
    // inside the chunk.
    let e = requests_all_splits(&req).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    // With a body limit the chunk is refused at its size line, before a byte of it is taken.
    let mut dec = RequestDecoder::new(Limits::default().with_max_body(Some(1 << 20)));
    dec.feed(&req);
    assert!(matches!(dec.decode(), Ok(Some(RequestEvent::Head(_)))));
    let e = dec.decode().unwrap_err();
    assert_eq!((e.kind(), e.offset()), (ErrorKind::BodyTooLarge, body_at()));
    assert!(dec.is_failed());
}

// ---------------------------------------------------------------------------------------
// Bombs and huge lines
// ---------------------------------------------------------------------------------------

fn many_headers(n: usize) -> String {
    (0..n).map(|i| format!("X-{i}: {i}\r\n")).collect()
}

#[test]
fn ten_thousand_icap_headers_stop_at_max_headers() {
    let start = "OPTIONS icap://x/ ICAP/1.0\r\n";
    let req = format!("{start}{}\r\n", many_headers(10_000));
    // The 129th line is refused; 10 lines of 8 bytes, 90 of 10, 28 of 12 before it.
    let at = (start.len() + 8 * 10 + 10 * 90 + 12 * 28) as u64;
    let mut input = req.into_bytes();
    // The bomb is larger than the ICAP head limit: the decoder stops at the limit instead,
    // without parsing a single header.
    assert!(input.len() > 64 * 1024);
    reject_request(&input, ErrorKind::IcapHeadTooLarge, 64 * 1024);
    // Under the size limit, the count limit trips first.
    input.truncate(0);
    input.extend_from_slice(format!("{start}{}\r\n", many_headers(3_000)).as_bytes());
    assert!(input.len() < 64 * 1024);
    reject_request(&input, ErrorKind::TooManyHeaders, at);
}

#[test]
fn ten_thousand_http_headers_stop_at_max_headers() {
    let http = format!("GET / HTTP/1.1\r\n{}\r\n", many_headers(10_000));
    let req = reqmod(http.as_bytes(), None);
    let http_at = (req.len() - http.len()) as u64;
    let at = http_at + (16 + 8 * 10 + 10 * 90 + 12 * 28) as u64;
    reject_request(&req, ErrorKind::TooManyHeaders, at);
}

#[test]
fn ten_thousand_headers_are_fine_when_the_limits_allow_them() {
    let req = format!("OPTIONS icap://x/ ICAP/1.0\r\n{}\r\n", many_headers(10_000));
    let mut dec = RequestDecoder::new(
        Limits::default()
            .with_max_icap_head(1 << 20)
            .with_max_headers(10_000),
    );
    let t = Instant::now();
    dec.feed(req.as_bytes());
    let Some(RequestEvent::Head(r)) = dec.decode().unwrap() else {
        panic!("no head")
    };
    assert_eq!(r.headers.len(), 10_000);
    assert_eq!(r.headers.get("X-9999"), Some(&b"9999"[..]));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// An ICAP response whose `X-V` field is folded over `lines` continuation lines of `width`
/// bytes each (a space, then `width - 3` letters, CRLF), and the offset of its first
/// continuation line.
fn folded_response(lines: usize, width: usize) -> (Vec<u8>, u64) {
    let start = "ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nX-V: 1\r\n";
    let line = format!(" {}\r\n", "a".repeat(width - 3));
    let res = format!(
        "{start}{}Encapsulated: null-body=0\r\n\r\n",
        line.repeat(lines)
    );
    (res.into_bytes(), start.len() as u64)
}

#[test]
fn folded_lines_count_against_max_headers() {
    // ISTag and X-V are lines 1 and 2; the 127th continuation line is the 129th line.
    let (res, folds_at) = folded_response(200, 4);
    reject_response(&res, ErrorKind::TooManyHeaders, folds_at + 126 * 4);
    // The same in an encapsulated HTTP response head, where folding is accepted too.
    let http = format!("HTTP/1.1 200 OK\r\nX-V: 1\r\n{}\r\n", " a\r\n".repeat(200));
    let icap = format!(
        "RESPMOD icap://x/respmod ICAP/1.0\r\nHost: x\r\nEncapsulated: res-hdr=0, null-body={}\r\n\r\n",
        http.len()
    );
    let at = (icap.len() + "HTTP/1.1 200 OK\r\nX-V: 1\r\n".len() + 127 * 4) as u64;
    reject_request(
        format!("{icap}{http}").as_bytes(),
        ErrorKind::TooManyHeaders,
        at,
    );
    // One line under the limit is fine: 126 continuation lines and three fields.
    let (res, _) = folded_response(125, 4);
    let evs = responses_all_splits(&res).unwrap();
    let v = heads(&evs)[0].headers.get("X-V").unwrap().to_vec();
    assert_eq!(v, format!("1{}", " a".repeat(125)).into_bytes());
}

#[test]
fn a_folded_value_over_its_limit_is_refused_at_the_line_that_makes_it_too_long() {
    // Each continuation adds 201 bytes to "1": the 82nd takes it past 16 KiB.
    let (res, folds_at) = folded_response(100, 203);
    assert_eq!(Limits::default().max_folded_value, 16 * 1024);
    reject_response(&res, ErrorKind::FoldedValueTooLarge, folds_at + 81 * 203);
    // A higher limit takes it.
    let mut dec = ResponseDecoder::new(Limits::default().with_max_folded_value(1 << 20));
    dec.feed(&res);
    let Some(ResponseEvent::Head(r)) = dec.decode().unwrap() else {
        panic!("no head")
    };
    assert_eq!(r.headers.get("X-V").unwrap().len(), 1 + 100 * 201);
}

/// Feeds `input` in `piece`-byte pieces until the decoder errs; returns the error, the most
/// bytes it ever held, and how many bytes had been fed when it failed.
fn feed_until_error<M>(
    dec: &mut icap::Decoder<M>,
    input: &[u8],
    piece: usize,
) -> (icap::Error, usize, usize)
where
    M: icap::Message,
{
    let mut max_held = 0;
    for (i, p) in input.chunks(piece).enumerate() {
        dec.feed(p);
        loop {
            match dec.decode() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return (e, max_held, (i + 1) * piece),
            }
        }
        max_held = max_held.max(dec.buffered().len());
    }
    panic!("no error after {} bytes", input.len());
}

#[test]
fn a_one_megabyte_icap_header_line_is_refused_at_the_head_limit() {
    let mut input = b"REQMOD icap://x/ ICAP/1.0\r\nX-Big: ".to_vec();
    input.resize(1 << 20, b'a');
    input.extend_from_slice(b"\r\n\r\n");
    let mut dec = RequestDecoder::default();
    let (e, held, fed) = feed_until_error(&mut dec, &input, 16 * 1024);
    assert_eq!(
        (e.kind(), e.offset()),
        (ErrorKind::IcapHeadTooLarge, 64 * 1024)
    );
    assert!(held <= 64 * 1024, "held {held}");
    assert!(
        fed <= 64 * 1024 + 16 * 1024,
        "read {fed} bytes before refusing"
    );
    assert!(dec.is_failed());
}

#[test]
fn a_one_megabyte_http_head_is_refused_from_the_encapsulated_header_alone() {
    let head = b"REQMOD icap://x/ ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body=1048576\r\n\r\n";
    let mut dec = RequestDecoder::default();
    dec.feed(head);
    let e = dec.decode().unwrap_err();
    assert_eq!(
        (e.kind(), e.offset()),
        (ErrorKind::HttpHeadTooLarge, head.len() as u64)
    );
    assert!(dec.is_failed());
}

#[test]
fn a_one_megabyte_trailer_line_is_refused_at_the_trailer_limit() {
    let mut input = reqmod(GET, Some(b"1\r\na\r\n0\r\nX-Trailer: "));
    let trailer_at = body_at() + 9;
    input.resize(input.len() + (1 << 20), b't');
    input.extend_from_slice(b"\r\n\r\n");
    let mut dec = RequestDecoder::default();
    let (e, held, _) = feed_until_error(&mut dec, &input, 8 * 1024);
    assert_eq!(
        (e.kind(), e.offset()),
        (ErrorKind::BadTrailer, trailer_at + 16 * 1024)
    );
    assert!(held <= 16 * 1024, "held {held}");
}

#[test]
fn a_one_megabyte_chunk_extension_is_refused_at_the_line_limit_without_buffering() {
    let mut input = reqmod(GET, Some(b"1;x="));
    input.resize(input.len() + (1 << 20), b'v');
    input.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
    let mut dec = RequestDecoder::default();
    let (e, held, fed) = feed_until_error(&mut dec, &input, 4096);
    assert_eq!(
        (e.kind(), e.offset()),
        (ErrorKind::ChunkLineTooLong, body_at() + 1024)
    );
    // Size lines are state, not buffered text; only the extension (<= 1 KiB) is kept aside.
    assert!(held <= 4096, "held {held}");
    assert!(fed <= body_at() as usize + 4096 * 2);
}

#[test]
fn a_million_tiny_chunks_stream_with_a_bounded_buffer() {
    const N: usize = 1_000_000;
    let mut input = reqmod(GET, Some(b""));
    let head_len = input.len();
    input.reserve(N * 6 + 5);
    for _ in 0..N {
        input.extend_from_slice(b"1\r\na\r\n");
    }
    input.extend_from_slice(b"0\r\n\r\n");
    let t = Instant::now();
    let mut dec = RequestDecoder::default();
    let (mut data, mut pieces, mut max_held, mut ended) = (0usize, 0usize, 0usize, false);
    for p in input.chunks(64 * 1024) {
        dec.feed(p);
        while let Some(ev) = dec.decode().unwrap() {
            match ev {
                RequestEvent::Head(_) => {}
                RequestEvent::Data(d) => {
                    assert_eq!(&d[..], b"a");
                    data += d.len();
                    pieces += 1;
                }
                RequestEvent::End(_) => ended = true,
                other => panic!("no {other:?} here"),
            }
        }
        max_held = max_held.max(dec.buffered().len());
    }
    dec.decode_eof().unwrap();
    assert!(ended);
    assert_eq!((data, pieces), (N, N));
    // Everything fed is consumed at once: a size line is state, never buffered text.
    assert_eq!(max_held, 0, "the decoder held bytes back");
    assert!(dec.is_idle());
    assert_eq!(dec.position() as usize, input.len());
    assert!(input.len() > head_len + 6 * N);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

// ---------------------------------------------------------------------------------------
// NUL and non-UTF-8 bytes
// ---------------------------------------------------------------------------------------

#[test]
fn nul_bytes_in_heads_are_refused() {
    reject_request(
        b"OPTIONS icap://x/\0 ICAP/1.0\r\n\r\n",
        ErrorKind::BadStartLine,
        0,
    );
    reject_request(
        b"OPTIONS icap://x/ ICAP/1.0\r\nX-\0: 1\r\n\r\n",
        ErrorKind::BadHeader,
        30,
    );
    reject_request(
        b"\0OPTIONS icap://x/ ICAP/1.0\r\n\r\n",
        ErrorKind::BadStartLine,
        0,
    );
    reject_response(b"ICAP/1.0 200 O\0K\r\n\r\n", ErrorKind::BadStartLine, 0);
    // In an encapsulated HTTP header value, at the NUL's stream offset.
    let http = b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    let req = reqmod(http, None);
    let at = (req.len() - http.len() + 23) as u64;
    reject_request(&req, ErrorKind::BadHeader, at);
    // As a chunk size.
    reject_request(
        &reqmod(GET, Some(b"\0\r\n")),
        ErrorKind::BadChunkSize,
        body_at(),
    );
}

#[test]
fn nul_bytes_in_chunk_data_are_data() {
    let evs = requests_all_splits(&reqmod(GET, Some(b"3\r\n\0\0\0\r\n0\r\n\r\n"))).unwrap();
    assert_eq!(body(&evs), b"\0\0\0");
}

#[test]
fn non_utf8_header_values_are_kept_as_obs_text() {
    let mut req =
        b"OPTIONS icap://x/caf\xc3\xa9 ICAP/1.0\r\nX-Latin1: caf\xe9\r\nX-Bytes: \x80\xff\r\n\r\n"
            .to_vec();
    let evs = requests_all_splits(&req).unwrap();
    let r: &Request = &heads(&evs)[0];
    assert_eq!(r.headers.get("X-Latin1"), Some(&b"caf\xe9"[..]));
    assert_eq!(r.headers.get_str("X-Latin1"), None);
    assert_eq!(r.headers.get("X-Bytes"), Some(&b"\x80\xff"[..]));
    assert_eq!(&r.uri[..], b"icap://x/caf\xc3\xa9");
    // The same in an encapsulated HTTP head.
    let http = b"GET / HTTP/1.1\r\nX-Name: M\xfcller\r\n\r\n";
    let evs = requests_all_splits(&reqmod(http, None)).unwrap();
    let hh = &heads(&evs)[0].http_request.clone().unwrap().headers;
    assert_eq!(hh.get("X-Name"), Some(&b"M\xfcller"[..]));
    // A reason phrase in Latin-1 is accepted too.
    let evs = responses_all_splits(b"ICAP/1.0 204 Unver\xe4ndert\r\n\r\n").unwrap();
    let res: &Response = &heads(&evs)[0];
    assert_eq!(&res.reason[..], b"Unver\xe4ndert");
    // Names are tokens: a non-ASCII byte there is an error, at that byte.
    req.clear();
    req.extend_from_slice(b"OPTIONS icap://x/ ICAP/1.0\r\nX-Caf\xe9: 1\r\n\r\n");
    reject_request(&req, ErrorKind::BadHeader, 33);
    // And so is a method that is not a token.
    reject_request(
        b"REQ\xc3\x9cMOD icap://x/ ICAP/1.0\r\n\r\n",
        ErrorKind::BadStartLine,
        0,
    );
}

#[test]
fn bare_cr_in_a_header_value_is_refused() {
    reject_request(
        b"OPTIONS icap://x/ ICAP/1.0\r\nX-A: 1\rX-B: 2\r\n\r\n",
        ErrorKind::BadHeader,
        34,
    );
}

#[test]
fn a_response_decoder_told_the_method_refuses_other_shapes() {
    // A REQMOD request's layout arriving in answer to a RESPMOD.
    let mut res = format!(
        "ICAP/1.0 200 OK\r\nISTag: \"t\"\r\nEncapsulated: req-hdr=0, null-body={}\r\n\r\n",
        GET.len()
    )
    .into_bytes();
    res.extend_from_slice(GET);
    let mut dec = ResponseDecoder::default();
    dec.expect_response_to(Some(Method::Respmod));
    dec.feed(&res);
    let e = dec.decode().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::EncapsulatedNotAllowed);
    assert!(dec.is_failed());
    assert!(dec.decode().is_err());
}

/// The codec parses hostile bytes; it does so without `unsafe` (issue 7: no exception has been
/// measured to pay for itself). The attribute must stay at the crate root.
#[test]
fn the_crate_forbids_unsafe_code() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    assert!(
        lib.lines().any(|l| l.trim() == "#![forbid(unsafe_code)]"),
        "src/lib.rs lost #![forbid(unsafe_code)]"
    );
}

/// A streamed echo commits to `200` only once the body's first chunk-size line parsed: a
/// RESPMOD broken from its first line (a chunk size that overflows 64 bits) gets a `400` the
/// client can read, not a `200` head and a cut connection.
#[cfg(feature = "server")]
#[tokio::test]
async fn an_overflowing_first_chunk_line_gets_400_even_when_the_service_echoes() {
    use icap::server::{IncomingRequest, Reply, Server};
    use icap::BoxError;
    use icap::ServiceOptions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let echo = tower::service_fn(|mut req: IncomingRequest| async move {
        req.body.start_echo(64).await?;
        while req.body.data().await?.is_some() {}
        Ok::<_, BoxError>(Reply::unmodified())
    });
    let options = ServiceOptions::default()
        .with_methods(vec![Method::Respmod])
        .with_istag("\"echo-1\"");
    let server = Server::default().route("respmod", options, echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));

    let res_hdr = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
    let request = format!(
        "RESPMOD icap://127.0.0.1/respmod ICAP/1.0\r\nHost: 127.0.0.1\r\n\
         Encapsulated: res-hdr=0, res-body={}\r\n\r\n{res_hdr}ffffffffffffffffffffff\r\nabc",
        res_hdr.len()
    );
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("ICAP/1.0 400 Bad Request\r\n"),
        "got {answer:?}"
    );
    assert!(answer.contains("Connection: close\r\n"), "got {answer:?}");
    assert!(answer.ends_with("\r\n\r\n"), "a whole answer: {answer:?}");
}
