//! Shared driver for the decoder targets: reads split sizes and policy flags from the front of
//! the fuzz input, feeds the rest to a decoder in those pieces, and checks the invariants every
//! decoder run must keep, whatever the bytes:
//!
//! - no panic; every error is an `icap::Error` whose offset lies inside the stream;
//! - after an error the decoder reports `is_failed()` and every later call fails;
//! - `Head`, `Data`, `PreviewEnd` and `End` come in a legal order, and `Data` is never empty;
//! - the de-chunked bytes never outnumber the input bytes;
//! - between calls the decoder never buffers more than its largest head/trailer limit;
//! - the same stream fed whole gives the same events and the same error (kind and offset);
//!   the split run takes body data as bits 4-5 of the flags say (`Data` events, borrowed
//!   slices from `decode_with`, joined pieces with `set_coalesce`, or `decode` and
//!   `decode_with` in turn), the whole run always as `Data` events.

#![allow(dead_code)]

use icap::{
    Error, ErrorKind, LastChunk, Limits, Method, Request, RequestDecoder, RequestEvent, Response,
    ResponseDecoder, ResponseEvent,
};

/// The fuzz input taken apart: `[flags, n, size_1 .. size_n, stream ...]`.
pub struct Input<'a> {
    pub flags: u8,
    pub sizes: Vec<usize>,
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Input<'a> {
        let flags = data.first().copied().unwrap_or(0);
        let n = data.get(1).map_or(0, |&b| (b % 8) as usize);
        let rest = data.get(2..).unwrap_or(&[]);
        let n = n.min(rest.len());
        let sizes = rest[..n].iter().map(|&b| b as usize + 1).collect();
        Input {
            flags,
            sizes,
            stream: &rest[n..],
        }
    }

    /// Bit 7 selects small limits so that the fuzzer reaches every limit with short inputs.
    pub fn limits(&self) -> Limits {
        if self.flags & 0x80 != 0 {
            Limits::default()
                .with_max_icap_head(256)
                .with_max_http_head(300)
                .with_max_headers(6)
                .with_max_chunk_line(24)
                .with_max_trailer(64)
                .with_max_preview(40)
                .with_max_body(Some(700))
                .with_max_folded_value(120)
        } else {
            Limits::default()
        }
    }
}

/// An event with body pieces merged, so that runs under different splits compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev<M> {
    Head(M),
    Body(Vec<u8>),
    PreviewEnd,
    End(LastChunk),
}

/// What both decoders offer the driver.
pub trait Dec {
    type M: PartialEq + std::fmt::Debug;
    const PREVIEWS: bool;
    fn make(limits: Limits, flags: u8) -> Self;
    fn feed(&mut self, b: &[u8], flags: u8);
    /// The next event, body pieces as `Ev::Body`.
    fn decode(&mut self) -> Result<Option<Ev<Self::M>>, Error>;
    /// The next event through `decode_with`, body pieces pushed to `pieces`.
    fn decode_with(&mut self, pieces: &mut Vec<Vec<u8>>) -> Result<Option<Ev<Self::M>>, Error>;
    fn set_coalesce(&mut self, up_to: usize);
    fn decode_eof(&mut self) -> Result<(), Error>;
    fn is_failed(&self) -> bool;
    fn buffered_len(&self) -> usize;
    fn awaiting(&self) -> bool;
    /// Makes the preview decision by the policy in `flags`; `Ok(Some(continued))` when made.
    fn decide(&mut self, flags: u8, at_end: bool, nth: usize) -> Result<Option<bool>, Error>;
}

/// The role's remaining events (`PreviewEnd` for requests).
trait Other<E, M> {
    fn other(ev: E) -> Ev<M>;
}

impl Other<RequestEvent, Request> for RequestDecoder {
    fn other(ev: RequestEvent) -> Ev<Request> {
        match ev {
            RequestEvent::PreviewEnd => Ev::PreviewEnd,
            other => panic!("unknown event {other:?}"),
        }
    }
}

impl Other<ResponseEvent, Response> for ResponseDecoder {
    fn other(ev: ResponseEvent) -> Ev<Response> {
        panic!("unknown event {ev:?}")
    }
}

impl Dec for RequestDecoder {
    type M = Request;
    const PREVIEWS: bool = true;
    fn make(limits: Limits, _: u8) -> Self {
        RequestDecoder::new(limits)
    }
    fn feed(&mut self, b: &[u8], flags: u8) {
        if flags & 0x40 != 0 {
            self.feed_bytes(bytes::Bytes::copy_from_slice(b));
        } else {
            self.feed(b);
        }
    }
    fn decode(&mut self) -> Result<Option<Ev<Request>>, Error> {
        Ok(RequestDecoder::decode(self)?.map(|ev| match ev {
            RequestEvent::Head(m) => Ev::Head(m),
            RequestEvent::Data(d) => Ev::Body(d.to_vec()),
            RequestEvent::PreviewEnd => Ev::PreviewEnd,
            RequestEvent::End(l) => Ev::End(l),
            other => panic!("unknown event {other:?}"),
        }))
    }
    fn decode_with(&mut self, pieces: &mut Vec<Vec<u8>>) -> Result<Option<Ev<Request>>, Error> {
        let ev = RequestDecoder::decode_with(self, |d| {
            assert!(!d.is_empty(), "empty slice");
            pieces.push(d.to_vec())
        })?;
        Ok(ev.map(|ev| match ev {
            RequestEvent::Data(_) => panic!("decode_with returned Data"),
            other => match other {
                RequestEvent::Head(m) => Ev::Head(m),
                RequestEvent::End(l) => Ev::End(l),
                other => Self::other(other),
            },
        }))
    }
    fn set_coalesce(&mut self, up_to: usize) {
        RequestDecoder::set_coalesce(self, up_to);
    }
    fn decode_eof(&mut self) -> Result<(), Error> {
        RequestDecoder::decode_eof(self)
    }
    fn is_failed(&self) -> bool {
        RequestDecoder::is_failed(self)
    }
    fn buffered_len(&self) -> usize {
        self.buffered().len()
    }
    fn awaiting(&self) -> bool {
        self.awaiting_preview_decision()
    }
    fn decide(&mut self, flags: u8, at_end: bool, nth: usize) -> Result<Option<bool>, Error> {
        if !self.awaiting_preview_decision() {
            return Ok(None);
        }
        let cont = match flags & 3 {
            1 => true,
            2 => false,
            3 => nth & 1 == 0,
            _ => match self.next_looks_like_chunk() {
                Some(c) => c,
                None if at_end => false,
                None => return Ok(None),
            },
        };
        if cont {
            self.continue_after_preview()?;
        } else {
            self.finish_after_preview()?;
        }
        // A second decision must be refused: the decoder no longer waits.
        assert!(!self.awaiting_preview_decision());
        let again = self.finish_after_preview().unwrap_err();
        assert_eq!(again.kind(), ErrorKind::InvalidState);
        assert!(
            !self.is_failed(),
            "a refused API call must not fail the stream"
        );
        Ok(Some(cont))
    }
}

impl Dec for ResponseDecoder {
    type M = Response;
    const PREVIEWS: bool = false;
    fn make(limits: Limits, flags: u8) -> Self {
        let mut d = ResponseDecoder::new(limits);
        d.expect_response_to(match (flags >> 2) & 3 {
            0 => None,
            1 => Some(Method::Reqmod),
            2 => Some(Method::Respmod),
            _ => Some(Method::Options),
        });
        d
    }
    fn feed(&mut self, b: &[u8], flags: u8) {
        if flags & 0x40 != 0 {
            self.feed_bytes(bytes::Bytes::copy_from_slice(b));
        } else {
            self.feed(b);
        }
    }
    fn decode(&mut self) -> Result<Option<Ev<Response>>, Error> {
        Ok(ResponseDecoder::decode(self)?.map(|ev| match ev {
            ResponseEvent::Head(m) => Ev::Head(m),
            ResponseEvent::Data(d) => Ev::Body(d.to_vec()),
            ResponseEvent::End(l) => Ev::End(l),
            other => panic!("unknown event {other:?}"),
        }))
    }
    fn decode_with(&mut self, pieces: &mut Vec<Vec<u8>>) -> Result<Option<Ev<Response>>, Error> {
        let ev = ResponseDecoder::decode_with(self, |d| {
            assert!(!d.is_empty(), "empty slice");
            pieces.push(d.to_vec())
        })?;
        Ok(ev.map(|ev| match ev {
            ResponseEvent::Data(_) => panic!("decode_with returned Data"),
            other => match other {
                ResponseEvent::Head(m) => Ev::Head(m),
                ResponseEvent::End(l) => Ev::End(l),
                other => Self::other(other),
            },
        }))
    }
    fn set_coalesce(&mut self, up_to: usize) {
        ResponseDecoder::set_coalesce(self, up_to);
    }
    fn decode_eof(&mut self) -> Result<(), Error> {
        ResponseDecoder::decode_eof(self)
    }
    fn is_failed(&self) -> bool {
        ResponseDecoder::is_failed(self)
    }
    fn buffered_len(&self) -> usize {
        self.buffered().len()
    }
    fn awaiting(&self) -> bool {
        false
    }
    fn decide(&mut self, _: u8, _: bool, _: usize) -> Result<Option<bool>, Error> {
        Ok(None)
    }
}

#[derive(Debug, PartialEq)]
pub struct Outcome<M> {
    pub events: Vec<Ev<M>>,
    pub error: Option<(ErrorKind, u64)>,
}

/// Runs one decoder over `input.stream` in pieces cycling through `sizes`, checking the
/// invariants as it goes.
/// How `run` takes body data out: bits 4-5 of the flags for a split run, `Data` events (0)
/// for the whole run.
pub fn run<D: Dec>(input: &Input, sizes: &[usize]) -> Outcome<D::M> {
    run_taking::<D>(input, sizes, 0)
}

pub fn run_taking<D: Dec>(input: &Input, sizes: &[usize], take: u8) -> Outcome<D::M> {
    let limits = input.limits();
    let bound = limits
        .max_icap_head
        .max(limits.max_http_head)
        .max(limits.max_trailer);
    let stream = input.stream;
    let mut dec = D::make(limits, input.flags);
    if take == 2 {
        dec.set_coalesce(1 + (input.flags as usize & 0x0f) * 3);
    }
    let mut calls = 0usize;
    let mut pieces = Vec::new();
    let mut events: Vec<Ev<D::M>> = Vec::new();
    let (mut pos, mut k, mut previews) = (0usize, 0usize, 0usize);
    let mut data_total = 0usize;
    let mut in_msg = false;
    let error = 'run: loop {
        loop {
            calls += 1;
            let got = if take == 1 || (take == 3 && calls % 2 == 0) {
                dec.decode_with(&mut pieces)
            } else {
                dec.decode()
            };
            let got = match (pieces.is_empty(), got) {
                (true, got) => got,
                // Slices first, then what the call returned (kept for the next turn).
                (false, got) => {
                    for p in pieces.drain(..) {
                        assert!(in_msg, "Data outside a message");
                        data_total += p.len();
                        match events.last_mut() {
                            Some(Ev::Body(b)) => b.extend_from_slice(&p),
                            _ => events.push(Ev::Body(p)),
                        }
                    }
                    got
                }
            };
            match got {
                Ok(None) => break,
                Ok(Some(ev)) => match ev {
                    Ev::Head(m) => {
                        assert!(!in_msg, "Head inside a message");
                        in_msg = true;
                        events.push(Ev::Head(m));
                    }
                    Ev::Body(d) => {
                        assert!(in_msg, "Data outside a message");
                        assert!(!d.is_empty(), "empty Data");
                        data_total += d.len();
                        match events.last_mut() {
                            Some(Ev::Body(b)) => b.extend_from_slice(&d),
                            _ => events.push(Ev::Body(d)),
                        }
                    }
                    Ev::PreviewEnd => {
                        assert!(D::PREVIEWS, "PreviewEnd from a response decoder");
                        assert!(in_msg, "PreviewEnd outside a message");
                        assert!(dec.awaiting());
                        events.push(Ev::PreviewEnd);
                    }
                    Ev::End(l) => {
                        assert!(in_msg, "End without Head");
                        in_msg = false;
                        events.push(Ev::End(l));
                    }
                },
                Err(e) => break 'run Some(e),
            }
        }
        assert!(
            data_total <= pos,
            "{data_total} body bytes from {pos} input bytes"
        );
        if !dec.awaiting() {
            assert!(
                dec.buffered_len() <= bound,
                "decoder holds {} bytes, limit {bound}",
                dec.buffered_len()
            );
        }
        match dec.decide(input.flags, pos >= stream.len(), previews) {
            Err(e) => panic!("preview decision refused while waiting: {e}"),
            Ok(Some(cont)) => {
                previews += 1;
                if !cont {
                    in_msg = false;
                }
                continue;
            }
            Ok(None) => {}
        }
        if pos >= stream.len() {
            match dec.decode_eof() {
                Ok(()) => {
                    assert!(!in_msg || dec.awaiting(), "clean EOF inside a message");
                    break None;
                }
                Err(e) => break Some(e),
            }
        }
        let n = sizes[k % sizes.len()].min(stream.len() - pos);
        k += 1;
        dec.feed(&stream[pos..pos + n], input.flags);
        pos += n;
    };
    if let Some(e) = &error {
        assert!(dec.is_failed(), "error {e} did not fail the decoder");
        assert!(
            e.offset() <= stream.len() as u64,
            "error offset {} past the stream end {}",
            e.offset(),
            stream.len()
        );
        assert!(!e.message().is_empty());
        let again = dec.decode().unwrap_err();
        assert_eq!(again.kind(), ErrorKind::InvalidState);
        dec.feed(b"OPTIONS icap://x/ ICAP/1.0\r\n\r\n", 0);
        assert!(dec.decode().is_err(), "a failed decoder decoded again");
        assert!(dec.decode_eof().is_err());
        assert!(dec.is_failed());
    }
    Outcome {
        events,
        error: error.map(|e| (e.kind(), e.offset())),
    }
}

/// The whole check for one fuzz input: the split run and the whole-input run must agree.
pub fn check<D: Dec>(data: &[u8]) {
    let input = Input::parse(data);
    let whole = run::<D>(&input, &[input.stream.len().max(1)]);
    if input.sizes.is_empty() {
        let bytewise = run_taking::<D>(&input, &[1], (input.flags >> 4) & 3);
        assert_eq!(
            whole, bytewise,
            "byte-at-a-time run disagrees with whole run"
        );
    } else {
        let split = run_taking::<D>(&input, &input.sizes, (input.flags >> 4) & 3);
        assert_eq!(
            whole, split,
            "split {:?} disagrees with whole run",
            input.sizes
        );
    }
}
