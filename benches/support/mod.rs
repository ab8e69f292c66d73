//! Shared inputs for the benches: the five head figures of issue 8 as exact wire bytes, the
//! byte ranges of their embedded HTTP heads (for the `httparse` baselines), and chunked bodies.
//!
//! Captures come from `tests/data` (c-icap 0.5.10 and squid 5.7, see its README); the REQMOD
//! with a browser GET is built here because no capture has a realistic browser head.
#![allow(dead_code)]

use std::ops::Range;

use bytes::Bytes;
use icap::{Encapsulated, RequestDecoder, RequestEvent, ResponseDecoder, ResponseEvent};

/// One head figure: a complete ICAP message and where its parts are.
pub struct Fixture {
    /// Short name used as the criterion benchmark id.
    pub name: &'static str,
    /// The whole message, head through last chunk.
    pub wire: Bytes,
    /// True for ICAP requests (decoded by a `RequestDecoder`).
    pub request: bool,
    /// The ICAP head, start line through the blank line.
    pub icap_head: Range<usize>,
    /// Embedded HTTP heads: range and whether it is a request head.
    pub http_heads: Vec<(Range<usize>, bool)>,
}

impl Fixture {
    /// Bytes of all embedded HTTP heads.
    pub fn http_bytes(&self) -> usize {
        self.http_heads.iter().map(|(r, _)| r.len()).sum()
    }
    /// Bytes of the ICAP head plus the embedded HTTP heads (what the head parsers read).
    pub fn head_bytes(&self) -> usize {
        self.icap_head.len() + self.http_bytes()
    }
}

/// The `n`th complete message (0-based) of a capture, found with our own decoder (setup only).
fn nth_message(capture: &[u8], request: bool, n: usize) -> Bytes {
    let mut bounds = vec![0u64];
    if request {
        let mut d = RequestDecoder::default();
        d.feed(capture);
        while let Some(ev) = d.decode().expect("capture decodes") {
            if let RequestEvent::PreviewEnd = ev {
                d.continue_after_preview().unwrap();
            }
            if let RequestEvent::End(_) = ev {
                bounds.push(d.position());
            }
        }
    } else {
        let mut d = ResponseDecoder::default();
        d.feed(capture);
        while let Some(ev) = d.decode().expect("capture decodes") {
            if let ResponseEvent::End(_) = ev {
                bounds.push(d.position());
            }
        }
    }
    Bytes::copy_from_slice(&capture[bounds[n] as usize..bounds[n + 1] as usize])
}

fn fixture(name: &'static str, wire: Bytes, request: bool) -> Fixture {
    let end = memchr::memmem::find(&wire, b"\r\n\r\n").expect("head end") + 4;
    let head = std::str::from_utf8(&wire[..end]).expect("ascii head");
    let enc = head
        .lines()
        .find_map(|l| l.strip_prefix("Encapsulated: "))
        .map(|v| Encapsulated::parse(v.as_bytes()).expect("valid Encapsulated"));
    let mut http_heads = Vec::new();
    if let Some(enc) = enc {
        // 204 ends with its head whatever Encapsulated says; the fixtures have none there.
        for (section, start, stop) in enc.head_ranges() {
            if start != stop {
                let r = end + start as usize..end + stop as usize;
                http_heads.push((r, section == icap::Section::ReqHdr));
            }
        }
    }
    Fixture {
        name,
        wire,
        request,
        icap_head: 0..end,
        http_heads,
    }
}

/// A REQMOD as squid 5.7 sends it, carrying a ~600-byte desktop-browser GET head.
pub fn reqmod_browser_get() -> Bytes {
    let http = "GET http://www.example.com/articles/2026/11/benchmarking-an-icap-codec.html?ref=homepage&utm_source=newsletter HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
Accept-Encoding: gzip, deflate\r\n\
Referer: http://www.example.com/\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; consent=1\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Cache-Control: max-age=0\r\n\
Via: 1.1 proxy.corp.example (squid/5.7)\r\n\
\r\n";
    let icap = format!(
        "REQMOD icap://127.0.0.1:1344/url_check ICAP/1.0\r\n\
Host: 127.0.0.1:1344\r\n\
Date: Wed, 25 Nov 2026 20:27:12 GMT\r\n\
Encapsulated: req-hdr=0, null-body={}\r\n\
Preview: 0\r\n\
Allow: 204, trailers\r\n\
X-Client-IP: 10.1.2.3\r\n\
\r\n",
        http.len()
    );
    Bytes::from(format!("{icap}{http}"))
}

/// The five head figures of issue 8, in table order.
pub fn fixtures() -> Vec<Fixture> {
    vec![
        fixture(
            "options-200",
            Bytes::from_static(include_bytes!(
                "../../tests/data/cicap-options-echo.response.bin"
            )),
            false,
        ),
        fixture("reqmod-browser-get", reqmod_browser_get(), true),
        fixture(
            "respmod-squid",
            nth_message(
                include_bytes!("../../tests/data/squid-small-respmod.request.bin"),
                true,
                1,
            ),
            true,
        ),
        fixture(
            "cicap-204",
            nth_message(
                include_bytes!("../../tests/data/cicap-reqmod-urlcheck-allowed.response.bin"),
                false,
                1,
            ),
            false,
        ),
        fixture(
            "block-403",
            nth_message(
                include_bytes!("../../tests/data/cicap-reqmod-urlcheck-blocked.response.bin"),
                false,
                1,
            ),
            false,
        ),
    ]
}

/// Deterministic incompressible body bytes (xorshift), like a download an AV engine scans.
pub fn body_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A c-icap style `200 OK` RESPMOD answer carrying `body_len` bytes in `chunk`-byte chunks.
/// Returns the wire bytes and the length of the heads (ICAP + HTTP).
pub fn body_message(body_len: usize, chunk: usize) -> (Vec<u8>, usize) {
    let http = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n"
    );
    let icap = format!(
        "ICAP/1.0 200 OK\r\nServer: C-ICAP/0.5.10\r\nConnection: keep-alive\r\nISTag: \"CI0001-XXXXXXXXX\"\r\nEncapsulated: res-hdr=0, res-body={}\r\n\r\n",
        http.len()
    );
    let body = body_bytes(body_len);
    let mut wire = Vec::with_capacity(body_len + body_len / chunk * 16 + 1024);
    wire.extend_from_slice(icap.as_bytes());
    wire.extend_from_slice(http.as_bytes());
    let heads = wire.len();
    for piece in body.chunks(chunk) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    (wire, heads)
}

/// Decodes one whole message from `dec` (already fed), returning body bytes seen.
#[inline]
pub fn drain_response(dec: &mut ResponseDecoder) -> usize {
    let mut n = 0;
    // Matched where it is returned: binding the event first would copy the head once more,
    // a cost of this loop, not of the decoder.
    loop {
        match dec.decode() {
            Ok(Some(ResponseEvent::Data(d))) => n += d.len(),
            Ok(Some(ResponseEvent::End(_))) | Ok(None) => return n,
            Ok(Some(ev)) => {
                std::hint::black_box(&ev);
            }
            Err(e) => panic!("decodes: {e}"),
        }
    }
}

/// [`drain_response`] through `Decoder::decode_with`: body data as borrowed slices.
#[inline]
pub fn drain_response_with(dec: &mut ResponseDecoder) -> usize {
    let mut n = 0;
    loop {
        match dec.decode_with(|d| n += d.len()) {
            Ok(Some(ResponseEvent::End(_))) | Ok(None) => return n,
            Ok(Some(ev)) => {
                std::hint::black_box(&ev);
            }
            Err(e) => panic!("decodes: {e}"),
        }
    }
}

/// Decodes one whole request from `dec` (already fed), returning body bytes seen.
#[inline]
pub fn drain_request(dec: &mut RequestDecoder) -> usize {
    let mut n = 0;
    // As in `drain_response`.
    loop {
        match dec.decode() {
            Ok(Some(RequestEvent::Data(d))) => n += d.len(),
            Ok(Some(RequestEvent::End(_))) | Ok(None) => return n,
            Ok(Some(ev)) => {
                std::hint::black_box(&ev);
            }
            Err(e) => panic!("decodes: {e}"),
        }
    }
}

/// [`drain_request`] through `Decoder::decode_with`: body data as borrowed slices.
#[inline]
pub fn drain_request_with(dec: &mut RequestDecoder) -> usize {
    let mut n = 0;
    loop {
        match dec.decode_with(|d| n += d.len()) {
            Ok(Some(RequestEvent::End(_))) | Ok(None) => return n,
            Ok(Some(ev)) => {
                std::hint::black_box(&ev);
            }
            Err(e) => panic!("decodes: {e}"),
        }
    }
}

/// httparse on the embedded HTTP heads alone: the baseline.
#[inline]
pub fn httparse_embedded(f: &Fixture) -> usize {
    let mut n = 0;
    for (r, is_req) in &f.http_heads {
        let buf = &f.wire[r.clone()];
        // Uninitialised header slots, as hyper uses them: the fastest way to call httparse.
        let mut hs = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); 64];
        let st = if *is_req {
            let mut req = httparse::Request::new(&mut []);
            let st = req.parse_with_uninit_headers(buf, &mut hs);
            n += std::hint::black_box(&req).headers.len();
            st
        } else {
            let mut res = httparse::Response::new(&mut []);
            let st = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut res, buf, &mut hs);
            n += std::hint::black_box(&res).headers.len();
            st
        };
        match st.expect("httparse") {
            httparse::Status::Complete(k) => n += k,
            httparse::Status::Partial => panic!("partial"),
        }
    }
    n
}

/// httparse on all the head bytes we parse: the ICAP header block through `parse_headers`
/// (httparse cannot read an ICAP start line, so a memchr skips it) plus the embedded heads.
#[inline]
pub fn httparse_all_heads(f: &Fixture) -> usize {
    let head = &f.wire[f.icap_head.clone()];
    let line = memchr::memchr(b'\n', head).expect("start line") + 1;
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let n = match httparse::parse_headers(&head[line..], &mut hs).expect("httparse") {
        httparse::Status::Complete((k, h)) => k + h.len(),
        httparse::Status::Partial => panic!("partial"),
    };
    n + httparse_embedded(f)
}
