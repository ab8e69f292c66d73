//! Serialize: the head figures of `heads.rs` framed by `Encoder` (head, body as chunks, last
//! chunk), beside a memcpy of the same wire bytes into a preallocated buffer.
//!
//! A counting global allocator reports allocations per message before timing starts, and
//! each body `Bytes` is checked to be queued as is (pointer equality): bodies are not copied.
//!
//! `cargo bench --bench encode -- --warm-up-time 1 --measurement-time 3`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icap::{
    BodyKind, Encoder, Headers, HttpResponseHead, Request, RequestDecoder, RequestEvent, Response,
    ResponseDecoder, ResponseEvent,
};

use icap_bench_fixtures as support;
use support::fixtures;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

enum Msg {
    Req(Request),
    Res(Response),
}

/// A decoded fixture: the message value and its body pieces.
fn decoded(wire: &Bytes, request: bool) -> (Msg, Vec<Bytes>) {
    let mut body = Vec::new();
    let mut msg = None;
    if request {
        let mut d = RequestDecoder::default();
        d.feed(wire);
        while let Some(ev) = d.decode().unwrap() {
            match ev {
                RequestEvent::Head(m) => msg = Some(Msg::Req(m)),
                RequestEvent::Data(b) => body.push(b),
                _ => {}
            }
        }
    } else {
        let mut d = ResponseDecoder::default();
        d.feed(wire);
        while let Some(ev) = d.decode().unwrap() {
            match ev {
                ResponseEvent::Head(m) => msg = Some(Msg::Res(m)),
                ResponseEvent::Data(b) => body.push(b),
                _ => {}
            }
        }
    }
    (msg.expect("a head"), body)
}

/// Frames `msg` and `body` into `enc`; returns the wire length.
fn frame(enc: &mut Encoder, msg: &Msg, body: &[Bytes]) -> usize {
    match msg {
        Msg::Req(r) => enc.request_head(r).unwrap(),
        Msg::Res(r) => enc.response_head(r).unwrap(),
    }
    let has_body = match msg {
        Msg::Req(r) => r.body.is_some(),
        Msg::Res(r) => r.body.is_some(),
    };
    for b in body {
        enc.data(b.clone()).unwrap();
    }
    if has_body {
        enc.end(false).unwrap();
    }
    enc.remaining()
}

/// The c-icap block page answer, built from parts as a server would.
fn build_block_page(page: &Bytes) -> Response {
    let mut res = Response::new(200, "OK");
    res.headers.append("Server", "C-ICAP/0.5.10");
    res.headers.append("Connection", "keep-alive");
    res.headers.append("ISTag", "\"CI0001-XXXXXXXXX\"");
    res.headers.append("X-ICAP-Profile", "default");
    res.headers.append("X-Attribute", "denyhosts");
    res.headers.append("X-Response-Info", "BLOCKED");
    res.headers
        .append("X-Response-Desc", "URL category denyhosts is BLOCKED");
    let mut h = Headers::new();
    h.append("Server", "C-ICAP");
    h.append("Content-Type", "text/html");
    h.append("Connection", "close");
    h.append("Content-Language", "en");
    h.append("Content-Length", page.len().to_string());
    res.http_response = Some(HttpResponseHead::new(403, "Forbidden", h));
    res.body = Some(BodyKind::Response);
    res
}

fn drain(enc: &mut Encoder) {
    let n = enc.remaining();
    enc.advance(n);
}

fn encode(c: &mut Criterion) {
    let mut enc = Encoder::new();
    for f in fixtures() {
        let (msg, body) = decoded(&f.wire, f.request);
        // Body pieces are queued as they are, not copied.
        frame(&mut enc, &msg, &body);
        let queued: Vec<*const u8> = enc.iter().map(|b| b.as_ptr()).collect();
        for b in &body {
            assert!(queued.contains(&b.as_ptr()), "{}: body was copied", f.name);
        }
        drain(&mut enc);
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..100 {
            frame(&mut enc, &msg, &body);
            drain(&mut enc);
        }
        let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / 100.0;
        println!("encode/{}: {per:.1} allocations per message", f.name);

        let wire_len = frame(&mut enc, &msg, &body);
        drain(&mut enc);
        let mut g = c.benchmark_group(format!("encode/{}", f.name));
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: wire_len as u64,
        });
        g.bench_function("icap/frame", |b| {
            b.iter(|| {
                let n = frame(&mut enc, &msg, &body);
                drain(&mut enc);
                n
            })
        });
        if f.name == "block-403" {
            let page = body.concat();
            let page = Bytes::from(page);
            let before = ALLOCS.load(Ordering::Relaxed);
            for _ in 0..100 {
                let res = Msg::Res(build_block_page(&page));
                frame(&mut enc, &res, std::slice::from_ref(&page));
                drain(&mut enc);
            }
            let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / 100.0;
            println!(
                "encode/{}: build+frame {per:.1} allocations per message",
                f.name
            );
            g.bench_function("icap/build+frame", |b| {
                b.iter(|| {
                    let res = Msg::Res(build_block_page(&page));
                    let n = frame(&mut enc, &res, std::slice::from_ref(&page));
                    drain(&mut enc);
                    n
                })
            });
        }
        let mut dst = vec![0u8; f.wire.len()];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&f.wire));
                std::hint::black_box(&dst);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, encode);
criterion_main!(benches);
