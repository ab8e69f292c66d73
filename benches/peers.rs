//! Peers on the same bytes, in one run: `icap-rs` 0.3 (`ParsedResponse::from_raw`, its only
//! public parsing entry point; it parses whole responses and copies the body) and `icaparse`
//! 0.2 (`Request::parse` / `Response::parse`; its `Response` does not read embedded heads).
//! Built only with `--features bench-peers`, so normal builds do not pull them in.
//!
//! `cargo bench --features bench-peers --bench peers -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icap::{RequestDecoder, ResponseDecoder};

use icap_bench_fixtures as support;
use support::{body_message, drain_request, drain_response, fixtures};

fn peers(c: &mut Criterion) {
    for f in fixtures() {
        let mut g = c.benchmark_group(format!("peers/{}", f.name));
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: f.wire.len() as u64,
        });
        if f.request {
            let mut dec = RequestDecoder::default();
            g.bench_function("icap", |b| {
                b.iter(|| {
                    dec.feed(&f.wire);
                    drain_request(&mut dec)
                })
            });
            g.bench_function("icaparse", |b| {
                b.iter(|| {
                    let mut hs = [icaparse::EMPTY_HEADER; 32];
                    let mut req = icaparse::Request::new(&mut hs);
                    let st = req.parse(std::hint::black_box(&f.wire)).expect("icaparse");
                    std::hint::black_box(&req);
                    st.is_complete()
                })
            });
        } else {
            let mut dec = ResponseDecoder::default();
            g.bench_function("icap", |b| {
                b.iter(|| {
                    dec.feed(&f.wire);
                    drain_response(&mut dec)
                })
            });
            g.bench_function("icap-rs", |b| {
                b.iter(|| {
                    icap_rs::ParsedResponse::from_raw(std::hint::black_box(&f.wire))
                        .expect("icap-rs")
                })
            });
            g.bench_function("icaparse", |b| {
                b.iter(|| {
                    let mut hs = [icaparse::EMPTY_HEADER; 32];
                    let mut res = icaparse::Response::new(&mut hs);
                    let st = res.parse(std::hint::black_box(&f.wire)).expect("icaparse");
                    std::hint::black_box(&res);
                    st.is_complete()
                })
            });
        }
        g.finish();
    }
    for (chunk, label) in [(16 * 1024, "16KiB"), (1024, "1KiB")] {
        let (wire, _) = body_message(1 << 20, chunk);
        let mut g = c.benchmark_group(format!("peers/body-1MiB-in-{label}-chunks"));
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: wire.len() as u64,
        });
        let mut dec = ResponseDecoder::default();
        g.bench_function("icap/feed", |b| {
            b.iter(|| {
                dec.feed(&wire);
                drain_response(&mut dec)
            })
        });
        // The zero-copy path: the read buffer is handed over (as a socket read into the
        // decoder's buffer would be); making the unique buffer is setup, not timed.
        g.bench_function("icap/feed_bytes", |b| {
            b.iter_batched(
                || bytes::Bytes::from(wire.clone()),
                |buf| {
                    dec.feed_bytes(buf);
                    drain_response(&mut dec)
                },
                criterion::BatchSize::LargeInput,
            )
        });
        // A shared buffer (the caller keeps a clone): decoded in place, no setup.
        let shared = bytes::Bytes::from(wire.clone());
        g.bench_function("icap/feed_bytes-shared", |b| {
            b.iter(|| {
                dec.feed_bytes(shared.clone());
                drain_response(&mut dec)
            })
        });
        // The same, body data as borrowed slices (`decode_with`).
        g.bench_function("icap/decode_with-shared", |b| {
            b.iter(|| {
                dec.feed_bytes(shared.clone());
                support::drain_response_with(&mut dec)
            })
        });
        // The same, `Data` events with small chunks joined up to 16 KiB (a copy).
        let mut joining = ResponseDecoder::default();
        joining.set_coalesce(16 * 1024);
        g.bench_function("icap/coalesce-16KiB-shared", |b| {
            b.iter(|| {
                joining.feed_bytes(shared.clone());
                drain_response(&mut joining)
            })
        });
        g.bench_function("icap-rs", |b| {
            b.iter(|| {
                icap_rs::ParsedResponse::from_raw(std::hint::black_box(&wire)).expect("icap-rs")
            })
        });
        let mut dst = vec![0u8; wire.len()];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&wire));
                std::hint::black_box(&dst);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, peers);
criterion_main!(benches);
