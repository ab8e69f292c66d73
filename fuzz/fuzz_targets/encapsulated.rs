//! `Encapsulated::parse` on arbitrary values, the per-method rules, and the Display round
//! trip: whatever parses prints to a value that parses back to the same list.
#![no_main]

use icap::{Encapsulated, ErrorKind, Method, Section};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let e = match Encapsulated::parse(data) {
        Ok(e) => e,
        Err(err) => {
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::BadEncapsulated | ErrorKind::EncapsulatedNotAllowed
                ),
                "unexpected kind {:?}",
                err.kind()
            );
            assert!(err.offset() <= data.len() as u64);
            return;
        }
    };
    // Display round trip, and the same list through from_entries.
    let printed = e.to_string();
    assert_eq!(Encapsulated::parse(printed.as_bytes()).unwrap(), e);
    assert_eq!(Encapsulated::from_entries(e.as_slice()).unwrap(), e);

    // Structure: offsets from 0, never decreasing; heads then exactly one body entry, last.
    let list = e.as_slice();
    assert!(!list.is_empty() && list.len() <= 3);
    assert_eq!(list[0].1, 0);
    assert!(list.windows(2).all(|w| w[0].1 <= w[1].1));
    let (last, heads) = list.split_last().unwrap();
    assert!(last.0.is_body());
    assert!(heads.iter().all(|(s, _)| !s.is_body()));
    assert_eq!(e.body(), last.0);
    assert_eq!(e.heads_len(), last.1);
    let mut at = 0;
    for (s, start, end) in e.head_ranges() {
        assert!(!s.is_body());
        assert_eq!(start, at);
        assert!(start <= end);
        at = end;
    }
    assert_eq!(at, e.heads_len());
    for (s, o) in e.iter() {
        assert_eq!(e.get(s), Some(o));
    }

    // Per-method rules: each verdict is a typed error, and "no method known" accepts exactly
    // what some known method accepts.
    let methods = [
        Method::Reqmod,
        Method::Respmod,
        Method::Options,
        Method::Other(bytes::Bytes::from_static(b"X-EXT")),
    ];
    for m in &methods {
        for r in [e.check_request(m), e.check_response(Some(m))] {
            if let Err(err) = r {
                assert_eq!(err.kind(), ErrorKind::EncapsulatedNotAllowed);
            }
        }
    }
    assert!(e.check_request(&methods[3]).is_ok());
    assert!(e.check_response(Some(&methods[3])).is_ok());
    let any = methods[..3]
        .iter()
        .any(|m| e.check_response(Some(m)).is_ok());
    assert_eq!(e.check_response(None).is_ok(), any);
    // A request's list is always a legal answer to the same method, except that a RESPMOD
    // request carries req-hdr, which its answer must not.
    if e.check_request(&Method::Reqmod).is_ok() {
        assert!(e.check_response(Some(&Method::Reqmod)).is_ok());
    }
    if e.check_request(&Method::Options).is_ok() {
        assert!(e.check_response(Some(&Method::Options)).is_ok());
    }
    if e.get(Section::ReqHdr).is_some() {
        assert!(e.check_response(Some(&Method::Respmod)).is_err());
    }
});
