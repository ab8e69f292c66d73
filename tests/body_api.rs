//! The borrowed-slice body API (`Decoder::decode_with`) and joined small pieces
//! (`Decoder::set_coalesce`) against `Decoder::decode`: for every capture and for generated
//! chunked bodies, under many splits and with both ways of feeding, the same events, the same
//! body bytes in the same places, and the same error (kind and offset) after the same data.

mod common;

use bytes::Bytes;
use common::{capture_names, data, push, splits, Ev};
use icap::{
    ErrorKind, Request, RequestDecoder, RequestEvent, Response, ResponseDecoder, ResponseEvent,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// How body data is taken out of the decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Take {
    /// `Data` events from `decode`.
    Events,
    /// Borrowed slices from `decode_with`.
    Slices,
    /// `Data` events with small pieces joined up to this many bytes.
    Joined(usize),
    /// `decode` and `decode_with` in turn, one call each.
    Mixed,
}

/// Events with body pieces merged (pieces are where the ways differ), and the error that
/// ended the stream, if any.
type Outcome<M> = (Vec<Ev<M>>, Option<(ErrorKind, u64)>);

macro_rules! driver {
    ($name:ident, $dec:ty, $m:ty, $event:ident, $preview:expr) => {
        /// Feeds `input` in pieces cycling through `sizes` (copied in with `feed`, or as slices
        /// of one shared `Bytes` with `feed_bytes`), taking data out as `take` says.
        fn $name(input: &[u8], sizes: &[usize], take: Take, shared: bool) -> Outcome<$m> {
            let mut dec = <$dec>::default();
            if let Take::Joined(n) = take {
                dec.set_coalesce(n);
            }
            let whole = Bytes::copy_from_slice(input);
            let (mut out, mut pos, mut k, mut calls) = (Vec::new(), 0, 0, 0usize);
            loop {
                loop {
                    calls += 1;
                    let mut pieces = Vec::new();
                    let slices = take == Take::Slices || (take == Take::Mixed && calls % 2 == 0);
                    let got = if slices {
                        dec.decode_with(|d| pieces.push(d.to_vec()))
                    } else {
                        dec.decode()
                    };
                    for p in pieces {
                        push(&mut out, Ev::Body(p));
                    }
                    match got {
                        Ok(Some($event::Data(d))) => {
                            assert!(!slices, "decode_with returned Data");
                            push(&mut out, Ev::Body(d.to_vec()))
                        }
                        Ok(Some(ev)) => push(&mut out, ev),
                        Ok(None) => break,
                        Err(e) => return (out, Some((e.kind(), e.offset()))),
                    }
                }
                #[allow(clippy::redundant_closure_call)]
                if ($preview)(&mut dec, pos >= input.len()) {
                    continue;
                }
                if pos >= input.len() {
                    let end = dec.decode_eof().err().map(|e| (e.kind(), e.offset()));
                    return (out, end);
                }
                let n = sizes[k % sizes.len()].min(input.len() - pos);
                k += 1;
                if shared {
                    dec.feed_bytes(whole.slice(pos..pos + n));
                } else {
                    dec.feed(&input[pos..pos + n]);
                }
                pos += n;
            }
        }
    };
}

// After a preview: continue when the stream goes on with chunks (as a server that sent 100).
driver!(
    requests,
    RequestDecoder,
    Request,
    RequestEvent,
    |dec: &mut RequestDecoder, at_end: bool| {
        if !dec.awaiting_preview_decision() {
            return false;
        }
        match dec.next_looks_like_chunk() {
            Some(true) => dec.continue_after_preview().unwrap(),
            Some(false) => dec.finish_after_preview().unwrap(),
            None if at_end => dec.finish_after_preview().unwrap(),
            None => return false,
        }
        true
    }
);
driver!(
    responses,
    ResponseDecoder,
    Response,
    ResponseEvent,
    |_: &mut ResponseDecoder, _| false
);

const TAKES: [Take; 6] = [
    Take::Slices,
    Take::Joined(1),
    Take::Joined(3),
    Take::Joined(64),
    Take::Joined(16 * 1024),
    Take::Mixed,
];

#[test]
fn every_capture_gives_the_same_events_every_way() {
    let names = capture_names(".bin");
    assert!(names.len() >= 40, "captures missing: {names:?}");
    let mut bodies = 0;
    for name in &names {
        let input = data(&format!("{name}.bin"));
        let request = name.ends_with(".request");
        if request {
            let want = requests(&input, &[input.len()], Take::Events, false);
            assert_eq!(want.1, None, "{name}: {:?}", want.1);
            bodies += want.0.iter().filter(|e| matches!(e, Ev::Body(_))).count();
            for sizes in splits(input.len()) {
                for take in TAKES {
                    for shared in [false, true] {
                        let got = requests(&input, &sizes, take, shared);
                        assert_eq!(got, want, "{name} {take:?} shared {shared} {sizes:?}");
                    }
                }
            }
        } else {
            let want = responses(&input, &[input.len()], Take::Events, false);
            assert_eq!(want.1, None, "{name}: {:?}", want.1);
            bodies += want.0.iter().filter(|e| matches!(e, Ev::Body(_))).count();
            for sizes in splits(input.len()) {
                for take in TAKES {
                    for shared in [false, true] {
                        let got = responses(&input, &sizes, take, shared);
                        assert_eq!(got, want, "{name} {take:?} shared {shared} {sizes:?}");
                    }
                }
            }
        }
    }
    assert!(bodies >= 20, "only {bodies} bodies in the captures");
}

/// A RESPMOD (with a 5-byte preview when `preview`) whose body is `chunks` (already framed).
fn respmod(chunks: &[u8], preview: bool) -> Vec<u8> {
    let http = "HTTP/1.1 200 OK\r\n\r\n";
    let mut wire = format!(
        "RESPMOD icap://x/respmod ICAP/1.0\r\nHost: x\r\n{}Encapsulated: res-hdr=0, res-body={}\r\n\r\n{http}",
        if preview { "Preview: 5\r\n" } else { "" },
        http.len()
    )
    .into_bytes();
    wire.extend_from_slice(chunks);
    wire
}

#[test]
fn errors_come_after_the_same_data_at_the_same_offset() {
    for (chunks, kind) in [
        (
            &b"3\r\nabc\r\n4\r\ndefg\r\nZ\r\n"[..],
            ErrorKind::BadChunkSize,
        ),
        (b"3\r\nabc\r\n4\r\ndefgX", ErrorKind::MissingChunkCrlf),
        (
            b"3\r\nabc\r\n4;ieof\r\ndefg\r\n0\r\n\r\n",
            ErrorKind::BadChunkExtension,
        ),
        (
            b"2\r\nab\r\n2\r\ncd\r\n2\r\nef\r\n0\r\nbad\r\n\r\n",
            ErrorKind::BadTrailer,
        ),
        (
            b"1\r\na\r\n1\r\nb\r\n11111111111111111\r\n",
            ErrorKind::ChunkSizeOverflow,
        ),
        (b"1\r\na\r\n1\r\nb\r\n1\n", ErrorKind::BareLf),
    ] {
        let input = respmod(chunks, false);
        let want = requests(&input, &[input.len()], Take::Events, false);
        assert_eq!(want.1.map(|e| e.0), Some(kind), "{want:?}");
        assert!(matches!(want.0.last(), Some(Ev::Body(_))));
        for sizes in splits(input.len()) {
            for take in TAKES {
                for shared in [false, true] {
                    let got = requests(&input, &sizes, take, shared);
                    assert_eq!(got, want, "{take:?} {shared} {sizes:?}");
                }
            }
        }
    }
    // A preview overrun and a body limit, found at a size line after joined data.
    let input = respmod(b"2\r\nab\r\n2\r\ncd\r\n2\r\nef\r\n0\r\n\r\n", true);
    let want = requests(&input, &[input.len()], Take::Events, false);
    assert_eq!(want.1.map(|e| e.0), Some(ErrorKind::PreviewOverrun));
    for take in TAKES {
        assert_eq!(
            requests(&input, &[input.len()], take, true),
            want,
            "{take:?}"
        );
    }
}

#[test]
fn joined_pieces_are_views_when_they_can_be_and_copies_up_to_the_setting() {
    let mut chunks = Vec::new();
    for c in [b'a', b'b', b'c', b'd'] {
        chunks.extend_from_slice(b"3\r\n");
        chunks.extend_from_slice(&[c; 3]);
        chunks.extend_from_slice(b"\r\n");
    }
    chunks.extend_from_slice(b"10\r\n0123456789abcdef\r\n0\r\n\r\n");
    let wire = Bytes::from(respmod(&chunks, false));
    let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
    let mut dec = RequestDecoder::default();
    dec.set_coalesce(8);
    assert_eq!(dec.coalesce(), 8);
    dec.feed_bytes(wire.clone());
    let mut pieces = Vec::new();
    while let Some(ev) = dec.decode().unwrap() {
        if let RequestEvent::Data(d) = ev {
            pieces.push((d.to_vec(), range.contains(&(d.as_ptr() as usize))));
        }
    }
    let got: Vec<(&[u8], bool)> = pieces.iter().map(|(d, v)| (&d[..], *v)).collect();
    assert_eq!(
        got,
        [
            // Copies of whole chunks joined while they fit in 8 bytes.
            (&b"aaabbb"[..], false),
            (b"cccddd", false),
            // A chunk of at least the setting: a view of the input.
            (b"0123456789abcdef", true),
        ]
    );
}

/// Chunked bodies: chunk sizes, each chunk's extension, and the last chunk's.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let ext = prop_oneof![
        Just(String::new()),
        Just(";x=1".to_string()),
        Just(" ; a ; b=\"q\"".to_string()),
    ];
    let last = prop_oneof![
        Just("0\r\n\r\n".to_string()),
        Just("0; ieof\r\n\r\n".to_string()),
        Just("0;use-original-body=12\r\n\r\n".to_string()),
        Just("0\r\nX-T: 1\r\n\r\n".to_string()),
    ];
    (vec((1usize..40, ext), 0..20), last).prop_map(|(chunks, last)| {
        let mut out = Vec::new();
        let mut byte = 0u8;
        for (n, ext) in chunks {
            out.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
            for _ in 0..n {
                out.push(byte);
                byte = byte.wrapping_add(7);
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(last.as_bytes());
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bodies_and_chunkings_give_the_same_events(
        chunks in body(),
        damage in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        sizes in vec(1usize..64, 1..8),
        join in 1usize..100,
        shared in any::<bool>(),
        two in any::<bool>(),
    ) {
        let mut input = respmod(&chunks, false);
        if two {
            // A second message on the connection.
            input.extend_from_slice(&respmod(&chunks, false));
        }
        if let Some((at, b)) = damage {
            let k = at.index(input.len());
            input[k] = b;
        }
        let want = requests(&input, &[input.len()], Take::Events, false);
        for take in [Take::Events, Take::Slices, Take::Joined(join), Take::Mixed] {
            let got = requests(&input, &sizes, take, shared);
            prop_assert_eq!(&got, &want, "{:?}", take);
        }
        let want = responses(&input[..0], &[1], Take::Events, false);
        prop_assert_eq!(want, (Vec::new(), None));
    }
}
