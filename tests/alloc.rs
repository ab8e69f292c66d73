//! The allocation contract of the codec: once a decoder (or an encoder) has carried one
//! message, carrying the same shape of message again allocates nothing.
//!
//! Shapes (the bench fixtures, `benches/fixtures`): an OPTIONS answer, a REQMOD with a browser
//! GET, a squid RESPMOD with a preview, a 204, a 200 with a 403 block page, and a 200 with a
//! 1 MiB body in 16 KiB and in 1 KiB chunks. Each is decoded through `feed` (copied in), through
//! `feed_bytes` of a shared `Bytes` (a clone of one buffer: zero-copy), and through
//! `feed_bytes` of a buffer the caller reads into and freezes per message (the usual socket
//! loop), and encoded again from its decoded parts with a reused `Encoder`. The caller drops
//! each event before the next message, as a proxy does once it has passed a message on.
//!
//! The counters are per thread (allocations and reallocations), so the tests of this binary
//! can run in parallel without counting each other's work.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Buf, Bytes, BytesMut};
use icap::{
    Encoder, LastChunk, Request, RequestDecoder, RequestEvent, Response, ResponseDecoder,
    ResponseEvent,
};

use icap_bench_fixtures as support;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: allocations during thread teardown go uncounted.
    let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
}

// SAFETY: every call is passed on to `System` unchanged; the counter only observes calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations (and reallocations) this thread made while running `f`.
fn allocs_of(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

/// Allocations of the first call of `once` (a cold decoder or encoder), and of `RUNS` calls
/// after `WARM` calls in all: the steady state the contract is about.
fn first_and_steady(mut once: impl FnMut()) -> (u64, u64) {
    let first = allocs_of(&mut once);
    for _ in 1..WARM {
        once();
    }
    let steady = allocs_of(|| {
        for _ in 0..RUNS {
            once();
        }
    });
    (first, steady)
}

/// How the message reaches the decoder.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// `feed(&wire)`: copied into the decoder's buffer.
    Copy,
    /// `feed_bytes(wire.clone())`: one shared buffer, never copied.
    Shared,
    /// The caller's reused read buffer, filled and frozen per message, then `feed_bytes`.
    Frozen,
    /// `feed` in two reads, the first ending just after the ICAP head: the decoder holds the
    /// parsed ICAP head while it waits for the HTTP heads. Messages of a few KiB (a 1 MiB
    /// second read does not fit the room the decoder keeps, and grows the buffer).
    Split,
}

/// How body data is taken out of the decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Take {
    /// `Data` events from `decode`.
    Events,
    /// Borrowed slices from `decode_with`.
    Slices,
    /// `Data` events with small chunks joined (`set_coalesce`, 16 KiB).
    Joined,
}

/// A message taken apart: what the encoder is given to write it again.
enum Parts {
    Req(Request, Vec<Bytes>, LastChunk),
    Res(Response, Vec<Bytes>, LastChunk),
}

fn parts(request: bool, wire: &[u8]) -> Parts {
    let (mut body, mut last) = (Vec::new(), LastChunk::default());
    if request {
        let mut d = RequestDecoder::default();
        d.feed(wire);
        let mut head = None;
        while let Some(ev) = d.decode().unwrap() {
            match ev {
                RequestEvent::Head(m) => head = Some(m),
                RequestEvent::Data(b) => body.push(b),
                RequestEvent::End(l) => last = l,
                other => panic!("{other:?}"),
            }
        }
        Parts::Req(head.unwrap(), body, last)
    } else {
        let mut d = ResponseDecoder::default();
        d.feed(wire);
        let mut head = None;
        while let Some(ev) = d.decode().unwrap() {
            match ev {
                ResponseEvent::Head(m) => head = Some(m),
                ResponseEvent::Data(b) => body.push(b),
                ResponseEvent::End(l) => last = l,
                other => panic!("{other:?}"),
            }
        }
        Parts::Res(head.unwrap(), body, last)
    }
}

/// Decodes `wire` once per call on reused state; returns the body bytes seen.
struct Decoding {
    req: RequestDecoder,
    res: ResponseDecoder,
    rx: BytesMut,
    wire: Bytes,
    request: bool,
    feed: Feed,
    take: Take,
}

impl Decoding {
    fn new(wire: Bytes, request: bool, feed: Feed) -> Self {
        Decoding {
            req: RequestDecoder::default(),
            res: ResponseDecoder::default(),
            rx: BytesMut::new(),
            wire,
            request,
            feed,
            take: Take::Events,
        }
    }

    fn taking(mut self, take: Take) -> Self {
        if take == Take::Joined {
            self.req.set_coalesce(16 * 1024);
            self.res.set_coalesce(16 * 1024);
        }
        self.take = take;
        self
    }

    fn drain_req(&mut self) -> usize {
        match self.take {
            Take::Slices => support::drain_request_with(&mut self.req),
            _ => support::drain_request(&mut self.req),
        }
    }

    fn drain_res(&mut self) -> usize {
        match self.take {
            Take::Slices => support::drain_response_with(&mut self.res),
            _ => support::drain_response(&mut self.res),
        }
    }

    fn once(&mut self) -> usize {
        if let Feed::Split = self.feed {
            let k = (memchr_head_end(&self.wire) + 1).min(self.wire.len() - 1);
            // A cheap clone, so that the decoders can be borrowed while the halves are.
            let wire = self.wire.clone();
            let (a, b) = (&wire[..k], &wire[k..]);
            let n = if self.request {
                self.req.feed(a);
                let n = self.drain_req();
                self.req.feed(b);
                n + self.drain_req()
            } else {
                self.res.feed(a);
                let n = self.drain_res();
                self.res.feed(b);
                n + self.drain_res()
            };
            assert!(self.req.is_idle() && self.res.is_idle());
            return n;
        }
        let input = match self.feed {
            Feed::Copy | Feed::Split => None,
            Feed::Shared => Some(self.wire.clone()),
            Feed::Frozen => {
                self.rx.extend_from_slice(&self.wire);
                Some(self.rx.split().freeze())
            }
        };
        if self.request {
            match input {
                None => self.req.feed(&self.wire),
                Some(b) => self.req.feed_bytes(b),
            }
            let n = self.drain_req();
            assert!(self.req.is_idle());
            n
        } else {
            match input {
                None => self.res.feed(&self.wire),
                Some(b) => self.res.feed_bytes(b),
            }
            let n = self.drain_res();
            assert!(self.res.is_idle());
            n
        }
    }
}

/// Length of the ICAP head: through its blank line.
fn memchr_head_end(wire: &[u8]) -> usize {
    wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
}

fn encode(enc: &mut Encoder, p: &Parts) {
    let (body, last) = match p {
        Parts::Req(m, body, last) => {
            enc.request_head(m).unwrap();
            (body, last)
        }
        Parts::Res(m, body, last) => {
            enc.response_head(m).unwrap();
            (body, last)
        }
    };
    let has_body = match p {
        Parts::Req(m, ..) => m.body.is_some(),
        Parts::Res(m, ..) => m.body.is_some(),
    };
    for b in body {
        enc.data(b.clone()).unwrap();
    }
    if has_body {
        enc.end(last.ieof).unwrap();
    }
    // The writer drains the queue (a socket write), dropping what it wrote.
    let n = enc.remaining();
    enc.advance(n);
}

/// Every shape: name, wire, whether it is a request.
fn shapes() -> Vec<(String, Bytes, bool)> {
    let mut out: Vec<_> = support::fixtures()
        .into_iter()
        .map(|f| (f.name.to_string(), f.wire, f.request))
        .collect();
    for chunk in [16 * 1024, 1024] {
        let (wire, _) = support::body_message(1 << 20, chunk);
        out.push((format!("1MiB-in-{chunk}"), Bytes::from(wire), false));
    }
    out
}

const WARM: usize = 3;
const RUNS: usize = 50;

#[test]
fn decoding_a_message_again_allocates_nothing() {
    let mut report = Vec::new();
    for (name, wire, request) in shapes() {
        for feed in [Feed::Copy, Feed::Shared, Feed::Frozen, Feed::Split] {
            if matches!(feed, Feed::Split) && wire.len() > 4096 {
                continue;
            }
            let body = Decoding::new(wire.clone(), request, feed).once();
            let mut d = Decoding::new(wire.clone(), request, feed);
            let (first, steady) = first_and_steady(|| assert_eq!(d.once(), body));
            report.push(format!(
                "{name} {feed:?}: first {first}, then {steady} in {RUNS}"
            ));
            assert_eq!(
                steady, 0,
                "{name}, {feed:?}: {steady} allocations in {RUNS} messages (first message: {first})"
            );
        }
    }
    println!("{}", report.join("\n"));
}

/// The same contract for body data taken as borrowed slices (`decode_with`) and as joined
/// pieces (`set_coalesce`): the joined pieces' buffer is reclaimed in place once the caller
/// has dropped them.
#[test]
fn decoding_with_slices_or_joined_pieces_again_allocates_nothing() {
    let mut report = Vec::new();
    for (name, wire, request) in shapes() {
        for feed in [Feed::Copy, Feed::Shared, Feed::Frozen] {
            for take in [Take::Slices, Take::Joined] {
                let body = Decoding::new(wire.clone(), request, feed).once();
                let mut d = Decoding::new(wire.clone(), request, feed).taking(take);
                let (first, steady) = first_and_steady(|| assert_eq!(d.once(), body));
                report.push(format!(
                    "{name} {feed:?} {take:?}: first {first}, then {steady} in {RUNS}"
                ));
                assert_eq!(
                    steady, 0,
                    "{name}, {feed:?}, {take:?}: {steady} allocations in {RUNS} messages (first: {first})"
                );
            }
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn encoding_a_message_again_allocates_nothing() {
    let mut report = Vec::new();
    for (name, wire, request) in shapes() {
        let p = parts(request, &wire);
        let mut enc = Encoder::new();
        let (first, steady) = first_and_steady(|| encode(&mut enc, &p));
        report.push(format!("{name}: first {first}, then {steady} in {RUNS}"));
        assert_eq!(
            steady, 0,
            "{name}: {steady} allocations in {RUNS} messages (first message: {first})"
        );
    }
    println!("{}", report.join("\n"));
}

/// The counter counts: a test that cannot fail is a defect.
#[test]
fn the_counter_sees_allocations() {
    let n = allocs_of(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}

/// `feed_bytes` of a buffer the caller keeps a clone of: every body piece is a slice of that
/// buffer (same memory), for large and small chunks.
#[test]
fn feed_bytes_of_a_shared_buffer_is_decoded_in_place() {
    for chunk in [16 * 1024, 1024, 7] {
        let (wire, _) = support::body_message(64 * 1024, chunk);
        let wire = Bytes::from(wire);
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        let mut d = ResponseDecoder::default();
        d.feed_bytes(wire.clone());
        let (mut n, mut pieces) = (0, 0);
        while let Some(ev) = d.decode().unwrap() {
            if let ResponseEvent::Data(b) = ev {
                assert!(
                    range.contains(&(b.as_ptr() as usize)),
                    "chunk {chunk}: copied"
                );
                n += b.len();
                pieces += 1;
            }
        }
        assert_eq!(n, 64 * 1024);
        assert!(pieces >= 64 * 1024 / chunk);
        assert!(d.is_idle());
    }
}

/// Two `feed_bytes` reads split anywhere give what one `feed` gives: a head cut short is
/// copied together with the next read, a body cut anywhere is decoded in place.
#[test]
fn feed_bytes_split_anywhere_decodes_the_same() {
    for (name, wire, request) in shapes().into_iter().take(5) {
        let mut want = Decoding::new(wire.clone(), request, Feed::Copy);
        let body = want.once();
        for k in (1..wire.len()).step_by(7) {
            let (a, b) = (wire.slice(..k), wire.slice(k..));
            let n = if request {
                let mut d = RequestDecoder::default();
                d.feed_bytes(a);
                let n = support::drain_request(&mut d);
                d.feed_bytes(b);
                let n = n + support::drain_request(&mut d);
                assert!(d.is_idle(), "{name} split at {k}");
                n
            } else {
                let mut d = ResponseDecoder::default();
                d.feed_bytes(a);
                let n = support::drain_response(&mut d);
                d.feed_bytes(b);
                let n = n + support::drain_response(&mut d);
                assert!(d.is_idle(), "{name} split at {k}");
                n
            };
            assert_eq!(n, body, "{name} split at {k}");
        }
    }
}
