//! Head decode: the five head figures of issues 8 and 16, each beside `httparse` in the same group.
//!
//! Group `heads/<fixture>`: `icap` decodes the whole message (ICAP head, Encapsulated, embedded
//! HTTP heads, and the small bodies some carry) through one reused decoder, as on a keep-alive
//! connection; `icap/heads-only` feeds the same decoders exactly the head bytes (ICAP head and
//! embedded HTTP heads) and decodes until the head event: the bytes `httparse/all-heads` parses
//! (the ICAP header block through `httparse::parse_headers`, plus the embedded heads; issue 16
//! goal `heads-only <= 1.5x` it). `httparse/embedded` parses only the embedded HTTP heads: the
//! issue's first baseline, kept for the record, which a whole ICAP decode cannot meet.
//!
//! Group `embedded/<fixture>`: the embedded heads alone, through the public
//! `HttpRequestHead::parse` / `HttpResponseHead::parse` (`icap`) and through
//! `httparse::Request::parse` / `httparse::Response::parse` (`httparse`), on the same bytes
//! (goal `icap <= 1.3x`).
//!
//! `cargo bench --bench heads -- --warm-up-time 1 --measurement-time 3`

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use icap::{
    HttpRequestHead, HttpResponseHead, Limits, RequestDecoder, RequestEvent, ResponseDecoder,
    ResponseEvent,
};

use icap_bench_fixtures as support;
use support::{
    drain_request, drain_response, fixtures, httparse_all_heads, httparse_embedded, Fixture,
};

/// Decoders a heads-only batch runs through, so that the clock is read once per batch (the
/// read costs ~20 ns; 16 decoders cost more in cache than the clock saves: options-200 read
/// 654 ns heads-only against 548 ns for the whole message, 483 against 492 with 4).
const BATCH: usize = 4;

/// The head bytes of `f` (ICAP head, then the embedded heads), and what ends its body when it
/// has one (a last chunk): fed after the head event, outside the timed part.
fn head_parts(f: &Fixture) -> (Vec<u8>, &'static [u8]) {
    let mut heads = f.wire[f.icap_head.clone()].to_vec();
    let mut end = f.icap_head.end;
    for (r, _) in &f.http_heads {
        heads.extend_from_slice(&f.wire[r.clone()]);
        end = r.end;
    }
    // The message's own last chunk (a preview's carries `ieof`, which ends the message).
    let tail: &[u8] = if end == f.wire.len() {
        b""
    } else if f.wire.ends_with(b"0; ieof\r\n\r\n") {
        b"0; ieof\r\n\r\n"
    } else {
        b"0\r\n\r\n"
    };
    (heads, tail)
}

/// Feeds the head bytes and decodes until the head event (dropped here, as a caller would).
#[inline(never)]
fn request_head(dec: &mut RequestDecoder, heads: &[u8]) {
    dec.feed(heads);
    match dec.decode() {
        Ok(Some(RequestEvent::Head(h))) => {
            std::hint::black_box(&h);
        }
        other => panic!("expected a head: {other:?}"),
    }
}

/// As [`request_head`], for responses.
#[inline(never)]
fn response_head(dec: &mut ResponseDecoder, heads: &[u8]) {
    dec.feed(heads);
    match dec.decode() {
        Ok(Some(ResponseEvent::Head(h))) => {
            std::hint::black_box(&h);
        }
        other => panic!("expected a head: {other:?}"),
    }
}

/// The public embedded-head parsers on each embedded head of `f`.
#[inline(never)]
fn icap_embedded(f: &Fixture, limits: &Limits) -> usize {
    let mut n = 0;
    for (r, is_req) in &f.http_heads {
        let raw = f.wire.slice(r.clone());
        n += if *is_req {
            let h = HttpRequestHead::parse(raw, limits).expect("parses");
            std::hint::black_box(&h).headers.len()
        } else {
            let h = HttpResponseHead::parse(raw, limits).expect("parses");
            std::hint::black_box(&h).headers.len()
        };
    }
    n
}

/// One heads-only batch: `k` decoders fed and decoded to their heads (timed), then finished.
fn heads_only_batch(
    f: &Fixture,
    heads: &[u8],
    tail: &[u8],
    reqs: &mut [RequestDecoder],
    ress: &mut [ResponseDecoder],
) -> Duration {
    let t = Instant::now();
    if f.request {
        for d in reqs.iter_mut() {
            request_head(d, heads);
        }
    } else {
        for d in ress.iter_mut() {
            response_head(d, heads);
        }
    }
    let spent = t.elapsed();
    for d in reqs.iter_mut() {
        d.feed(tail);
        drain_request(d);
    }
    for d in ress.iter_mut() {
        d.feed(tail);
        drain_response(d);
    }
    spent
}

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
        let (heads, tail) = head_parts(&f);
        let (k_req, k_res) = if f.request { (BATCH, 0) } else { (0, BATCH) };
        let mut reqs: Vec<_> = (0..k_req).map(|_| RequestDecoder::default()).collect();
        let mut ress: Vec<_> = (0..k_res).map(|_| ResponseDecoder::default()).collect();
        g.bench_function("icap/heads-only", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let k = BATCH.min((iters - done) as usize);
                    let (rq, rs) = (k_req.min(k), k_res.min(k));
                    spent += heads_only_batch(&f, &heads, tail, &mut reqs[..rq], &mut ress[..rs]);
                    done += k as u64;
                }
                spent
            })
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
        if f.http_heads.is_empty() {
            continue;
        }
        let mut g = c.benchmark_group(format!("embedded/{}", f.name));
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: f.http_bytes() as u64,
        });
        let limits = Limits::default();
        g.bench_function("icap", |b| {
            b.iter(|| icap_embedded(std::hint::black_box(&f), &limits))
        });
        g.bench_function("httparse", |b| {
            b.iter(|| httparse_embedded(std::hint::black_box(&f)))
        });
        g.finish();
    }
}

/// `ICAP_CALLGRIND=<fixture>:<what>:<n>` runs that figure `n` times and exits, for instruction
/// counts that do not move with load: `valgrind --tool=callgrind target/release/deps/heads-*`
/// with n and 2n, difference / n. `what`: `icap` (whole message), `all-heads` (httparse on the
/// head bytes), `embedded` (httparse on the embedded heads), `icap-embedded` (the public
/// embedded-head parsers), `views` (only the `Bytes` views the latter take), `heads-only`
/// (feed the head bytes and decode until the head event, then finish the message: count it
/// with `--toggle-collect='heads::*_head'`, which counts only `request_head` /
/// `response_head`). Bodies: `body-<chunk>:<shared|with|coalesce|feed|bound>:<n>`, see below.
fn callgrind(spec: &str) {
    let mut it = spec.split(':');
    let (name, what, n) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let n: usize = n.parse().unwrap();
    if let Some(chunk) = name.strip_prefix("body-") {
        // `body-<chunk>:<how>:<n>`: 1 MiB in `chunk`-byte chunks, fed as a shared Bytes and
        // taken out as `Data` events (`shared`), through `decode_with` (`with`), or as `Data`
        // events joined up to 16 KiB (`coalesce`), or `Data` events bound before they are
        // matched (`bound`); or copied in with `feed` (`feed`).
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
                "bound" => drain_bound(&mut dec),
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
    let (heads, tail) = head_parts(&f);
    let limits = Limits::default();
    let mut sum = 0;
    for _ in 0..n {
        sum += match what {
            "heads-only" => {
                if f.request {
                    request_head(&mut req, &heads);
                    req.feed(tail);
                    drain_request(&mut req)
                } else {
                    response_head(&mut res, &heads);
                    res.feed(tail);
                    drain_response(&mut res)
                }
            }
            "icap-embedded" => icap_embedded(std::hint::black_box(&f), &limits),
            // The refcount traffic alone: one `Bytes` view of each embedded head made and
            // dropped (an atomic increment and decrement), as the public parsers' callers pay.
            "views" => f
                .http_heads
                .iter()
                .map(|(r, _)| std::hint::black_box(f.wire.slice(r.clone())).len())
                .sum(),
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

/// A consumer that binds each event before looking at it (`while let Some(ev) = ...`), as
/// most code does: what moving an event costs it, beside `drain_response`.
#[inline(never)]
fn drain_bound(dec: &mut ResponseDecoder) -> usize {
    let mut n = 0;
    while let Some(ev) = dec.decode().expect("decodes") {
        std::hint::black_box(&ev);
        if let ResponseEvent::Data(d) = ev {
            n += d.len();
        }
    }
    n
}

criterion_group!(benches, heads);

fn main() {
    if let Ok(spec) = std::env::var("ICAP_CALLGRIND") {
        return callgrind(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
