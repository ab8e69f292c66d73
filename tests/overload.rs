//! Overload without loss, against the server at its defaults: a burst of 500 connections
//! at once from one address, each with one REQMOD, all answered (none closed silently); 200
//! keep-alive connections from one address under sustained load with no failed transaction.
#![cfg(feature = "server")]

mod net;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use icap::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::{timeout, Instant};

const HTTP_HEAD: &str = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";

/// A REQMOD with a small body: `clean`, or with the word the blocker blocks.
fn reqmod(clean: bool, close: bool) -> Vec<u8> {
    let body: &[u8] = if clean { b"hello" } else { b"BLOCK" };
    let mut v = format!(
        "REQMOD icap://127.0.0.1/blocker ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n{}\
         Encapsulated: req-hdr=0, req-body={}\r\n\r\n{HTTP_HEAD}{:x}\r\n",
        if close { "Connection: close\r\n" } else { "" },
        HTTP_HEAD.len(),
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v.extend_from_slice(b"\r\n0\r\n\r\n");
    v
}

/// Raises the open-files limit to its hard limit: the test holds both ends of every
/// connection.
fn raise_nofile() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut l = getrlimit(Resource::Nofile);
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// One answer from `s`: its status and whether it carried a body, read whole (`buf` keeps
/// what follows it).
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not an ICAP status line: {head:?}"))?;
            let mut consumed = end + 4;
            if head.contains("res-body=") {
                // The block page: read to the last chunk.
                loop {
                    if let Some(e) = buf[consumed..].windows(5).position(|w| w == b"0\r\n\r\n") {
                        consumed += e + 5;
                        break;
                    }
                    let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("closed inside the answer's body".into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            buf.drain(..consumed);
            return Ok(status);
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed without an answer after {} bytes",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `n` connections opened at once (released together by a barrier), each sending one
/// REQMOD (every tenth with the blocked word); returns each one's status or failure.
pub async fn burst(addr: SocketAddr, n: usize) -> Vec<Result<u16, String>> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let run = async {
                    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                    s.write_all(&reqmod(i % 10 != 0, true))
                        .await
                        .map_err(|e| e.to_string())?;
                    answer(&mut s, &mut Vec::new()).await
                };
                timeout(Duration::from_secs(60), run)
                    .await
                    .unwrap_or_else(|_| Err("no answer in 60 s".into()))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 500 connections at once from one address, the server at its defaults: 500 verdicts,
/// none lost. (With a per-address cap of 128 that closed "idle" newcomers, 372 of them once
/// read nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_connections_from_one_address_gets_500_verdicts() {
    raise_nofile();
    let srv = net::blocker(ServerConfig::default()).await;
    let got = burst(srv.addr, 500).await;
    let stats = srv.stop().await;
    let failed: Vec<_> = got.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    for (i, r) in got.iter().enumerate() {
        let want = if i % 10 == 0 { 200 } else { 204 };
        assert_eq!(r.as_ref().unwrap(), &want, "connection {i}");
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.connections.load(Relaxed), 500);
    assert_eq!(stats.requests.load(Relaxed), 500);
    assert_eq!(stats.refused.load(Relaxed), 0);
    assert_eq!(stats.evicted.load(Relaxed), 0);
}

/// 200 keep-alive connections from one address, each sending REQMOD after REQMOD for 10 s:
/// not one failed transaction. (At the former defaults, half of such a load failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_on_200_keep_alive_connections_fails_no_transaction() {
    raise_nofile();
    let srv = net::blocker(ServerConfig::default()).await;
    let addr = srv.addr;
    let until = Instant::now() + Duration::from_secs(10);
    let tasks: Vec<_> = (0..200)
        .map(|c| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut buf = Vec::new();
                let mut done = 0u64;
                while Instant::now() < until {
                    let clean = (c + done) % 10 != 0;
                    s.write_all(&reqmod(clean, false)).await.unwrap();
                    let status = timeout(Duration::from_secs(30), answer(&mut s, &mut buf))
                        .await
                        .expect("answered within 30 s")
                        .unwrap_or_else(|e| panic!("connection {c}, transaction {done}: {e}"));
                    assert_eq!(status, if clean { 204 } else { 200 });
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        let done = t.await.unwrap();
        assert!(done > 0, "every connection was served");
        total += done;
    }
    let stats = srv.stop().await;
    eprintln!("200 keep-alive connections: {total} transactions in 10 s, none failed");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.connections.load(Relaxed), 200);
    assert_eq!(stats.requests.load(Relaxed), total);
    assert_eq!(stats.evicted.load(Relaxed), 0);
    assert_eq!(stats.refused.load(Relaxed), 0);
}
