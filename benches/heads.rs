//! Head decode: the five head figures of issue 8, each beside `httparse` in the same group.
//!
//! `icap` decodes the whole message (ICAP head, Encapsulated, embedded HTTP heads, and the small
//! bodies some carry) through one reused decoder, as on a keep-alive connection. Baselines:
//! `httparse/embedded` parses only the embedded HTTP heads (the baseline, goal
//! `icap <= 1.5x`); `httparse/all-heads` parses every head byte we parse (the ICAP header block
//! through `httparse::parse_headers`, plus the embedded heads), which measures the ICAP layer's
//! own cost (goal `< 30%` on top).
//!
//! `cargo bench --bench heads -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, Criterion, Throughput};
use icap::{RequestDecoder, ResponseDecoder};

mod support;
use support::{drain_request, drain_response, fixtures, httparse_all_heads, httparse_embedded};

fn heads(c: &mut Criterion) {
    for f in fixtures() {
        let mut g = c.benchmark_group(format!("heads/{}", f.name));
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
        } else {
            let mut dec = ResponseDecoder::default();
            g.bench_function("icap", |b| {
                b.iter(|| {
                    dec.feed(&f.wire);
                    drain_response(&mut dec)
                })
            });
        }
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: f.head_bytes() as u64,
        });
        g.bench_function("httparse/all-heads", |b| {
            b.iter(|| httparse_all_heads(std::hint::black_box(&f)))
        });
        if !f.http_heads.is_empty() {
            g.throughput(Throughput::ElementsAndBytes {
                elements: 1,
                bytes: f.http_bytes() as u64,
            });
            g.bench_function("httparse/embedded", |b| {
                b.iter(|| httparse_embedded(std::hint::black_box(&f)))
            });
        }
        g.finish();
    }
}

/// `ICAP_CALLGRIND=<fixture>:<what>:<n>` (what: `icap`, `all-heads`, `embedded`; or
/// `body-<chunk>:<shared|with|coalesce|feed>:<n>`, see below) runs that
/// figure `n` times and exits, for instruction counts that do not move with load:
/// `valgrind --tool=callgrind target/release/deps/heads-*` with n and 2n, difference / n.
fn callgrind(spec: &str) {
    let mut it = spec.split(':');
    let (name, what, n) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let n: usize = n.parse().unwrap();
    if let Some(chunk) = name.strip_prefix("body-") {
        // `body-<chunk>:<how>:<n>`: 1 MiB in `chunk`-byte chunks, fed as a shared Bytes and
        // taken out as `Data` events (`shared`), through `decode_with` (`with`), or as `Data`
        // events joined up to 16 KiB (`coalesce`); or copied in with `feed` (`feed`).
        let (wire, _) = support::body_message(1 << 20, chunk.parse().unwrap());
        let wire = bytes::Bytes::from(wire);
        let mut dec = ResponseDecoder::default();
        if what == "coalesce" {
            dec.set_coalesce(16 * 1024);
        }
        let mut sum = 0;
        for _ in 0..n {
            match what {
                "feed" => dec.feed(&wire),
                _ => dec.feed_bytes(wire.clone()),
            }
            sum += match what {
                "with" => support::drain_response_with(&mut dec),
                _ => drain_response(&mut dec),
            };
        }
        std::hint::black_box(sum);
        return;
    }
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == name)
        .expect("fixture");
    let (mut req, mut res) = (RequestDecoder::default(), ResponseDecoder::default());
    let mut sum = 0;
    for _ in 0..n {
        sum += match what {
            "icap" if f.request => {
                req.feed(&f.wire);
                drain_request(&mut req)
            }
            "icap" => {
                res.feed(&f.wire);
                drain_response(&mut res)
            }
            "all-heads" => httparse_all_heads(std::hint::black_box(&f)),
            _ => httparse_embedded(std::hint::black_box(&f)),
        };
    }
    std::hint::black_box(sum);
}

criterion_group!(benches, heads);

fn main() {
    if let Ok(spec) = std::env::var("ICAP_CALLGRIND") {
        return callgrind(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
