//! Shared helpers for the wire-level tests: feed a byte stream to a decoder in pieces of
//! several shapes and collect the events in a form that does not depend on the split.

#![allow(dead_code)]

use icap::{
    Error, LastChunk, Request, RequestDecoder, RequestEvent, Response, ResponseDecoder,
    ResponseEvent,
};

/// An event with body pieces merged, so that different splits compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev<M> {
    Head(M),
    Body(Vec<u8>),
    PreviewEnd,
    End(LastChunk),
}

/// A decoder event of either role, as the merged form.
pub trait ToEv<M> {
    fn to_ev(self) -> Ev<M>;
}

impl ToEv<Request> for RequestEvent {
    fn to_ev(self) -> Ev<Request> {
        match self {
            RequestEvent::Head(m) => Ev::Head(m),
            RequestEvent::Data(d) => Ev::Body(d.to_vec()),
            RequestEvent::PreviewEnd => Ev::PreviewEnd,
            RequestEvent::End(l) => Ev::End(l),
            other => panic!("unknown event {other:?}"),
        }
    }
}

impl ToEv<Response> for ResponseEvent {
    fn to_ev(self) -> Ev<Response> {
        match self {
            ResponseEvent::Head(m) => Ev::Head(m),
            ResponseEvent::Data(d) => Ev::Body(d.to_vec()),
            ResponseEvent::End(l) => Ev::End(l),
            other => panic!("unknown event {other:?}"),
        }
    }
}

/// An event already in the merged form.
impl<M> ToEv<M> for Ev<M> {
    fn to_ev(self) -> Ev<M> {
        self
    }
}

/// Appends `ev` to `out`, joining body pieces with the piece before them (so that splits
/// compare equal); an empty body piece is a failure.
pub fn push<M>(out: &mut Vec<Ev<M>>, ev: impl ToEv<M>) {
    match ev.to_ev() {
        Ev::Body(d) => {
            assert!(!d.is_empty(), "the decoder must not emit empty data");
            if let Some(Ev::Body(b)) = out.last_mut() {
                b.extend_from_slice(&d);
            } else {
                out.push(Ev::Body(d));
            }
        }
        other => out.push(other),
    }
}

/// Split shapes every decoder test runs under.
pub fn splits(len: usize) -> Vec<Vec<usize>> {
    let mut out = vec![vec![len.max(1)], vec![1]];
    // A few deterministic pseudo-random split patterns (xorshift), sizes 1..=17.
    for seed in [0x9e3779b97f4a7c15u64, 0xdeadbeef, 12345, 7] {
        let mut x = seed;
        let mut v = Vec::new();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push((x % 17 + 1) as usize);
        }
        out.push(v);
    }
    out
}

/// Feeds `input` to a request decoder in pieces cycling through `sizes`; after a preview ends,
/// continues when more bytes of the stream are left (as a server that sent 100 would).
pub fn decode_requests(input: &[u8], sizes: &[usize]) -> Result<Vec<Ev<Request>>, Error> {
    let mut dec = RequestDecoder::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    loop {
        while let Some(ev) = dec.decode()? {
            push(&mut out, ev);
        }
        if dec.awaiting_preview_decision() {
            match dec.next_looks_like_chunk() {
                Some(true) => dec.continue_after_preview()?,
                Some(false) => dec.finish_after_preview()?,
                None if pos >= input.len() => dec.finish_after_preview()?,
                None => {}
            }
            if !dec.awaiting_preview_decision() {
                continue;
            }
        }
        if pos >= input.len() {
            dec.decode_eof()?;
            return Ok(out);
        }
        let n = sizes[k % sizes.len()].min(input.len() - pos);
        k += 1;
        dec.feed(&input[pos..pos + n]);
        pos += n;
    }
}

/// Feeds `input` to a response decoder like [`decode_requests`].
pub fn decode_responses(input: &[u8], sizes: &[usize]) -> Result<Vec<Ev<Response>>, Error> {
    let mut dec = ResponseDecoder::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    loop {
        while let Some(ev) = dec.decode()? {
            push(&mut out, ev);
        }
        if pos >= input.len() {
            dec.decode_eof()?;
            return Ok(out);
        }
        let n = sizes[k % sizes.len()].min(input.len() - pos);
        k += 1;
        dec.feed(&input[pos..pos + n]);
        pos += n;
    }
}

/// Decodes under every split shape and checks that all give the same result (events, or the
/// same error kind and offset); returns that result.
pub fn requests_all_splits(input: &[u8]) -> Result<Vec<Ev<Request>>, Error> {
    let first = decode_requests(input, &[input.len().max(1)]);
    for s in splits(input.len()) {
        let other = decode_requests(input, &s);
        assert!(
            same(&first, &other),
            "split {s:?} disagrees: {} vs {}",
            short(&first),
            short(&other)
        );
    }
    first
}

/// [`requests_all_splits`] for responses.
pub fn responses_all_splits(input: &[u8]) -> Result<Vec<Ev<Response>>, Error> {
    let first = decode_responses(input, &[input.len().max(1)]);
    for s in splits(input.len()) {
        let other = decode_responses(input, &s);
        assert!(
            same(&first, &other),
            "split {s:?} disagrees: {} vs {}",
            short(&first),
            short(&other)
        );
    }
    first
}

fn same<M: PartialEq>(a: &Result<Vec<Ev<M>>, Error>, b: &Result<Vec<Ev<M>>, Error>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => (a.kind(), a.offset()) == (b.kind(), b.offset()),
        _ => false,
    }
}

/// A one-line description of a result: event names and body sizes, or the error.
pub fn short<M>(r: &Result<Vec<Ev<M>>, Error>) -> String {
    match r {
        Ok(v) => v
            .iter()
            .map(|e| match e {
                Ev::Head(_) => "Head".to_string(),
                Ev::Body(b) => format!("Body({})", b.len()),
                Ev::PreviewEnd => "PreviewEnd".to_string(),
                Ev::End(l) => format!("End(ieof={})", l.ieof),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("error {:?} at {}", e.kind(), e.offset()),
    }
}

/// The captures under tests/data whose file names end in `suffix`, without it, sorted.
pub fn capture_names(suffix: &str) -> Vec<String> {
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(suffix).map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Reads a file under tests/data.
pub fn data(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}
