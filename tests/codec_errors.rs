//! Malformed input: each case gives its typed error at the same byte offset whatever the
//! split of the input, never a panic, and the decoder refuses to go on afterwards.

mod common;

use common::{requests_all_splits, responses_all_splits};
use icap::{ErrorKind, ErrorKind::*, RequestDecoder, RequestEvent};

/// A REQMOD with a GET head and the given ICAP headers (CRLF-terminated lines).
fn reqmod(extra: &str, enc: &str) -> String {
    format!(
        "REQMOD icap://icap.example/reqmod ICAP/1.0\r\nHost: icap.example\r\n{extra}Encapsulated: {enc}\r\n\r\n"
    )
}

const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"; // 27 bytes

fn post(chunks: &str) -> String {
    let mut s = reqmod("", "req-hdr=0, req-body=27");
    s.push_str(GET);
    s.push_str(chunks);
    s
}

fn preview(p: &str, chunks: &str) -> String {
    let mut s = reqmod(&format!("Preview: {p}\r\n"), "req-hdr=0, req-body=27");
    s.push_str(GET);
    s.push_str(chunks);
    s
}

/// (name, input, expected kind, expected offset)
fn request_cases() -> Vec<(&'static str, Vec<u8>, ErrorKind, u64)> {
    // A REQMOD head with "req-body=27"; "null-body=NN" heads are one byte longer.
    let head_len = reqmod("", "req-hdr=0, req-body=27").len() as u64;
    let body_at = head_len + 27;
    let big_header = format!("X-Big: {}\r\n", "a".repeat(70_000));
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        (
            "bare LF in start line",
            b"REQMOD icap://x/ ICAP/1.0\nHost: x\r\n\r\n".to_vec(),
            BareLf,
            25,
        ),
        (
            "no version",
            b"REQMOD icap://x/\r\n\r\n".to_vec(),
            BadStartLine,
            0,
        ),
        (
            "double space",
            b"REQMOD  icap://x/ ICAP/1.0\r\n\r\n".to_vec(),
            BadStartLine,
            0,
        ),
        (
            "method not a token",
            b"REQ(MOD icap://x/ ICAP/1.0\r\n\r\n".to_vec(),
            BadStartLine,
            0,
        ),
        (
            "HTTP version",
            b"REQMOD icap://x/ HTTP/1.1\r\n\r\n".to_vec(),
            BadVersion,
            17,
        ),
        (
            "short version",
            b"OPTIONS icap://x/ ICAP/1\r\n\r\n".to_vec(),
            BadVersion,
            18,
        ),
        (
            "missing colon",
            b"OPTIONS icap://x/ ICAP/1.0\r\nHost x\r\n\r\n".to_vec(),
            BadHeader,
            28,
        ),
        (
            "space in name",
            b"OPTIONS icap://x/ ICAP/1.0\r\nHo st: x\r\n\r\n".to_vec(),
            BadHeader,
            30,
        ),
        (
            "obs-fold in request",
            b"OPTIONS icap://x/ ICAP/1.0\r\nA: 1\r\n 2\r\n\r\n".to_vec(),
            ObsFold,
            34,
        ),
        (
            "NUL in value",
            b"OPTIONS icap://x/ ICAP/1.0\r\nA: 1\x002\r\n\r\n".to_vec(),
            BadHeader,
            32,
        ),
        (
            "missing Encapsulated",
            b"REQMOD icap://x/ ICAP/1.0\r\nHost: x\r\n\r\n".to_vec(),
            MissingEncapsulated,
            0,
        ),
        (
            "two Encapsulated",
            reqmod("Encapsulated: null-body=0\r\n", "null-body=0").into_bytes(),
            DuplicateEncapsulated,
            0,
        ),
        (
            "Encapsulated syntax",
            reqmod("", "req-hdr=0; null-body=27").into_bytes(),
            BadEncapsulated,
            0,
        ),
        (
            "Encapsulated 0x offset",
            reqmod("", "req-hdr=0, null-body=0x1b").into_bytes(),
            BadEncapsulated,
            0,
        ),
        (
            "offsets decrease",
            reqmod("", "req-hdr=27, null-body=0").into_bytes(),
            EncapsulatedNotAllowed,
            0,
        ),
        (
            "first offset not 0",
            reqmod("", "req-hdr=5, null-body=27").into_bytes(),
            EncapsulatedNotAllowed,
            0,
        ),
        (
            "two bodies",
            reqmod("", "req-body=0, res-body=5").into_bytes(),
            EncapsulatedNotAllowed,
            0,
        ),
        (
            "res-body in REQMOD",
            reqmod("", "res-hdr=0, res-body=27").into_bytes(),
            EncapsulatedNotAllowed,
            0,
        ),
        (
            "offset longer than head",
            {
                let mut s = reqmod("", "req-hdr=0, null-body=40");
                s.push_str(GET);
                s.push_str("OPTIONS icap://x/ ICAP/1.0\r\n\r\n");
                s.into_bytes()
            },
            EncapsulatedMismatch,
            head_len + 1 + 27,
        ),
        (
            "offset shorter than head",
            {
                let mut s = reqmod("", "req-hdr=0, null-body=20");
                s.push_str(GET);
                s.into_bytes()
            },
            EncapsulatedMismatch,
            head_len + 1 + 20,
        ),
        (
            "offset inside a head",
            {
                let mut s = String::from(
                    "RESPMOD icap://x/ ICAP/1.0\r\nEncapsulated: req-hdr=0, res-hdr=10, null-body=46\r\n\r\n",
                );
                s.push_str(GET);
                s.push_str("HTTP/1.1 200 OK\r\n\r\n");
                s.into_bytes()
            },
            EncapsulatedMismatch,
            81 + 10,
        ),
        (
            "bad HTTP request line",
            {
                let mut s = reqmod("", "req-hdr=0, null-body=9");
                s.push_str("GET /\r\n\r\n");
                s.into_bytes()
            },
            BadHttpHead,
            head_len,
        ),
        (
            "HTTP heads over the limit",
            reqmod("", "req-hdr=0, null-body=100000000").into_bytes(),
            HttpHeadTooLarge,
            reqmod("", "req-hdr=0, null-body=100000000").len() as u64,
        ),
        (
            "ICAP head over the limit",
            format!("OPTIONS icap://x/ ICAP/1.0\r\n{big_header}\r\n").into_bytes(),
            IcapHeadTooLarge,
            65536,
        ),
        (
            "too many headers",
            format!("OPTIONS icap://x/ ICAP/1.0\r\n{many}\r\n").into_bytes(),
            TooManyHeaders,
            28 + 9 * 10 + 10 * 90 + 11 * 28,
        ),
        (
            "chunk size overflow",
            post("11111111111111111\r\n").into_bytes(),
            ChunkSizeOverflow,
            body_at + 16,
        ),
        (
            "0x chunk size",
            post("0x10\r\n").into_bytes(),
            BadChunkSize,
            body_at + 1,
        ),
        (
            "negative chunk size",
            post("-5\r\n").into_bytes(),
            BadChunkSize,
            body_at,
        ),
        (
            "leading space",
            post(" 5\r\n").into_bytes(),
            BadChunkSize,
            body_at,
        ),
        (
            "space inside size",
            post("5 5\r\n").into_bytes(),
            BadChunkSize,
            body_at + 2,
        ),
        (
            "plus sign",
            post("+5\r\n").into_bytes(),
            BadChunkSize,
            body_at,
        ),
        (
            "no CRLF after data",
            post("3\r\nabcX").into_bytes(),
            MissingChunkCrlf,
            body_at + 6,
        ),
        (
            "CR without LF after size",
            post("3\rX").into_bytes(),
            MissingChunkCrlf,
            body_at + 2,
        ),
        (
            "bare LF after size",
            post("3\nabc").into_bytes(),
            BareLf,
            body_at + 1,
        ),
        (
            "EOF before last chunk",
            post("3\r\nabc\r\n").into_bytes(),
            UnexpectedEof,
            body_at + 8,
        ),
        (
            "EOF inside heads",
            reqmod("", "req-hdr=0, null-body=27").into_bytes(),
            UnexpectedEof,
            head_len + 1,
        ),
        (
            "chunk line too long",
            post(&format!("5;{}\r\n", "a".repeat(2000))).into_bytes(),
            ChunkLineTooLong,
            body_at + 1024,
        ),
        (
            "ieof on a data chunk",
            post("3; ieof\r\nabc\r\n0\r\n\r\n").into_bytes(),
            BadChunkExtension,
            body_at,
        ),
        (
            "use-original-body not a number",
            post("0; use-original-body=x\r\n\r\n").into_bytes(),
            BadChunkExtension,
            body_at,
        ),
        (
            "control byte in extension",
            post("0; a\x01b\r\n\r\n").into_bytes(),
            BadChunkExtension,
            body_at + 4,
        ),
        (
            "bad trailer",
            post("0\r\nbad trailer\r\n\r\n").into_bytes(),
            BadTrailer,
            body_at + 3,
        ),
        (
            "Preview not a number",
            preview("12a", "0\r\n\r\n").into_bytes(),
            BadPreview,
            0,
        ),
        (
            "Preview over the limit",
            preview("2000000", "0\r\n\r\n").into_bytes(),
            PreviewTooLarge,
            0,
        ),
        (
            "preview overrun",
            preview("4", "5\r\nabcde\r\n0\r\n\r\n").into_bytes(),
            PreviewOverrun,
            preview("4", "").len() as u64,
        ),
    ]
}

fn response_cases() -> Vec<(&'static str, Vec<u8>, ErrorKind, u64)> {
    vec![
        ("status not 3 digits", b"ICAP/1.0 20 OK\r\n\r\n".to_vec(), BadStatus, 9),
        ("status line without status", b"ICAP/1.0\r\n\r\n".to_vec(), BadStartLine, 0),
        ("HTTP status line", b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), BadVersion, 0),
        ("body legal for no method", b"ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, res-hdr=5, res-body=10\r\n\r\n".to_vec(), EncapsulatedNotAllowed, 0),
        ("continuation before any header", b"ICAP/1.0 200 OK\r\n\tx\r\n\r\n".to_vec(), BadHeader, 17),
        ("cut before last chunk", b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n".to_vec(), UnexpectedEof, 86),
    ]
}

#[test]
fn malformed_requests_give_typed_errors() {
    let mut failures = Vec::new();
    for (name, input, kind, offset) in request_cases() {
        match requests_all_splits(&input) {
            Ok(evs) => failures.push(format!("{name}: decoded {}", common::short(&Ok(evs)))),
            Err(e) if e.kind() == kind && e.offset() == offset => {}
            Err(e) => failures.push(format!(
                "{name}: got {:?} at {} ({}), want {kind:?} at {offset}",
                e.kind(),
                e.offset(),
                e.message()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(request_cases().len() + response_cases().len() >= 30);
}

#[test]
fn malformed_responses_give_typed_errors() {
    let mut failures = Vec::new();
    for (name, input, kind, offset) in response_cases() {
        match responses_all_splits(&input) {
            Ok(evs) => failures.push(format!("{name}: decoded {}", common::short(&Ok(evs)))),
            Err(e) if e.kind() == kind && e.offset() == offset => {}
            Err(e) => failures.push(format!(
                "{name}: got {:?} at {} ({}), want {kind:?} at {offset}",
                e.kind(),
                e.offset(),
                e.message()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn decoder_stays_failed_after_an_error() {
    let mut dec = RequestDecoder::default();
    dec.feed(b"REQMOD icap://x/ HTTP/1.1\r\n\r\nOPTIONS icap://x/ ICAP/1.0\r\n\r\n");
    assert_eq!(dec.decode().unwrap_err().kind(), BadVersion);
    assert!(dec.is_failed());
    assert_eq!(dec.decode().unwrap_err().kind(), InvalidState);
    // Bytes fed after the failure are never decoded either.
    dec.feed(b"OPTIONS icap://x/ ICAP/1.0\r\n\r\n");
    assert!(dec.decode().is_err());
    assert!(!matches!(dec.decode(), Ok(Some(RequestEvent::Head(_)))));
}

#[test]
fn only_whole_blank_lines_between_messages() {
    let opt = b"OPTIONS icap://x/ ICAP/1.0\r\nHost: x\r\n\r\n";
    // CRLF pairs before and between messages are skipped.
    let mut ok = b"\r\n\r\n".to_vec();
    ok.extend_from_slice(opt);
    ok.extend_from_slice(b"\r\n");
    ok.extend_from_slice(opt);
    ok.extend_from_slice(b"\r\n");
    let evs = requests_all_splits(&ok).unwrap();
    assert_eq!(evs.len(), 4, "two heads, two ends");
    // A stray CR is not a blank line: it makes a bad start line.
    let mut bad = b"\r\r\n".to_vec();
    bad.extend_from_slice(opt);
    let e = requests_all_splits(&bad).unwrap_err();
    assert_eq!((e.kind(), e.offset()), (BadStartLine, 0));
    // A bare LF between messages is reported at the LF.
    let mut lf = opt.to_vec();
    lf.extend_from_slice(b"\r\n\n");
    lf.extend_from_slice(opt);
    let e = requests_all_splits(&lf).unwrap_err();
    assert_eq!((e.kind(), e.offset()), (BareLf, opt.len() as u64 + 2));
    // At EOF, a lone LF is not a clean end either; a CRLF is.
    let mut dec2 = RequestDecoder::default();
    dec2.feed(b"\n");
    assert_eq!(dec2.decode_eof().unwrap_err().kind(), UnexpectedEof);
    let mut dec3 = RequestDecoder::default();
    dec3.feed(b"\r\n");
    dec3.decode_eof().unwrap();
}
