//! The client against dead and hostile partners: a black hole, an endless answer, garbage,
//! `100 Continue` then close, resets. Beside a healthy partner every file gets its right
//! verdict and the faulty one is paid for only until it is marked down; alone, every file
//! fails closed within the deadline and the down partner is only probed (OPTIONS), not
//! tried, until a good OPTIONS answer brings it back.
#![cfg(all(feature = "scan", feature = "server"))]

mod net;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use icap::client::ClientError;
use icap::client::{BodySource, Client, ClientConfig};
use icap::dlp::{ScanMode, ScanRequest};
use icap::server::ServerConfig;
use net::blocker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Accepts, reads everything, never answers.
    BlackHole,
    /// A 200 whose body never ends.
    EndlessBody,
    /// Not ICAP at all.
    Garbage,
    /// `100 Continue` to a preview that ended with `ieof` (or to no preview), then close.
    EarlyContinueClose,
    /// Reads a little and closes with unread data (RST).
    Reset,
}

const OPTIONS_ANSWER: &[u8] =
    b"ICAP/1.0 200 OK\r\nMethods: REQMOD, RESPMOD\r\nISTag: \"fake-1\"\r\n\
Preview: 8\r\nAllow: 204\r\nTransfer-Preview: *\r\nEncapsulated: null-body=0\r\n\r\n";

/// A fake partner on loopback. `options_ok`: OPTIONS gets a good answer (so the fault hits
/// the scans); otherwise every request meets the fault.
struct Fake {
    port: u16,
    connections: Arc<AtomicU64>,
    options: Arc<AtomicU64>,
}

impl Fake {
    async fn start(fault: Fault, options_ok: bool) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let options = Arc::new(AtomicU64::new(0));
        let (c, o) = (connections.clone(), options.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_fake(s, fault, options_ok, o.clone()));
            }
        });
        Fake {
            port,
            connections,
            options,
        }
    }

    fn uri(&self) -> String {
        format!("icap://127.0.0.1:{}/blocker", self.port)
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Reads into `buf` until one of `pats` is in it (bounded); false on EOF or error.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, pats: &[&[u8]]) -> bool {
    while !pats.iter().any(|p| buf.windows(p.len()).any(|w| w == *p)) {
        if buf.len() > 1 << 20 {
            return false;
        }
        let mut b = [0u8; 4096];
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    true
}

async fn drain(mut s: TcpStream) {
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b).await {
        if n == 0 {
            break;
        }
    }
}

async fn serve_fake(mut s: TcpStream, fault: Fault, options_ok: bool, options: Arc<AtomicU64>) {
    if fault == Fault::Reset {
        let mut b = [0u8; 10];
        let _ = s.read_exact(&mut b).await;
        if b.starts_with(b"OPTIONS") {
            options.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if !read_until(&mut s, &mut buf, &[b"\r\n\r\n"]).await {
            return;
        }
        if buf.starts_with(b"OPTIONS") {
            options.fetch_add(1, Ordering::Relaxed);
            if options_ok {
                if s.write_all(OPTIONS_ANSWER).await.is_err() {
                    return;
                }
                continue;
            }
        }
        break;
    }
    match fault {
        Fault::BlackHole => drain(s).await,
        Fault::Garbage => {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await;
            drain(s).await;
        }
        Fault::EarlyContinueClose => {
            // The whole request (its last chunk) is read first, so the close is a FIN, not
            // a reset, and the 100 is what the client sees.
            if !buf.starts_with(b"OPTIONS") {
                let last: [&[u8]; 2] = [b"\r\n0\r\n\r\n", b"\r\n0; ieof\r\n\r\n"];
                read_until(&mut s, &mut buf, &last).await;
            }
            let _ = s.write_all(b"ICAP/1.0 100 Continue\r\n\r\n").await;
        }
        Fault::EndlessBody => {
            let head = b"ICAP/1.0 200 OK\r\nISTag: \"fake-1\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            let mut chunk = b"1000\r\n".to_vec();
            chunk.extend_from_slice(&[b'e'; 0x1000]);
            chunk.extend_from_slice(b"\r\n");
            // Endless, but bounded for the test's sake: 1 GiB or until the client hangs up.
            for _ in 0..(1 << 18) {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Fault::Reset => unreachable!("handled above"),
    }
}

/// File `i` of a run: even ones are clean, odd ones blocked; every third is larger than the
/// preview (8 bytes), the others fit in it (`ieof`).
fn file(i: usize) -> (ScanRequest, bool) {
    let blocked = i % 2 == 1;
    let body = match (blocked, i % 3 == 0) {
        (false, false) => format!("ok{i:02}"),
        (true, false) => format!("BLOCK{i:02}"),
        (false, true) => format!("clean numbers, file {i:02}"),
        (true, true) => format!("file {i:02} has the BLOCK word"),
    };
    let req = ScanRequest::new(
        ScanMode::Reqmod,
        format!("f{i:02}.txt"),
        BodySource::Bytes(Bytes::from(body)),
    );
    (req, blocked)
}

/// Timeouts short for the test; no back-off, so that only the down marking keeps a failed
/// partner away (as when files take longer than the back-off, as they do against a black
/// hole with real timeouts).
fn cfg() -> ClientConfig {
    ClientConfig::default()
        .transaction_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(5))
        .backoff(Duration::ZERO)
        .failure_limit(2)
        .failure_window(Duration::from_secs(60))
        .revival_delay(Duration::from_secs(60))
        .max_answer(256 * 1024)
}

const FILES: usize = 20;

/// Twenty files against the faulty partner and a healthy one, in turn.
async fn beside_a_healthy_partner(
    fault: Fault,
    options_ok: bool,
    bound: Duration,
    last_error: &str,
) {
    let good = blocker(ServerConfig::default()).await;
    let bad = Fake::start(fault, options_ok).await;
    let client = Client::new(&[bad.uri(), good.uri("icap", "blocker")], cfg()).unwrap();
    let start = Instant::now();
    for i in 0..FILES {
        let (req, blocked) = file(i);
        let out = match client.scan(req).await {
            Ok(o) => o,
            Err(e) => panic!("{fault:?}: file {i} ended in an error: {e}"),
        };
        assert_eq!(
            out.verdict.is_blocked(),
            blocked,
            "{fault:?}: file {i}: {}",
            out.verdict
        );
        assert_eq!(
            out.exchange.unwrap().server.to_string(),
            good.uri("icap", "blocker"),
            "{fault:?}: file {i}"
        );
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < bound,
        "{fault:?}: {FILES} files took {elapsed:?}, more than {bound:?}"
    );
    // Paid for until the failure limit, then left alone: one connection per failure.
    assert_eq!(bad.connections(), 2, "{fault:?}");
    let h = client.health();
    assert!(!h[0].up && h[1].up, "{fault:?}: {h:?}");
    assert_eq!(h[0].recent_failures, 2, "{fault:?}");
    assert_eq!(h[1].total_failures, 0, "{fault:?}");
    let e = h[0].last_error.as_deref().unwrap();
    assert!(e.contains(last_error), "{fault:?}: {e}");
    assert!(h[0].next_probe.is_some() && h[1].next_probe.is_none());
    good.stop().await;
}

#[tokio::test]
async fn black_hole_beside_a_healthy_partner() {
    // Two timeouts of 1 s, then the black hole is down; before, every other file paid one.
    beside_a_healthy_partner(
        Fault::BlackHole,
        false,
        Duration::from_millis(4000),
        "timed out",
    )
    .await;
}

#[tokio::test]
async fn endless_answer_beside_a_healthy_partner() {
    beside_a_healthy_partner(
        Fault::EndlessBody,
        true,
        Duration::from_millis(3000),
        "answer too large",
    )
    .await;
}

#[tokio::test]
async fn garbage_beside_a_healthy_partner() {
    beside_a_healthy_partner(
        Fault::Garbage,
        false,
        Duration::from_millis(3000),
        "protocol error: bad_",
    )
    .await;
}

#[tokio::test]
async fn continue_then_close_beside_a_healthy_partner() {
    // The last failure is file 2, whose preview ended with ieof: a 100 is a violation.
    beside_a_healthy_partner(
        Fault::EarlyContinueClose,
        true,
        Duration::from_millis(3000),
        "unexpected_response",
    )
    .await;
}

#[tokio::test]
async fn reset_beside_a_healthy_partner() {
    beside_a_healthy_partner(Fault::Reset, false, Duration::from_millis(3000), "").await;
}

#[tokio::test]
async fn endless_answer_is_cut_at_max_answer_with_a_typed_error() {
    let bad = Fake::start(Fault::EndlessBody, true).await;
    let client = Client::new(&[bad.uri()], cfg().retries(0)).unwrap();
    let start = Instant::now();
    let (req, _) = file(2);
    match client.scan(req).await.unwrap_err() {
        // The cap is max_answer beyond the 4 bytes sent; it is hit within one read.
        ClientError::AnswerTooLarge { limit, read, .. } => {
            assert_eq!(limit, 256 * 1024 + 4);
            assert!(read > limit && read <= limit + (1 << 20), "{read}");
        }
        e => panic!("{e}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn alone_a_black_hole_fails_closed_in_time_and_is_probed_not_paid_for() {
    let bad = Fake::start(Fault::BlackHole, false).await;
    let client = Client::new(
        &[bad.uri()],
        cfg()
            .transaction_timeout(Duration::from_millis(500))
            .deadline(Duration::from_secs(2))
            .revival_delay(Duration::from_millis(1500)),
    )
    .unwrap();
    let scan = |i| {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let e = client.scan(file(i).0).await.unwrap_err();
            (e, start.elapsed())
        }
    };
    // Until the failure limit: one attempt timeout per file (not one per retry, the black
    // hole is not asked again within a call).
    for i in 0..2 {
        let (e, t) = scan(i).await;
        assert!(matches!(e, ClientError::Timeout { .. }), "file {i}: {e}");
        assert!(
            t >= Duration::from_millis(450) && t < Duration::from_millis(1000),
            "file {i}: {t:?}"
        );
    }
    assert_eq!(bad.connections(), 2);
    let down_at = Instant::now();
    // Down: failed at once, without a connection.
    for i in 2..6 {
        let (e, t) = scan(i).await;
        match &e {
            ClientError::Down { last_error, .. } => {
                assert!(last_error.contains("timed out"), "{last_error}")
            }
            e => panic!("file {i}: {e}"),
        }
        assert!(t < Duration::from_millis(250), "file {i}: {t:?}");
    }
    assert_eq!(bad.connections(), 2);
    assert_eq!(bad.options.load(Ordering::Relaxed), 2);
    let h = &client.health()[0];
    assert!(!h.up && !h.probing, "{h:?}");
    assert_eq!((h.recent_failures, h.total_failures), (2, 2));

    // After the revival delay, the next file waits for the probe (nothing else is up); the
    // probe is an OPTIONS on a new connection, it times out, the server stays down.
    tokio::time::sleep_until((down_at + Duration::from_millis(1600)).into()).await;
    let (e, t) = scan(6).await;
    assert!(matches!(e, ClientError::Down { .. }), "{e}");
    assert!(
        t >= Duration::from_millis(450) && t < Duration::from_millis(1000),
        "{t:?}"
    );
    assert_eq!(bad.connections(), 3);
    assert_eq!(bad.options.load(Ordering::Relaxed), 3);
    let h = &client.health()[0];
    assert!(!h.up, "{h:?}");
    assert_eq!(h.total_failures, 3);
    // And the next probe is a revival delay away again.
    let (e, t) = scan(7).await;
    assert!(matches!(e, ClientError::Down { .. }), "{e}");
    assert!(t < Duration::from_millis(250), "{t:?}");
    assert_eq!(bad.connections(), 3);

    // Files arriving together when the probe is due: one of them probes, the others do not
    // wait for it.
    let next = client.health()[0].next_probe.unwrap();
    let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let tasks: Vec<_> = (8..14).map(|i| tokio::spawn(scan(i))).collect();
    let mut slow = 0;
    for t in tasks {
        let (e, t) = t.await.unwrap();
        assert!(matches!(e, ClientError::Down { .. }), "{e}");
        if t >= Duration::from_millis(450) {
            slow += 1;
        } else {
            assert!(t < Duration::from_millis(250), "{t:?}");
        }
    }
    assert_eq!(slow, 1);
    assert_eq!(bad.connections(), 4);
    assert!(!client.health()[0].probing);
}

#[tokio::test]
async fn failures_older_than_the_window_are_forgotten() {
    let bad = Fake::start(Fault::Garbage, false).await;
    let client = Client::new(
        &[bad.uri()],
        cfg().retries(0).failure_window(Duration::from_millis(400)),
    )
    .unwrap();
    let fails = |i| {
        let client = client.clone();
        async move {
            let e = client.scan(file(i).0).await.unwrap_err();
            assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
        }
    };
    fails(0).await;
    assert_eq!(client.health()[0].recent_failures, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.health()[0].recent_failures, 0);
    // One failure in the window again: not the limit of two.
    fails(1).await;
    let h = &client.health()[0];
    assert!(
        h.up && h.recent_failures == 1 && h.total_failures == 2,
        "{h:?}"
    );
    fails(2).await;
    let h = &client.health()[0];
    assert!(
        !h.up && h.recent_failures == 2 && h.total_failures == 3,
        "{h:?}"
    );
    assert_eq!(bad.connections(), 3);
}

/// A partner that is a black hole or, once healed, forwards to `target`. Records the first
/// bytes of each connection.
struct Flaky {
    port: u16,
    healed: Arc<AtomicBool>,
    firsts: Arc<Mutex<Vec<String>>>,
}

impl Flaky {
    async fn start(target: u16) -> Flaky {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let healed = Arc::new(AtomicBool::new(false));
        let firsts = Arc::new(Mutex::new(Vec::new()));
        let (h, f) = (healed.clone(), firsts.clone());
        tokio::spawn(async move {
            while let Ok((mut a, _)) = l.accept().await {
                let healed = h.load(Ordering::Relaxed);
                let f = f.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    let Ok(n) = a.read(&mut first).await else {
                        return;
                    };
                    f.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&first[..n]).into_owned());
                    if !healed {
                        return drain(a).await;
                    }
                    let Ok(mut b) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    if b.write_all(&first[..n]).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        Flaky {
            port,
            healed,
            firsts,
        }
    }

    fn uri(&self) -> String {
        format!("icap://127.0.0.1:{}/blocker", self.port)
    }
}

#[tokio::test]
async fn a_down_partner_comes_back_only_after_a_good_options_probe() {
    let good = blocker(ServerConfig::default()).await;
    let flaky = Flaky::start(good.addr.port()).await;
    let client = Client::new(
        &[flaky.uri(), good.uri("icap", "blocker")],
        cfg()
            .transaction_timeout(Duration::from_millis(500))
            .failure_limit(1)
            .revival_delay(Duration::from_millis(800)),
    )
    .unwrap();
    let check = |i: usize, out: icap::dlp::ScanOutcome| {
        assert_eq!(out.verdict.is_blocked(), i % 2 == 1, "file {i}");
        out.exchange.unwrap().server.to_string()
    };
    // The first file meets the black hole first, fails over, and marks it down.
    let out = client.scan(file(0).0).await.unwrap();
    assert_eq!(check(0, out), good.uri("icap", "blocker"));
    let down_at = Instant::now();
    assert!(!client.health()[0].up);
    assert_eq!(flaky.firsts.lock().unwrap().len(), 1);

    // Healed, but down: no traffic until the revival delay has passed and a probe answered.
    flaky.healed.store(true, Ordering::Relaxed);
    for i in 1..6 {
        let out = client.scan(file(i).0).await.unwrap();
        assert_eq!(check(i, out), good.uri("icap", "blocker"));
    }
    assert!(down_at.elapsed() < Duration::from_millis(800));
    assert_eq!(flaky.firsts.lock().unwrap().len(), 1);

    // Past the delay: the next file goes to the healthy partner while the probe runs in the
    // background; once it answered, the partner is up again and shares the load.
    tokio::time::sleep_until((down_at + Duration::from_millis(900)).into()).await;
    let out = client.scan(file(6).0).await.unwrap();
    assert_eq!(check(6, out), good.uri("icap", "blocker"));
    let t = Instant::now();
    while !client.health()[0].up {
        assert!(t.elapsed() < Duration::from_secs(2), "not revived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let firsts = flaky.firsts.lock().unwrap().clone();
    assert_eq!(firsts.len(), 2, "{firsts:?}");
    assert!(firsts[1].starts_with("OPTIONS"), "{firsts:?}");
    let h = &client.health()[0];
    assert_eq!((h.recent_failures, h.total_failures), (0, 1));
    assert!(h.next_probe.is_none() && h.last_error.is_some());
    let mut served_by_flaky = 0;
    for i in 7..11 {
        let out = client.scan(file(i).0).await.unwrap();
        served_by_flaky += usize::from(check(i, out) == flaky.uri());
    }
    assert_eq!(served_by_flaky, 2, "round robin over both again");
    good.stop().await;
}
