//! The icap-inspect example end to end: JSON Lines schema, split independence, exit codes.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn exe() -> PathBuf {
    // Integration tests live in target/<profile>/deps; cargo builds examples beside them.
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push(format!("icap-inspect{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} not built (cargo test builds examples)",
        p.display()
    );
    p
}

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (i32, Vec<Value>) {
    let out = Command::new(exe()).args(args).output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap(), lines)
}

#[test]
fn same_output_for_every_feed_size() {
    for f in [
        "cicap-respmod-preview-continue.request.bin",
        "cicap-respmod-preview-continue.response.bin",
        "squid-large-respmod.request.bin",
        "cicap-respmod-ex206.response.bin",
        "rfc/ex4-request.bin",
    ] {
        let (code, whole) = run(&[&data(f)]);
        assert_eq!(code, 0, "{f}");
        for n in ["1", "5", "4096"] {
            let (c, v) = run(&["--feed", n, &data(f)]);
            assert_eq!((c, &v), (0, &whole), "{f} --feed {n}");
        }
    }
}

#[test]
fn request_fields_and_body_digest() {
    let (code, msgs) = run(&[&data("cicap-respmod-preview-continue.request.bin")]);
    assert_eq!(code, 0);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["method"], "OPTIONS");
    let r = &msgs[1];
    assert_eq!(r["type"], "request");
    assert_eq!(r["method"], "RESPMOD");
    assert_eq!(r["version"], "ICAP/1.0");
    assert_eq!(r["preview"], 1024);
    assert_eq!(r["encapsulated"][2][0], "res-body");
    assert_eq!(r["http_response"]["line"], "HTTP/1.0 200 OK");
    // Preview and the rest after 100 Continue count together.
    assert_eq!(r["body"]["length"], 3000);
    assert_eq!(r["body"]["ieof"], false);
    assert_eq!(r["body"]["section"], "res-body");
    // The body c-icap-client sent is the file it read: 3000 bytes; compare against the
    // de-chunked bytes computed here independently of the decoder.
    let raw = std::fs::read(data("cicap-respmod-preview-continue.request.bin")).unwrap();
    let body = dechunk_after(&raw, b"\r\n\r\n", 4);
    assert_eq!(body.len(), 3000);
    let hex: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r["body"]["sha256"], hex);
}

/// Naive de-chunker over the part of `raw` after the `nth` occurrence of `sep` (test oracle).
fn dechunk_after(raw: &[u8], sep: &[u8], nth: usize) -> Vec<u8> {
    let mut at = 0;
    for _ in 0..nth {
        at += raw[at..].windows(sep.len()).position(|w| w == sep).unwrap() + sep.len();
    }
    let mut out = Vec::new();
    let mut rest = &raw[at..];
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let line = std::str::from_utf8(&rest[..nl]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[nl + 2..];
        if size == 0 {
            // c-icap-client's preview ends here; the rest follows the next chunk line.
            if rest.len() > 2
                && rest[..2] == *b"\r\n"
                && rest[2].is_ascii_hexdigit()
                && rest[2] != b'0'
            {
                rest = &rest[2..];
                continue;
            }
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[test]
fn response_fields() {
    let (code, msgs) = run(&[&data("cicap-respmod-ex206.response.bin")]);
    assert_eq!(code, 0);
    let r = &msgs[1];
    assert_eq!(r["type"], "response");
    assert_eq!(r["status"], 206);
    assert_eq!(r["reason"], "Partial Content");
    assert_eq!(r["body"]["use_original_body"], 0);
    assert_eq!(r["body"]["length"], 0);
    let (_, msgs) = run(&[&data("cicap-reqmod-urlcheck-blocked.response.bin")]);
    assert_eq!(msgs[1]["http_response"]["line"], "HTTP/1.0 403 Forbidden");
    assert_eq!(msgs[1]["body"]["length"], 680);
    assert_eq!(msgs[1]["http_request"], Value::Null);
}

#[test]
fn malformed_input_exits_2_with_typed_error() {
    let dir = std::env::temp_dir().join(format!("icap-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.bin");
    std::fs::write(
        &f,
        b"REQMOD icap://x/ ICAP/1.0\r\nHost: x\r\nEncapsulated: req-hdr=0, null-body=0x10\r\n\r\n",
    )
    .unwrap();
    let (code, msgs) = run(&["--role", "request", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(msgs.last().unwrap()["type"], "error");
    assert_eq!(msgs.last().unwrap()["kind"], "bad_encapsulated");
    assert_eq!(msgs.last().unwrap()["offset"], 0);
    std::fs::write(&f, b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n5\r\nhel").unwrap();
    let (code, msgs) = run(&["--feed", "3", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(msgs.last().unwrap()["kind"], "unexpected_eof");
    assert_eq!(msgs.last().unwrap()["offset"], 82);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_lists_the_exit_status_and_argument_errors_exit_2() {
    let out = Command::new(exe()).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("Exit status:\n  0  every message decoded\n  2  malformed input"),
        "{help}"
    );
    for bad in [&["--feed", "0"][..], &["--role", "sideways"], &["--bogus"]] {
        let out = Command::new(exe()).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}");
    }
}

#[test]
fn a_missing_file_is_named_and_exits_2() {
    let missing = std::env::temp_dir().join("icap-inspect-no-such-capture.bin");
    let out = Command::new(exe()).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "icap-inspect: {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}
