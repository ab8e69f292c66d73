//! Peak heap while decoding hostile heads, measured by a counting allocator.
//!
//! Issue 12: a head of obs-fold continuation lines cost memory quadratic in its length (each
//! line copied the whole joined value again): 270 MB for a 64 KiB ICAP response head. Here the
//! peak heap of a decode must stay within a small multiple of the head's size.
//!
//! The counters are per thread, so the tests of this binary can run in parallel without
//! counting each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use icap::{ErrorKind, Limits, RequestDecoder, RequestEvent, ResponseDecoder, ResponseEvent};

struct Counting;

thread_local! {
    /// Bytes this thread holds now, and the most it held since the last [`reset_peak`].
    static HELD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

fn track(add: usize, sub: usize) {
    // `try_with`: allocations during thread teardown, after the slot is gone, go uncounted.
    let _ = HELD.try_with(|h| {
        let (now, peak) = h.get();
        let now = (now + add).saturating_sub(sub);
        h.set((now, peak.max(now)));
    });
}

// SAFETY: every call is passed on to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        track(l.size(), 0);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(0, l.size());
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        track(n, l.size());
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns what it returned with the most heap it held above what was held
/// before it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = HELD.with(|h| {
        let (now, _) = h.get();
        h.set((now, now));
        now
    });
    let out = f();
    let peak = HELD.with(|h| h.get().1);
    (out, peak - base)
}

/// `n` obs-fold continuation lines of four bytes (` a` CRLF) after one field.
fn folded_field(n: usize) -> String {
    let mut s = String::from("X-Violations-Found: 1\r\n");
    for _ in 0..n {
        s.push_str(" a\r\n");
    }
    s
}

fn wide_limits() -> Limits {
    Limits::default()
        .with_max_headers(100_000)
        .with_max_folded_value(1 << 20)
}

/// An ICAP response head just under 64 KiB, all one folded field.
fn folded_icap_response() -> Vec<u8> {
    let head = format!(
        "ICAP/1.0 200 OK\r\nISTag: \"x\"\r\n{}Encapsulated: null-body=0\r\n\r\n",
        folded_field(16_000)
    );
    assert!(head.len() <= Limits::default().max_icap_head);
    head.into_bytes()
}

/// A RESPMOD request whose encapsulated HTTP response head (where obs-fold is accepted) is
/// 64 KiB, nearly all one folded field. (Not the 256 KiB the limit allows: before the fix,
/// that cost 4 GB.)
fn folded_respmod() -> (Vec<u8>, usize) {
    let http = format!("HTTP/1.1 200 OK\r\n{}\r\n", folded_field(16_000));
    assert!(http.len() <= Limits::default().max_http_head);
    let icap = format!(
        "RESPMOD icap://x/respmod ICAP/1.0\r\nHost: x\r\nEncapsulated: res-hdr=0, null-body={}\r\n\r\n",
        http.len()
    );
    (format!("{icap}{http}").into_bytes(), http.len())
}

#[test]
fn a_folded_icap_response_head_costs_memory_linear_in_its_size() {
    let head = folded_icap_response();
    let t = Instant::now();
    let (value_len, peak) = peak_of(|| {
        let mut dec = ResponseDecoder::new(wide_limits());
        dec.feed(&head);
        let Some(ResponseEvent::Head(res)) = dec.decode().unwrap() else {
            panic!("no head");
        };
        res.headers.get("X-Violations-Found").unwrap().len()
    });
    eprintln!(
        "ICAP response head {} bytes: peak heap {peak} bytes, {:?}",
        head.len(),
        t.elapsed()
    );
    // "1" and 16 000 times " a".
    assert_eq!(value_len, 1 + 2 * 16_000);
    assert!(
        peak <= 4 * head.len(),
        "peak {peak} for {} bytes",
        head.len()
    );
}

#[test]
fn a_folded_http_response_head_in_a_respmod_costs_memory_linear_in_its_size() {
    let (req, http_len) = folded_respmod();
    let t = Instant::now();
    let (value_len, peak) = peak_of(|| {
        let mut dec = RequestDecoder::new(wide_limits());
        dec.feed(&req);
        let Some(RequestEvent::Head(r)) = dec.decode().unwrap() else {
            panic!("no head");
        };
        let res = r.http_response.as_ref().expect("res-hdr");
        res.headers.get("X-Violations-Found").unwrap().len()
    });
    eprintln!(
        "RESPMOD with a {http_len}-byte res-hdr: peak heap {peak} bytes, {:?}",
        t.elapsed()
    );
    assert_eq!(value_len, 1 + 2 * 16_000);
    assert!(peak <= 4 * req.len(), "peak {peak} for {} bytes", req.len());
}

#[test]
fn with_the_default_limits_folded_heads_are_refused_early_and_cheaply() {
    let head = folded_icap_response();
    let (e, peak) = peak_of(|| {
        let mut dec = ResponseDecoder::default();
        dec.feed(&head);
        dec.decode().unwrap_err()
    });
    assert_eq!(e.kind(), ErrorKind::TooManyHeaders, "{e}");
    assert!(
        peak <= 4 * head.len(),
        "peak {peak} for {} bytes",
        head.len()
    );

    let (req, _) = folded_respmod();
    let (e, peak) = peak_of(|| {
        let mut dec = RequestDecoder::default();
        dec.feed(&req);
        dec.decode().unwrap_err()
    });
    assert_eq!(e.kind(), ErrorKind::TooManyHeaders, "{e}");
    assert!(peak <= 4 * req.len(), "peak {peak} for {} bytes", req.len());
}
