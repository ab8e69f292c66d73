//! `ChunkedDecoder` alone, fed in pieces chosen by the input, against a small reference
//! de-chunker written here from RFC 7230 4.1. Input: `[flags, n, size_1 .. size_n, body ...]`.
//!
//! For every input: no panic, the split run and the whole run agree (data, last chunk, bytes
//! left over, or error kind and offset), data never outnumbers input. For inputs the
//! reference accepts (a strict subset of the grammar: no trailers, no whitespace, token
//! extensions), the decoder gives the same body, the same `ieof`, and stops exactly where the
//! reference stops.
#![no_main]

use bytes::BytesMut;
use icap::{Chunk, ChunkedDecoder, ErrorKind, LastChunk, Limits};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Run {
    data: Vec<u8>,
    last: Option<LastChunk>,
    left: Vec<u8>,
    error: Option<(ErrorKind, u64)>,
}

fn run(body: &[u8], sizes: &[usize], limits: &Limits) -> Run {
    let mut dec = ChunkedDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut base = 0u64;
    let (mut pos, mut k) = (0, 0);
    let mut out = Run {
        data: Vec::new(),
        last: None,
        left: Vec::new(),
        error: None,
    };
    loop {
        match dec.decode(&mut buf, &mut base) {
            Ok(Some(Chunk::Data(d))) => {
                assert!(!d.is_empty());
                out.data.extend_from_slice(&d);
                assert!(out.data.len() <= pos);
                assert!(dec.total() as usize >= out.data.len());
            }
            Ok(Some(Chunk::Last(l))) => {
                assert!(dec.is_done());
                assert_eq!(dec.total() as usize, out.data.len());
                out.last = Some(l);
                // Done: the rest of the stream is the next message's, untouched.
                assert_eq!(base as usize + buf.len(), pos);
                let mut left = buf.to_vec();
                left.extend_from_slice(&body[pos..]);
                out.left = left;
                let before = buf.len();
                assert!(matches!(dec.decode(&mut buf, &mut base), Ok(None)));
                assert_eq!(buf.len(), before);
                return out;
            }
            Ok(None) => {
                // The decoder keeps no more than a partial trailer.
                assert!(buf.len() <= limits.max_trailer.max(1));
                if pos >= body.len() {
                    return out;
                }
                let n = sizes[k % sizes.len()].min(body.len() - pos);
                k += 1;
                buf.extend_from_slice(&body[pos..pos + n]);
                pos += n;
            }
            Err(e) => {
                assert!(e.offset() <= body.len() as u64);
                out.error = Some((e.kind(), e.offset()));
                return out;
            }
        }
    }
}

enum Reference {
    /// Body, ieof, bytes consumed.
    Done(Vec<u8>, bool, usize),
    /// A valid prefix that needs more bytes.
    Partial,
    /// Outside the subset this reference knows (not necessarily invalid).
    Unknown,
}

/// Whether `s[i..]` starts with CRLF: `None` when too short to tell and what is there fits.
fn crlf_at(s: &[u8], i: usize) -> Option<bool> {
    let have = &s[i.min(s.len())..];
    if have.len() >= 2 {
        Some(&have[..2] == b"\r\n")
    } else if b"\r\n".starts_with(have) {
        None
    } else {
        Some(false)
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `1*HEXDIG [ ";" token ] CRLF data CRLF ... "0" [ ";" token ] CRLF CRLF`
fn reference(s: &[u8], max_line: usize) -> Reference {
    let mut i = 0;
    let mut body = Vec::new();
    loop {
        let start = i;
        while i < s.len() && s[i].is_ascii_hexdigit() {
            i += 1;
        }
        let digits = &s[start..i];
        let mut ext = &s[i..i];
        if i < s.len() && s[i] == b';' {
            let e = i + 1;
            i += 1;
            while i < s.len() && tchar(s[i]) {
                i += 1;
            }
            ext = &s[e..i];
            if ext.is_empty() && i < s.len() {
                return Reference::Unknown;
            }
        }
        // Sizes past 64 bits overflow in the decoder: outside the subset.
        if digits.iter().skip_while(|&&d| d == b'0').count() > 15 {
            return Reference::Unknown;
        }
        if i - start > max_line {
            return Reference::Unknown;
        }
        if digits.is_empty() && start < s.len() {
            return Reference::Unknown;
        }
        match crlf_at(s, i) {
            None => return Reference::Partial,
            Some(false) => return Reference::Unknown,
            Some(true) => i += 2,
        }
        let ext_lc = ext.to_ascii_lowercase();
        if ext_lc.starts_with(b"use-original-body") {
            return Reference::Unknown;
        }
        let size = u64::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap();
        if size == 0 {
            return match crlf_at(s, i) {
                None => Reference::Partial,
                Some(false) => Reference::Unknown,
                Some(true) => Reference::Done(body, ext_lc == b"ieof", i + 2),
            };
        }
        if ext_lc == b"ieof" {
            return Reference::Unknown;
        }
        let size = size as usize;
        if s.len() - i < size {
            return Reference::Partial;
        }
        body.extend_from_slice(&s[i..i + size]);
        i += size;
        match crlf_at(s, i) {
            None => return Reference::Partial,
            Some(false) => return Reference::Unknown,
            Some(true) => i += 2,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let n = data.get(1).map_or(0, |&b| (b % 8) as usize);
    let rest = data.get(2..).unwrap_or(&[]);
    let n = n.min(rest.len());
    let mut sizes: Vec<usize> = rest[..n].iter().map(|&b| b as usize + 1).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }
    let body = &rest[n..];
    let limits = if flags & 0x80 != 0 {
        Limits::default()
            .with_max_chunk_line(12)
            .with_max_trailer(40)
            .with_max_headers(4)
            .with_max_body(Some(300))
    } else {
        Limits::default()
    };
    let whole = run(body, &[body.len().max(1)], &limits);
    let split = run(body, &sizes, &limits);
    assert_eq!(whole, split, "split {sizes:?} disagrees with the whole run");
    match reference(body, limits.max_chunk_line) {
        Reference::Done(data, ieof, used) => {
            if let Some(max) = limits.max_body {
                if data.len() as u64 > max {
                    assert_eq!(whole.error.map(|e| e.0), Some(ErrorKind::BodyTooLarge));
                    return;
                }
            }
            assert_eq!(whole.error, None);
            assert_eq!(whole.data, data);
            let last = whole.last.expect("reference finished, decoder did not");
            assert_eq!(last.ieof, ieof);
            assert_eq!(last.use_original_body, None);
            assert_eq!(last.trailers, None);
            assert_eq!(whole.left, &body[used..]);
        }
        Reference::Partial => {
            if whole.error.map(|e| e.0) != Some(ErrorKind::BodyTooLarge) {
                assert_eq!(whole.error, None, "valid prefix rejected");
                assert!(whole.last.is_none());
            }
        }
        Reference::Unknown => {}
    }
});
