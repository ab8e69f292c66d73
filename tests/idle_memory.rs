//! Heap held by an idle keep-alive connection once it has been served, measured by a
//! counting allocator: a server keeps thousands of such connections (a proxy's pool), so what
//! each holds between requests is the server's memory at rest. The read buffers of a
//! transaction are let go when it ends; an idle connection keeps its task, its socket and a
//! small head buffer.
#![cfg(feature = "server")]

mod net;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use icap::server::{Server, ServerConfig};
use net::{Blocker, BlockerRoute};

struct Counting;

/// Bytes allocated and not yet freed, by every thread.
static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CONNECTIONS: usize = 400;

/// The most heap an idle served connection may hold: its task (the connection's future, 3.7
/// KiB in a debug build), its socket's registration, its place among the slots, and the 1 KiB
/// buffer its next head is read into; 5.3 KiB in all, measured in a debug build. (It was 9.5
/// KiB when a connection kept its decoder's 4 KiB header arena while idle.)
const LIMIT: usize = 6 * 1024;

fn request(body: &str) -> Vec<u8> {
    let http = "POST http://origin.example/up HTTP/1.1\r\nHost: origin.example\r\n\r\n";
    format!(
        "REQMOD icap://127.0.0.1/blocker ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
         Encapsulated: req-hdr=0, req-body={}\r\n\r\n{http}{:x}\r\n{body}\r\n0\r\n\r\n",
        http.len(),
        body.len()
    )
    .into_bytes()
}

/// Reads one 204 (no body) from `s`.
fn read_204(s: &mut std::net::TcpStream) {
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        got.starts_with(b"ICAP/1.0 204 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn an_idle_served_connection_holds_a_few_kib_of_heap() {
    // The server on its own thread and runtime; the clients here, blocking, holding little.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let server =
                Server::new(ServerConfig::default()).route_blocker("blocker", Blocker::default());
            server
                .serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap()
        })
    });
    let addr = addr_rx.recv().unwrap();
    // One connection first, served twice (a body larger than the head buffer, then a small
    // one), so that what the server allocates once (its maps, its runtime's first blocks)
    // is in the baseline.
    let mut warm = std::net::TcpStream::connect(addr).unwrap();
    warm.write_all(&request(&"x".repeat(40_000))).unwrap();
    read_204(&mut warm);
    std::thread::sleep(Duration::from_millis(200));
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let before = HELD.load(Ordering::SeqCst);
    for _ in 0..CONNECTIONS {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // A body of 20 KB: the transaction reads it into a body-sized buffer, which must go.
        s.write_all(&request(&"y".repeat(20_000))).unwrap();
        read_204(&mut s);
        conns.push(s);
    }
    // Every connection's task has gone back to waiting for its next request.
    let settle = Instant::now();
    let mut per_conn = usize::MAX;
    while settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        per_conn = HELD.load(Ordering::SeqCst).saturating_sub(before) / CONNECTIONS;
        if per_conn <= LIMIT {
            break;
        }
    }
    eprintln!("heap per idle served connection: {per_conn} bytes");
    assert!(
        per_conn <= LIMIT,
        "an idle served connection holds {per_conn} bytes of heap (limit {LIMIT})"
    );
    // They are still served.
    for s in conns.iter_mut().take(10) {
        s.write_all(&request("again")).unwrap();
        read_204(s);
    }
    drop(conns);
    drop(warm);
    let _ = stop_tx.send(());
    let stats = server.join().unwrap();
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        CONNECTIONS as u64 + 11
    );
}
