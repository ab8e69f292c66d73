//! The typed OPTIONS view: a `200` answer whose header lines come from the input is decoded,
//! read with `ServiceOptions::from_response`, queried, and written back; what it writes must
//! read back to the same options.
#![no_main]

use icap::{Encoder, Method, Response, ResponseDecoder, ResponseEvent, ServiceOptions, Transfer};
use libfuzzer_sys::fuzz_target;

fn decode_one(bytes: &[u8]) -> Option<Response> {
    let mut dec = ResponseDecoder::default();
    dec.expect_response_to(Some(Method::Options));
    dec.feed(bytes);
    match dec.decode() {
        Ok(Some(ResponseEvent::Head(r))) => Some(r),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut wire = b"ICAP/1.0 200 OK\r\n".to_vec();
    wire.extend_from_slice(data);
    let Some(res) = decode_one(&wire) else { return };
    let Ok(opts) = ServiceOptions::from_response(&res) else {
        return;
    };
    assert!(!opts.methods.is_empty());
    assert!(opts.supports(&Method::Options));
    for m in &opts.methods {
        assert!(opts.supports(m));
    }
    for n in [0u64, 1, 4096, u64::MAX] {
        let p = opts.preview_for(Some(n));
        assert_eq!(p.is_some(), opts.preview.is_some());
        assert!(p.unwrap_or(0) <= n);
    }
    // An extension named in exactly one list gets that list's verdict.
    for (t, list) in [
        (Transfer::Ignore, &opts.transfer_ignore),
        (Transfer::Complete, &opts.transfer_complete),
        (Transfer::Preview, &opts.transfer_preview),
    ] {
        for ext in list {
            let _ = opts.transfer_for(ext);
            let _ = opts.transfer_for(&format!("dir/file.{ext}"));
            let simple =
                !ext.is_empty() && ext != "*" && ext.bytes().all(|b| b.is_ascii_alphanumeric());
            let elsewhere = [
                &opts.transfer_ignore,
                &opts.transfer_complete,
                &opts.transfer_preview,
            ]
            .iter()
            .filter(|l| l.contains(ext))
            .count();
            if simple && elsewhere == 1 {
                assert_eq!(opts.transfer_for(&format!("a/b.{ext}")), t, "{ext}");
            }
        }
    }
    // Writing the options and reading them back gives the same options.
    let Ok(answer) = opts.to_response() else {
        return;
    };
    let mut enc = Encoder::new();
    enc.response_head(&answer).unwrap();
    let wire = enc.to_bytes();
    let back = decode_one(&wire).expect("our own OPTIONS answer does not decode");
    let again = ServiceOptions::from_response(&back).expect("our own answer does not read");
    // The writer quotes an ISTag that came without quotes (RFC 3507 4.7 wants them).
    let mut want = opts.clone();
    if !(want.istag.len() >= 2 && want.istag.starts_with('"') && want.istag.ends_with('"')) {
        want.istag = format!("\"{}\"", want.istag);
    }
    assert_eq!(again, want);
});
