//! Body decode: 1 MiB and 64 MiB bodies in 16 KiB and 1 KiB chunks, fed in 64 KiB reads, each
//! beside `memchr` counting LFs in the same wire bytes and a plain memcpy of them.
//!
//! `icap/feed_bytes` hands each read over as a unique `Bytes` (as from a socket read into a
//! fresh buffer), so the decoder takes it without copying and every `Data` is a view of it;
//! making those buffers is setup, not timed. `icap/feed` copies each read into the decoder's
//! buffer (`Decoder::feed`). `icap/feed_bytes-shared` hands over slices of one shared
//! `Bytes` (the caller keeps it): decoded in place too; `icap/decode_with-shared` takes the
//! same body as borrowed slices (`Decoder::decode_with`), `icap/coalesce-16KiB-shared` as
//! `Data` events with small chunks joined (`Decoder::set_coalesce`, a copy). Goals: with
//! 16 KiB chunks `feed_bytes` beats the memcpy; with 1 KiB chunks, at most a memcpy.
//!
//! `cargo bench --bench body -- --warm-up-time 1 --measurement-time 3`

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use icap::{ResponseDecoder, ResponseEvent};

use icap_bench_fixtures as support;
use support::body_message;

const READ: usize = 64 * 1024;

/// Decodes what is buffered, returning the body bytes seen. Events are matched inside the
/// `Result` they come in: taking one out first (`expect`, `?`) moves the whole event (as large
/// as a head, about 500 bytes) once per body piece, a cost of this loop, not of the decoder
/// (the `bound` case of `benches/callgrind.sh`).
#[inline]
fn drain(dec: &mut ResponseDecoder) -> usize {
    let mut n = 0;
    loop {
        match dec.decode() {
            Ok(Some(ResponseEvent::Data(d))) => n += d.len(),
            Ok(Some(_)) => {}
            Ok(None) => return n,
            Err(e) => panic!("decodes: {e}"),
        }
    }
}

fn decode_reads(dec: &mut ResponseDecoder, reads: Vec<Bytes>) -> usize {
    let mut n = 0;
    for r in reads {
        dec.feed_bytes(r);
        n += drain(dec);
    }
    n
}

/// Checks, before timing, that `feed_bytes` really is zero-copy: every `Data` points into
/// the read it came from.
fn assert_zero_copy(wire: &[u8]) {
    let reads: Vec<Bytes> = wire.chunks(READ).map(Bytes::copy_from_slice).collect();
    let ranges: Vec<_> = reads
        .iter()
        .map(|r| r.as_ptr() as usize..r.as_ptr() as usize + r.len())
        .collect();
    let mut dec = ResponseDecoder::default();
    let mut pieces = 0;
    for r in reads {
        dec.feed_bytes(r);
        while let Some(ev) = dec.decode().expect("decodes") {
            if let ResponseEvent::Data(d) = ev {
                let p = d.as_ptr() as usize;
                assert!(
                    ranges.iter().any(|r| r.contains(&p)),
                    "Data was copied out of the reads"
                );
                pieces += 1;
            }
        }
    }
    assert!(pieces > 0);
}

fn body(c: &mut Criterion) {
    for (body_len, label) in [(1 << 20, "1MiB"), (64 << 20, "64MiB")] {
        for (chunk, clabel) in [(16 * 1024, "16KiB"), (1024, "1KiB")] {
            let (wire, _) = body_message(body_len, chunk);
            assert_zero_copy(&wire);
            let mut g = c.benchmark_group(format!("body/{label}-in-{clabel}-chunks"));
            if body_len > 1 << 20 {
                g.sample_size(10)
                    .warm_up_time(Duration::from_millis(500))
                    .measurement_time(Duration::from_secs(3));
            }
            g.throughput(Throughput::ElementsAndBytes {
                elements: 1,
                bytes: wire.len() as u64,
            });
            let mut dec = ResponseDecoder::default();
            g.bench_function("icap/feed_bytes", |b| {
                b.iter_batched(
                    || wire.chunks(READ).map(Bytes::copy_from_slice).collect(),
                    |reads| decode_reads(&mut dec, reads),
                    BatchSize::PerIteration,
                )
            });
            // Slices of one shared buffer (a clone is what the caller keeps): decoded in place.
            let shared = Bytes::from(wire.clone());
            let shared_reads: Vec<Bytes> = (0..wire.len())
                .step_by(READ)
                .map(|i| shared.slice(i..(i + READ).min(wire.len())))
                .collect();
            let mut dec = ResponseDecoder::default();
            g.bench_function("icap/feed_bytes-shared", |b| {
                b.iter(|| {
                    let mut n = 0;
                    for r in &shared_reads {
                        dec.feed_bytes(r.clone());
                        n += drain(&mut dec);
                    }
                    n
                })
            });
            // The same shared reads, body data as borrowed slices (`decode_with`).
            let mut dec = ResponseDecoder::default();
            g.bench_function("icap/decode_with-shared", |b| {
                b.iter(|| {
                    let mut n = 0;
                    for r in &shared_reads {
                        dec.feed_bytes(r.clone());
                        while dec
                            .decode_with(|d| n += d.len())
                            .expect("decodes")
                            .is_some()
                        {}
                    }
                    n
                })
            });
            // The same, `Data` events with small chunks joined up to 16 KiB (a copy).
            let mut dec = ResponseDecoder::default();
            dec.set_coalesce(16 * 1024);
            g.bench_function("icap/coalesce-16KiB-shared", |b| {
                b.iter(|| {
                    let mut n = 0;
                    for r in &shared_reads {
                        dec.feed_bytes(r.clone());
                        n += drain(&mut dec);
                    }
                    n
                })
            });
            let mut dec = ResponseDecoder::default();
            g.bench_function("icap/feed", |b| {
                b.iter(|| {
                    let mut n = 0;
                    for r in wire.chunks(READ) {
                        dec.feed(r);
                        n += drain(&mut dec);
                    }
                    n
                })
            });
            g.bench_function("memchr-lf", |b| {
                b.iter(|| memchr::memchr_iter(b'\n', std::hint::black_box(&wire)).count())
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
}

criterion_group!(benches, body);
criterion_main!(benches);
