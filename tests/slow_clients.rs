//! Slow, idle and refused clients against a server that is full: 300 at a time of each kind
//! (empty lines before a head, a head byte by byte, a body byte by byte, silence, newcomers
//! while full) beside a normal client. Each kind must be cut by the deadline meant for it,
//! at the time it is due, and the normal client must be served within a few seconds
//! throughout. Short timeouts keep each scenario to a few seconds; every loop is bounded by
//! count and time. Also: a refused client that writes a large body reads its 503 (plain and
//! TLS), an honest slow body is served, and accept errors are counted and recovered from.
#![cfg(feature = "server")]

mod net;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use icap::server::{MinRate, Server, ServerConfig, Stats};
use net::{pki, Blocker, BlockerRoute};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Clients of each kind per scenario.
const CLIENTS: usize = 300;
/// How often a slow client sends its next byte: well under every per-read timeout below,
/// so only a deadline or the minimum rate can cut it.
const TRICKLE: Duration = Duration::from_millis(400);

const HTTP_HEAD: &str = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";

/// A REQMOD head announcing a body (the body follows separately).
fn head_with_body() -> Vec<u8> {
    format!(
        "REQMOD icap://127.0.0.1/blocker ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
         Encapsulated: req-hdr=0, req-body={}\r\n\r\n{HTTP_HEAD}",
        HTTP_HEAD.len()
    )
    .into_bytes()
}

/// A whole REQMOD with a small clean body.
fn small_request() -> Vec<u8> {
    let mut v = head_with_body();
    v.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    v
}

/// Short timeouts, limits that only deadlines and eviction can satisfy: one address may take
/// every slot. A connection that has not spoken for 200 ms may make room (the default grace is
/// seconds), and a full server refuses at once instead of leaving newcomers in the backlog.
fn config() -> ServerConfig {
    ServerConfig::default()
        .max_connections(CLIENTS)
        .max_connections_per_ip(10 * CLIENTS)
        .eviction_grace(ms(200))
        .queue_timeout(Duration::ZERO)
        .idle_timeout(Duration::from_secs(3))
        .head_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(2))
        .body_timeout(None)
        .min_rate(None)
        .refusal_timeout(Duration::from_secs(2))
        .max_refusals(2 * CLIENTS)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `\r\n` every [`TRICKLE`], forever.
    Blank,
    /// A REQMOD head, one byte every [`TRICKLE`].
    HeadByte,
    /// A whole head, then its body one byte every [`TRICKLE`].
    BodyByte,
    /// Connects and sends nothing.
    Silent,
    /// The header of a TLS handshake record, then nothing: a stalled handshake.
    Handshake,
}

/// How a slow client's connection ended.
#[derive(Debug)]
struct Cut {
    /// From its first byte (after the head for [`Kind::BodyByte`], from the connection for
    /// the silent ones) to the server's close.
    after: Duration,
    /// What the server sent.
    answer: Vec<u8>,
}

impl Cut {
    fn status(&self) -> &str {
        std::str::from_utf8(&self.answer[..self.answer.len().min(12)]).unwrap_or("?")
    }
}

async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((ip, 0)))?;
    sock.connect(addr).await
}

/// One slow client: sends its opening, trickles, and reads until the server closes or
/// `give_up` passes (`None`: never cut).
async fn slow_client(
    addr: SocketAddr,
    kind: Kind,
    ready: Arc<AtomicUsize>,
    give_up: Instant,
) -> Option<Cut> {
    let mut s = connect_from([127, 0, 0, 2], addr).await.ok()?;
    let (opening, trickle): (Vec<u8>, Vec<u8>) = match kind {
        Kind::Blank => (b"\r\n".to_vec(), b"\r\n".repeat(64)),
        Kind::HeadByte => {
            let h = head_with_body();
            (h[..1].to_vec(), h[1..].to_vec())
        }
        Kind::BodyByte => (head_with_body(), b"400\r\n".repeat(64)),
        Kind::Silent => (Vec::new(), Vec::new()),
        Kind::Handshake => (vec![0x16, 0x03, 0x01, 0x00, 0x80], Vec::new()),
    };
    s.write_all(&opening).await.ok()?;
    let t0 = Instant::now();
    ready.fetch_add(1, Ordering::SeqCst);
    let step = if kind == Kind::Blank { 2 } else { 1 };
    let mut sent = 0;
    let mut next = t0 + TRICKLE;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut writing = true;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => return Some(Cut { after: t0.elapsed(), answer }),
            },
            _ = sleep_until(next), if writing && sent < trickle.len() => {
                let piece = &trickle[sent..(sent + step).min(trickle.len())];
                // A write error means the server is gone: the read sees it next.
                writing = s.write_all(piece).await.is_ok();
                sent += piece.len();
                next += TRICKLE;
            }
            _ = sleep_until(give_up) => return None,
        }
    }
}

/// A client that connects while the server is full and then waits: it must read the 503 at
/// once and be closed by the server within the refusal timeout.
async fn refused_client(
    addr: SocketAddr,
    ready: Arc<AtomicUsize>,
    give_up: Instant,
) -> Option<Cut> {
    let mut s = connect_from([127, 0, 0, 3], addr).await.ok()?;
    let t0 = Instant::now();
    ready.fetch_add(1, Ordering::SeqCst);
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match timeout(
            give_up.saturating_duration_since(Instant::now()),
            s.read(&mut buf),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            Ok(_) => {
                return Some(Cut {
                    after: t0.elapsed(),
                    answer,
                })
            }
            Err(_) => return None,
        }
    }
}

/// The normal client: a fresh connection per request, every 200 ms until `until`; retries
/// a 503 after 50 ms. Returns how long each request took to be served (204), retries
/// included.
async fn normal_client(addr: SocketAddr, until: Instant) -> Vec<Duration> {
    let mut waits = Vec::new();
    for _ in 0..50 {
        if Instant::now() >= until {
            break;
        }
        let start = Instant::now();
        for _ in 0..200 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&small_request()).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                    other => panic!("normal client: no answer ({other:?}) after {got:?}"),
                }
            }
            if got.starts_with(b"ICAP/1.0 204 ") {
                break;
            }
            assert!(
                got.starts_with(b"ICAP/1.0 503 "),
                "normal client got {}",
                String::from_utf8_lossy(&got)
            );
            sleep(Duration::from_millis(50)).await;
        }
        waits.push(start.elapsed());
        sleep(Duration::from_millis(200)).await;
    }
    waits
}

async fn start(cfg: ServerConfig) -> net::Running {
    serve(Server::new(cfg).route_blocker("blocker", Blocker::default())).await
}

/// Runs `server` on a listener whose accept queue holds every client of a scenario: with
/// the usual 128, connections beyond it are completed by the kernel only after a SYN-ACK
/// retransmission, seconds late, and arrive out of order.
async fn serve(server: Server) -> net::Running {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let listener = sock.listen(4096).unwrap();
    net::start_on(listener, server)
}

/// Waits (at most 10 s) until `n` clients have sent their opening, then lets the server
/// read it.
async fn wait_ready(ready: &AtomicUsize, n: usize) {
    let t = Instant::now();
    while ready.load(Ordering::SeqCst) < n && t.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(20)).await;
    }
    assert!(ready.load(Ordering::SeqCst) >= n, "clients did not connect");
    sleep(Duration::from_millis(300)).await;
}

struct Outcome {
    cuts: Vec<Cut>,
    waits: Vec<Duration>,
    stats: Arc<Stats>,
}

/// Fills the server with [`CLIENTS`] slow clients of `kind`, runs the normal client for
/// `normal_for`, and collects how each slow client ended (each must end before `give_up`).
async fn scenario(
    cfg: ServerConfig,
    kind: Kind,
    normal_for: Duration,
    give_up: Duration,
) -> Outcome {
    let srv = start(cfg).await;
    let addr = srv.addr;
    let ready = Arc::new(AtomicUsize::new(0));
    let give_up = Instant::now() + give_up;
    let slow: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(slow_client(addr, kind, ready.clone(), give_up)))
        .collect();
    wait_ready(&ready, CLIENTS).await;
    let waits = normal_client(addr, Instant::now() + normal_for).await;
    let mut cuts = Vec::new();
    for (i, t) in slow.into_iter().enumerate() {
        match t.await.unwrap() {
            Some(c) => cuts.push(c),
            None => panic!("{kind:?} client {i} was never cut"),
        }
    }
    let stats = srv.stop().await;
    Outcome { cuts, waits, stats }
}

/// Every cut within `[lo, hi]`, every answer `answer` (a status line prefix, or empty).
fn assert_cuts(kind: Kind, cuts: &[Cut], lo: Duration, hi: Duration, answer: &str) {
    assert_eq!(cuts.len(), CLIENTS);
    let first = cuts.iter().map(|c| c.after).min().unwrap();
    let last = cuts.iter().map(|c| c.after).max().unwrap();
    eprintln!(
        "{kind:?}: {} clients cut after {first:?} .. {last:?}",
        cuts.len()
    );
    for (i, c) in cuts.iter().enumerate() {
        assert!(
            c.after >= lo && c.after <= hi,
            "{kind:?} client {i} cut after {:?}, expected {lo:?}..{hi:?}",
            c.after
        );
        if answer.is_empty() {
            assert!(c.answer.is_empty(), "{kind:?} client {i}: {:?}", c.status());
        } else {
            assert!(
                c.answer.starts_with(answer.as_bytes()),
                "{kind:?} client {i} got {:?}",
                String::from_utf8_lossy(&c.answer)
            );
        }
    }
}

fn assert_served_within(kind: Kind, waits: &[Duration], limit: Duration) {
    assert!(waits.len() >= 3, "{kind:?}: {waits:?}");
    let worst = waits.iter().max().unwrap();
    eprintln!(
        "{kind:?}: normal client served {} times, longest wait {worst:?}",
        waits.len()
    );
    assert!(
        *worst <= limit,
        "{kind:?}: the normal client waited {worst:?} (all: {waits:?})"
    );
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Empty lines before a head count against the head deadline: they once restarted the idle
/// timer instead, so a client sending `\r\n` every few seconds was never cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_line_clients_are_cut_at_the_head_deadline() {
    let out = scenario(config(), Kind::Blank, ms(3500), ms(6000)).await;
    assert_cuts(Kind::Blank, &out.cuts, ms(1900), ms(3200), "ICAP/1.0 408 ");
    // Full of heads in progress: 503 until they are cut, then served.
    assert_served_within(Kind::Blank, &out.waits, ms(3000));
    assert_eq!(out.stats.timeouts.load(Ordering::Relaxed), CLIENTS as u64);
}

/// A head sent byte by byte falls below the minimum rate long before the head deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_byte_clients_are_cut_by_the_minimum_rate() {
    let cfg = config()
        .head_timeout(Duration::from_secs(20))
        .min_rate(Some(MinRate {
            bytes_per_sec: 64,
            grace: Duration::from_secs(1),
        }));
    let out = scenario(cfg, Kind::HeadByte, ms(2500), ms(6000)).await;
    // grace 1 s + a few bytes at 64 B/s.
    assert_cuts(
        Kind::HeadByte,
        &out.cuts,
        ms(950),
        ms(2200),
        "ICAP/1.0 408 ",
    );
    assert_served_within(Kind::HeadByte, &out.waits, ms(2500));
}

/// A body sent byte by byte, under every per-read timeout, is cut by the body deadline: it
/// was once read forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_byte_clients_are_cut_at_the_body_deadline() {
    let cfg = config().body_timeout(Some(Duration::from_secs(2)));
    let out = scenario(cfg, Kind::BodyByte, ms(3500), ms(6000)).await;
    assert_cuts(
        Kind::BodyByte,
        &out.cuts,
        ms(1900),
        ms(3200),
        "ICAP/1.0 408 ",
    );
    assert_served_within(Kind::BodyByte, &out.waits, ms(3000));
}

/// ... and by the minimum rate, with no body deadline at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_byte_clients_are_cut_by_the_minimum_rate() {
    let cfg = config().min_rate(Some(MinRate {
        bytes_per_sec: 64,
        grace: Duration::from_secs(1),
    }));
    let out = scenario(cfg, Kind::BodyByte, ms(2500), ms(6000)).await;
    assert_cuts(
        Kind::BodyByte,
        &out.cuts,
        ms(950),
        ms(2200),
        "ICAP/1.0 408 ",
    );
    assert_served_within(Kind::BodyByte, &out.waits, ms(2500));
}

/// Silent connections are idle: a newcomer closes the oldest one instead of getting 503,
/// and the rest go at the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_make_room_and_are_cut_at_the_idle_timeout() {
    let out = scenario(config(), Kind::Silent, ms(2000), ms(6000)).await;
    // Some were closed early to make room; none outlived the idle timeout; none got a byte.
    assert_cuts(Kind::Silent, &out.cuts, ms(0), ms(3800), "");
    let early = out.cuts.iter().filter(|c| c.after < ms(2500)).count();
    let evicted = out.stats.evicted.load(Ordering::Relaxed) as usize;
    assert_eq!(early, evicted, "early closes are the evictions");
    assert!(evicted >= 1, "{evicted} evicted");
    assert_eq!(out.stats.refused.load(Ordering::Relaxed), 0);
    // Never a 503: the normal client is served at once.
    assert_served_within(Kind::Silent, &out.waits, ms(500));
}

/// Newcomers while the server is full of heads in progress read their 503 at once and are
/// closed within the refusal timeout; the normal client is served once the heads are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_while_full_read_503_and_are_closed_in_time() {
    let srv = start(config()).await;
    let addr = srv.addr;
    let give_up = Instant::now() + ms(6000);
    let ready = Arc::new(AtomicUsize::new(0));
    let fill: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(slow_client(addr, Kind::Blank, ready.clone(), give_up)))
        .collect();
    wait_ready(&ready, CLIENTS).await;
    let ready = Arc::new(AtomicUsize::new(0));
    let refused: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(refused_client(addr, ready.clone(), give_up)))
        .collect();
    wait_ready(&ready, CLIENTS).await;
    let waits = normal_client(addr, Instant::now() + ms(2500)).await;
    let mut cuts = Vec::new();
    for t in refused {
        cuts.push(t.await.unwrap().expect("a refused client was never closed"));
    }
    for t in fill {
        t.await.unwrap().expect("a blank-line client was never cut");
    }
    // The whole 503 (Connection: close, no body), then the close after refusal_timeout.
    let stats = srv.stop().await;
    for c in &cuts {
        let text = String::from_utf8_lossy(&c.answer);
        assert!(
            text.starts_with("ICAP/1.0 503 Service Overloaded\r\n") && text.ends_with("\r\n\r\n"),
            "{text:?}"
        );
        assert!(text.contains("\r\nConnection: close\r\n"), "{text:?}");
        assert!(
            c.after >= ms(1900) && c.after <= ms(3200),
            "refused client closed after {:?}",
            c.after
        );
    }
    assert_served_within(Kind::Blank, &waits, ms(3000));
    assert!(stats.refused.load(Ordering::Relaxed) >= CLIENTS as u64);
}

/// Attackers from one address that reconnect as soon as they are cut cannot renew their
/// hold on the server: the per-address limit leaves room for everyone else, who is served
/// at once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_of_one_address_leave_room_for_others() {
    let cfg = config()
        .max_connections_per_ip(CLIENTS - 50)
        .head_timeout(Duration::from_secs(1));
    let srv = start(cfg).await;
    let addr = srv.addr;
    let stop_at = Instant::now() + ms(4000);
    let ready = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut rounds = 0;
                while Instant::now() < stop_at && rounds < 100 {
                    let _ = slow_client(addr, Kind::HeadByte, ready.clone(), stop_at).await;
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    wait_ready(&ready, CLIENTS).await;
    let waits = normal_client(addr, stop_at - ms(500)).await;
    let mut rounds = 0;
    for a in attackers {
        rounds += a.await.unwrap();
    }
    let stats = srv.stop().await;
    // The attackers kept coming back (each cut at the 1 s head deadline, the surplus refused).
    assert!(rounds >= 2 * CLIENTS, "{rounds} attacker connections");
    assert!(stats.refused.load(Ordering::Relaxed) >= 50);
    assert_served_within(Kind::HeadByte, &waits, ms(500));
}

/// An honest client on a slow link: a 24 KiB body at about 6 KiB/s, well over a minimum
/// rate of 1 KiB/s, is read to its end although it takes longer than the grace.
#[tokio::test]
async fn a_slow_but_steady_body_is_served() {
    let cfg = config().min_rate(Some(MinRate {
        bytes_per_sec: 1024,
        grace: Duration::from_secs(1),
    }));
    let srv = start(cfg).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&head_with_body()).await.unwrap();
    let piece = [b'a'; 300];
    for _ in 0..80 {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&piece).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        sleep(ms(50)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(ms(5000), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"ICAP/1.0 204 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let stats = srv.stop().await;
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 0);
}

/// Writes a REQMOD with a `len`-byte body the way a simple client does (everything, then
/// read), and returns what it read. A refused client must not see a broken pipe.
async fn write_all_then_read<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, len: usize) -> Vec<u8> {
    let mut wire = head_with_body();
    let piece = vec![b'x'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len());
        wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        wire.extend_from_slice(&piece[..n]);
        wire.extend_from_slice(b"\r\n");
        left -= n;
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    timeout(ms(10_000), s.write_all(&wire))
        .await
        .unwrap()
        .expect("the refused client writes its whole request");
    let _ = s.flush().await;
    let mut got = Vec::new();
    timeout(ms(10_000), s.read_to_end(&mut got))
        .await
        .unwrap()
        .expect("the refused client reads the answer");
    got
}

/// A server that refuses every connection at once.
fn refusing() -> ServerConfig {
    ServerConfig::default()
        .max_connections(0)
        .queue_timeout(Duration::ZERO)
}

fn assert_503(got: &[u8]) {
    let text = String::from_utf8_lossy(got);
    assert!(
        text.starts_with("ICAP/1.0 503 Service Overloaded\r\n"),
        "{text:?}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
}

/// A full server reads (and drops) the request of a refused client, so that a client that
/// writes a large body before reading gets the 503 instead of a broken pipe.
#[tokio::test]
async fn refused_client_writing_a_large_body_reads_the_503() {
    let srv = start(refusing()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let got = write_all_then_read(&mut s, 2 * 1024 * 1024).await;
    assert_503(&got);
    let stats = srv.stop().await;
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
}

/// On a TLS port the 503 goes out after the handshake, inside TLS (it once went out in
/// cleartext, a handshake error for the client).
#[tokio::test]
async fn refused_tls_client_reads_the_503_after_the_handshake() {
    let tls = icap::tls::ServerTls::from_pem_files(pki("server-chain.pem"), pki("server.key"))
        .unwrap()
        .build()
        .unwrap();
    let srv = serve(
        Server::new(refusing())
            .route_blocker("blocker", Blocker::default())
            .tls(tls),
    )
    .await;
    let client = icap::tls::ClientTls::default()
        .with_ca_file(pki("ca.pem"))
        .unwrap()
        .build()
        .unwrap();
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .expect("the TLS handshake of a refused connection completes");
    let got = write_all_then_read(&mut s, 1024 * 1024).await;
    assert_503(&got);
    srv.stop().await;
}

/// Set in the child process of [`accept_errors_are_counted_and_the_server_recovers`].
const ACCEPT_CHILD: &str = "ICAP_TEST_ACCEPT_CHILD";

/// Out of file descriptors, `accept` fails: the server counts each failure, backs off, and
/// accepts again once descriptors are free. The server runs in a child process (this test
/// binary again) under `ulimit -n 48`, so that its clients, here, are not limited.
#[test]
fn accept_errors_are_counted_and_the_server_recovers() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    if std::env::var_os(ACCEPT_CHILD).is_some() {
        return accept_child();
    }
    let exe = std::env::current_exe().unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -n 48 && exec "$0" --exact accept_errors_are_counted_and_the_server_recovers --nocapture --test-threads 1"#)
        .arg(&exe)
        .env(ACCEPT_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed and reaped whatever happens.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(child);
    // The child's lines, read on a thread so that every wait here is bounded.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    // The harness prints "test NAME ... " before the test's own output, on the same line.
    let value_of = |key: &str| -> u64 {
        loop {
            let l = lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no {key} from the child"));
            if let Some(v) = l.split(key).nth(1) {
                return v.trim().parse().unwrap();
            }
        }
    };
    let port = value_of("PORT ") as u16;
    // More connections than the child has descriptors: the kernel completes them all
    // (accept queue), the server's accept fails once its descriptors are gone.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    std::thread::sleep(ms(500));
    drop(held);
    // Descriptors come back as the server sees those clients close; within its back-off
    // (a second at most) it accepts again.
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(ms(5000))).unwrap();
    s.write_all(&small_request()).unwrap();
    let mut got = [0u8; 13];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ICAP/1.0 204 ");
    let recovered = started.elapsed();
    drop(s);
    drop(child.0.stdin.take());
    let errors = value_of("ACCEPT_ERRORS ");
    eprintln!("{errors} accept errors; served again after {recovered:?}");
    assert!(errors >= 1);
    assert!(recovered < ms(3000), "{recovered:?}");
}

/// The child's part: a server until stdin closes, then its count of accept errors.
fn accept_child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let srv = start(ServerConfig::default()).await;
        println!("PORT {}", srv.addr.port());
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await
        .unwrap();
        let stats = srv.stop().await;
        println!(
            "ACCEPT_ERRORS {}",
            stats.accept_errors.load(Ordering::Relaxed)
        );
    });
}

/// A normal client that must never be refused: a fresh connection per request (over TLS
/// with `tls`), every 200 ms until `until`. Returns how long each took to be answered 204.
async fn never_refused(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    until: Instant,
) -> Vec<Duration> {
    async fn ask<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Vec<u8> {
        s.write_all(&small_request()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!("normal client: no answer ({other:?}) after {got:?}"),
            }
        }
        got
    }
    let mut waits = Vec::new();
    while Instant::now() < until && waits.len() < 50 {
        let start = Instant::now();
        let exchange = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            match &tls {
                None => ask(tcp).await,
                Some(cfg) => {
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let s = tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, tcp)
                        .await
                        .expect("the normal client's handshake");
                    ask(s).await
                }
            }
        };
        let got = timeout(ms(10_000), exchange)
            .await
            .expect("the normal client is answered");
        assert!(
            got.starts_with(b"ICAP/1.0 204 "),
            "the normal client got {}",
            String::from_utf8_lossy(&got)
        );
        waits.push(start.elapsed());
        sleep(ms(200)).await;
    }
    waits
}

/// Fills a server of [`CLIENTS`] slots with as many slow clients of `kind`, then runs a
/// normal client beside them for 3 s.
async fn beside_slow_clients(
    srv: net::Running,
    kind: Kind,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (Vec<Duration>, Arc<Stats>) {
    let addr = srv.addr;
    let ready = Arc::new(AtomicUsize::new(0));
    let give_up = Instant::now() + ms(15_000);
    let slow: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(slow_client(addr, kind, ready.clone(), give_up)))
        .collect();
    wait_ready(&ready, CLIENTS).await;
    let waits = never_refused(addr, tls, Instant::now() + ms(3000)).await;
    for t in &slow {
        t.abort();
    }
    (waits, srv.stop().await)
}

/// Attackers make room, not the normal client: beside 300 slow clients holding every slot
/// (heads or bodies a byte every 400 ms, TLS handshakes stalled after their first bytes), a
/// normal client is never refused, at the server's default rate, grace and queue timeout. It
/// waits in the listen backlog until a slow client falls a second behind the minimum rate,
/// which then makes room (rather than at the 10 s grace of the rate, or the handshake
/// timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_beside_300_slow_clients_is_never_refused() {
    let cfg = || ServerConfig::default().max_connections(CLIENTS);
    let tls = icap::tls::ServerTls::from_pem_files(pki("server-chain.pem"), pki("server.key"))
        .unwrap()
        .build()
        .unwrap();
    let client_tls = icap::tls::ClientTls::default()
        .with_ca_file(pki("ca.pem"))
        .unwrap()
        .build()
        .unwrap();
    let heads = beside_slow_clients(start(cfg()).await, Kind::HeadByte, None);
    let bodies = beside_slow_clients(start(cfg()).await, Kind::BodyByte, None);
    let tls_srv = serve(
        Server::new(cfg())
            .route_blocker("blocker", Blocker::default())
            .tls(tls),
    )
    .await;
    let handshakes = beside_slow_clients(tls_srv, Kind::Handshake, Some(client_tls));
    let (heads, bodies, handshakes) = tokio::join!(heads, bodies, handshakes);
    for (kind, (waits, stats)) in [
        (Kind::HeadByte, heads),
        (Kind::BodyByte, bodies),
        (Kind::Handshake, handshakes),
    ] {
        assert_eq!(stats.refused.load(Ordering::Relaxed), 0, "{kind:?}");
        // The first normal request took a slow client's slot (the next ones may find the
        // one the normal client left).
        assert!(stats.evicted.load(Ordering::Relaxed) >= 1, "{kind:?}");
        assert_served_within(kind, &waits, ms(2500));
    }
}
