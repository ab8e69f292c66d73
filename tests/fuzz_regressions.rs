//! Regression tests for codec bugs found by the fuzz targets in `fuzz/` and by the code review
//! done for the hostile-input work of issue 7. Each test says what found it; inputs are the
//! minimised shapes, written out so that the test explains itself.

mod common;

use bytes::BytesMut;
use icap::{Chunk, ChunkedDecoder, ErrorKind, Limits, RequestDecoder, ResponseDecoder};

use common::{requests_all_splits, responses_all_splits, Ev};

fn kind_at<M>(r: Result<Vec<Ev<M>>, icap::Error>) -> (ErrorKind, u64) {
    let e = r.err().expect("an error");
    (e.kind(), e.offset())
}

/// fuzz `request_decoder` and `response_decoder` (first seconds of fuzzing): an ICAP head
/// past `max_icap_head` whose first bare LF lies beyond the limit. Fed whole, the scanner read
/// past the limit and reported `BareLf` at the LF; fed in pieces, the limit tripped first
/// (`IcapHeadTooLarge`). The error must not depend on how the bytes arrived, and the decoder
/// must not look past its limit.
#[test]
fn icap_head_limit_wins_over_a_bare_lf_beyond_it() {
    let mut input = b"REQMOD icap://x/ ICAP/1.0\r\nX-Long: ".to_vec();
    input.resize(70_000, b'a');
    input.extend_from_slice(b"\nHost: x\r\n\r\n");
    assert_eq!(
        kind_at(requests_all_splits(&input)),
        (ErrorKind::IcapHeadTooLarge, 64 * 1024)
    );
}

/// Review, same shape as the one above: a trailer section past `max_trailer` with a bare LF
/// beyond it.
#[test]
fn trailer_limit_wins_over_a_bare_lf_beyond_it() {
    let head = b"ICAP/1.0 200 OK\r\nEncapsulated: opt-body=0\r\n\r\n";
    let mut input = head.to_vec();
    input.extend_from_slice(b"1\r\na\r\n0\r\nX-Trailer: ");
    let trailer_at = head.len() as u64 + 9;
    input.resize(input.len() + 20_000, b'b');
    input.extend_from_slice(b"\n\r\n");
    assert_eq!(
        kind_at(responses_all_splits(&input)),
        (ErrorKind::BadTrailer, trailer_at + 16 * 1024)
    );
}

/// Review, checking split independence: a bare LF among the empty lines tolerated between
/// messages was reported at the first of those lines when they arrived together, and at the
/// LF itself when they arrived one by one. It is now reported at the LF in both cases.
#[test]
fn bare_lf_between_messages_is_reported_where_it_is() {
    let options = b"OPTIONS icap://x/ ICAP/1.0\r\n\r\n";
    let mut input = options.to_vec();
    input.extend_from_slice(b"\r\n\r\n\n");
    assert_eq!(
        kind_at(requests_all_splits(&input)),
        (ErrorKind::BareLf, options.len() as u64 + 4)
    );
}

/// Review and hostile-input probe: a bare CR inside a start line ended the line, and the byte
/// after it was dropped unseen (taken for the LF), so `ICAP/1.0 200 OK\rXX-Foo: bar` decoded
/// as a status line and a header `X-Foo` that no CRLF-splitting peer sees. A bare CR is a
/// control byte in the line and is now rejected, in ICAP start lines and encapsulated HTTP
/// heads.
#[test]
fn bare_cr_in_a_start_line_is_rejected() {
    let r =
        responses_all_splits(b"ICAP/1.0 200 OK\rXX-Foo: bar\r\nEncapsulated: null-body=0\r\n\r\n");
    assert_eq!(kind_at(r), (ErrorKind::BadStartLine, 0));
    let r = requests_all_splits(b"OPTIONS icap://x/ ICAP/1.0\rXX-Foo: bar\r\n\r\n");
    assert_eq!(kind_at(r), (ErrorKind::BadStartLine, 0));
    let r = requests_all_splits(b"OPTIONS icap://x/ ICAP/1.0\rXX-Foo:bar\r\n\r\n");
    assert_eq!(kind_at(r).0, ErrorKind::BadVersion);
    let r = requests_all_splits(b"OPTIONS icap://x/\rX ICAP/1.0\r\n\r\n");
    assert_eq!(kind_at(r).0, ErrorKind::BadStartLine);
    let http = b"GET / HTTP/1.1\rXHost: a\r\n\r\n";
    let mut input = format!(
        "REQMOD icap://x/ ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body={}\r\n\r\n",
        http.len()
    )
    .into_bytes();
    let http_at = input.len() as u64;
    input.extend_from_slice(http);
    assert_eq!(
        kind_at(requests_all_splits(&input)),
        (ErrorKind::BadHttpHead, http_at)
    );
    let http = b"HTTP/1.1 200 OK\rXServer: a\r\n\r\n";
    let mut input = format!(
        "ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, null-body={}\r\n\r\n",
        http.len()
    )
    .into_bytes();
    let http_at = input.len() as u64;
    input.extend_from_slice(http);
    assert_eq!(
        kind_at(responses_all_splits(&input)),
        (ErrorKind::BadHttpHead, http_at)
    );
}

/// Review (now also checked by the `chunked` target's reference de-chunker):
/// `max_chunk_line` is documented as the longest size line *without* CRLF, but the CR was
/// counted, so a line of exactly the limit was refused.
#[test]
fn chunk_line_of_exactly_the_limit_is_accepted() {
    let limits = Limits::default().with_max_chunk_line(8);
    let decode = |input: &[u8]| {
        let mut dec = ChunkedDecoder::new(&limits);
        let mut buf = BytesMut::from(input);
        let mut base = 0;
        let mut data = Vec::new();
        loop {
            match dec.decode(&mut buf, &mut base)? {
                Some(Chunk::Data(d)) => data.extend_from_slice(&d),
                Some(Chunk::Last(_)) => return Ok(data),
                None => panic!("incomplete"),
            }
        }
    };
    // "00000005" and "5;abcdef" are 8 bytes: accepted.
    assert_eq!(decode(b"00000005\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
    assert_eq!(decode(b"5;abcdef\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
    // Nine bytes: refused at the ninth.
    let e: icap::Error = decode(b"000000005\r\nhello\r\n0\r\n\r\n").unwrap_err();
    assert_eq!((e.kind(), e.offset()), (ErrorKind::ChunkLineTooLong, 8));
}

/// Every regression above leaves the decoder failed for good.
#[test]
fn decoders_stay_failed_after_these_errors() {
    let mut d = ResponseDecoder::default();
    d.feed(b"ICAP/1.0 200 OK\rXX-Foo: bar\r\nEncapsulated: null-body=0\r\n\r\n");
    assert!(d.decode().is_err());
    assert!(d.is_failed());
    d.feed(b"ICAP/1.0 204 No Content\r\n\r\n");
    assert_eq!(d.decode().unwrap_err().kind(), ErrorKind::InvalidState);
    let mut d = RequestDecoder::default();
    d.feed(b"\r\n\n");
    assert_eq!(d.decode().unwrap_err().kind(), ErrorKind::BareLf);
    assert!(matches!(d.decode(), Err(e) if e.kind() == ErrorKind::InvalidState));
}
