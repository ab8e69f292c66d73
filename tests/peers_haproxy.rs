//! Scale-out behind a real load balancer: Debian's HAProxy with the configuration shipped in
//! docs/haproxy.cfg (only its addresses replaced) in front of three dlp-servers; its ICAP
//! OPTIONS health check (a port that answers 503 is down, a working server up), and one
//! server killed while dlp-scan runs 300 files through HAProxy: every file gets its right
//! verdict.
//!
//! Needs haproxy (`bash .ci/install-peers.sh`): without it the test is skipped with a
//! message, or fails under `CI=true`.
#![cfg(all(feature = "scan", feature = "server"))]

mod peers_support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use peers_support::{
    assert_sample_verdicts, available, free_port, scan_verdicts, serial, wait_for, Process, TempDir,
};

mod example_bins;
use example_bins::{example, sample_files};

/// dlp-server on `port`, one line per scanned message in its log.
fn dlp_server(dir: &TempDir, port: u16) -> Process {
    let mut cmd = Command::new(example("dlp-server"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--verbose"]);
    let mut p = Process::spawn("dlp-server", cmd, dir.join(format!("dlp-{port}.log")));
    p.wait_port(port, Duration::from_secs(10));
    p
}

/// Messages a dlp-server scanned so far (its `--verbose` lines).
fn scanned(p: &Process) -> usize {
    p.log().lines().filter(|l| l.contains("REQMOD")).count()
}

/// docs/haproxy.cfg with the listener on `front` and the servers on `backs`.
fn haproxy_config(front: u16, backs: [u16; 3]) -> String {
    let cfg = std::fs::read_to_string(format!("{}/docs/haproxy.cfg", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let mut out = cfg.replace("127.0.0.1:1344\n", &format!("127.0.0.1:{front}\n"));
    for (i, b) in backs.iter().enumerate() {
        let shipped = format!("127.0.0.1:{} check", 11344 + i);
        assert!(out.contains(&shipped), "docs/haproxy.cfg names {shipped}");
        out = out.replace(&shipped, &format!("127.0.0.1:{b} check"));
    }
    assert!(out.contains(&format!("bind 127.0.0.1:{front}\n")));
    out
}

/// Waits until HAProxy's log says `needle`.
fn wait_log(p: &Process, needle: &str, limit: Duration) {
    let end = Instant::now() + limit;
    while !p.log().contains(needle) {
        assert!(Instant::now() < end, "no {needle:?} in: {}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_server_killed_behind_haproxy_costs_no_verdict() {
    if !available(&["haproxy"]) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("haproxy");
    let backs = [free_port(), free_port(), free_port()];
    // The third port first answers OPTIONS with a 503, as an overloaded or broken service
    // would: the health check must mark it down although its port is open.
    let fake = std::net::TcpListener::bind(("127.0.0.1", backs[2])).unwrap();
    let stop_fake = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fake_thread = {
        let stop = stop_fake.clone();
        std::thread::spawn(move || {
            for c in fake.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = c else { continue };
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"ICAP/1.0 503 Service Overloaded\r\nISTag: \"fake\"\r\n\
                      Encapsulated: null-body=0\r\n\r\n",
                );
            }
        })
    };
    let mut servers: Vec<Process> = backs[..2].iter().map(|&p| dlp_server(&dir, p)).collect();
    let front = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(front, backs)).unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f"]).arg(&cfg);
    let mut haproxy = Process::spawn("haproxy", cmd, dir.join("haproxy.log"));
    haproxy.wait_port(front, Duration::from_secs(10));
    wait_log(
        &haproxy,
        "icap_servers/dlp3 is DOWN",
        Duration::from_secs(10),
    );
    assert!(!haproxy.log().contains("dlp1 is DOWN"), "{}", haproxy.log());
    // The real server takes the port: the check brings it up.
    stop_fake.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::net::TcpStream::connect(("127.0.0.1", backs[2]));
    fake_thread.join().unwrap();
    servers.push(dlp_server(&dir, backs[2]));
    wait_log(&haproxy, "icap_servers/dlp3 is UP", Duration::from_secs(10));

    // 300 files, every third one with card numbers, scanned through HAProxy.
    let files = sample_files(dir.path(), 300);
    let scan_out = dir.join("scan.out");
    let mut scan = Command::new(example("dlp-scan"))
        .args(["--timeout", "30", "--json"])
        .args(["--server", &format!("icap://127.0.0.1:{front}/reqmod")])
        .args(&files)
        .stdout(std::fs::File::create(&scan_out).unwrap())
        .stderr(std::fs::File::create(dir.join("scan.err")).unwrap())
        .spawn()
        .unwrap();
    // Kill the busiest server once the scan is well under way.
    let end = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let busiest = (0..3).max_by_key(|&i| scanned(&servers[i])).unwrap();
        if scanned(&servers[busiest]) >= 20 {
            break busiest;
        }
        assert!(Instant::now() < end, "no progress");
        assert!(scan.try_wait().unwrap().is_none(), "dlp-scan ended early");
        std::thread::sleep(Duration::from_millis(5));
    };
    let ok = Command::new("kill")
        .args(["-KILL", &servers[victim].pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    servers[victim].stop();
    let killed_at = scanned(&servers[victim]);

    let Some(status) = wait_for(&mut scan, Duration::from_secs(120)) else {
        let _ = scan.kill();
        panic!("dlp-scan did not finish");
    };
    let out = std::fs::read_to_string(&scan_out).unwrap();
    let err = std::fs::read_to_string(dir.join("scan.err")).unwrap();
    let verdicts = scan_verdicts(&out);
    assert_eq!(verdicts.len(), 300, "{out}\n{err}");
    assert_sample_verdicts(&verdicts, &err);
    // 1: something was blocked, and nothing failed.
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    // HAProxy saw the server go, and the two others carried the rest of the files.
    let name = format!("icap_servers/dlp{} is DOWN", victim + 1);
    wait_log(&haproxy, &name, Duration::from_secs(10));
    let survivors: usize = (0..3)
        .filter(|&i| i != victim)
        .map(|i| scanned(&servers[i]))
        .sum();
    assert!(
        killed_at + survivors >= 300,
        "{killed_at} scanned by the killed server, {survivors} by the others"
    );
    assert!(survivors > 0);
    haproxy.stop();
}
