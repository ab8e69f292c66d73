//! Real traffic captured from c-icap 0.5.10, c-icap-client and squid 5.7 (see
//! tests/data/README.md): every capture decodes in both directions under every split, and the
//! decoded structure matches what the peers did.

mod common;

use common::{capture_names, data, requests_all_splits, responses_all_splits, Ev};
use icap::{BodyKind, Method, Request, Response};

fn captures() -> Vec<String> {
    capture_names(".request.bin")
}

fn requests(name: &str) -> Vec<Ev<Request>> {
    requests_all_splits(&data(&format!("{name}.request.bin")))
        .unwrap_or_else(|e| panic!("{name} requests: {e}"))
}

fn responses(name: &str) -> Vec<Ev<Response>> {
    responses_all_splits(&data(&format!("{name}.response.bin")))
        .unwrap_or_else(|e| panic!("{name} responses: {e}"))
}

fn heads<M: Clone>(evs: &[Ev<M>]) -> Vec<M> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Head(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn statuses(evs: &[Ev<Response>]) -> Vec<u16> {
    heads(evs).iter().map(|r| r.status).collect()
}

fn bodies<M>(evs: &[Ev<M>]) -> Vec<&[u8]> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Body(b) => Some(&b[..]),
            _ => None,
        })
        .collect()
}

#[test]
fn every_capture_decodes_in_both_directions() {
    let names = captures();
    assert!(names.len() >= 20, "captures missing: {names:?}");
    for n in &names {
        let req = requests(n);
        let res = responses(n);
        assert!(!heads(&req).is_empty(), "{n}: no request");
        assert!(!heads(&res).is_empty(), "{n}: no response");
        // Every message that started also ended.
        let ends = |k: usize, e: usize| assert_eq!(k, e, "{n}: heads vs ends");
        ends(
            heads(&req).len(),
            req.iter().filter(|e| matches!(e, Ev::End(_))).count()
                + req
                    .windows(2)
                    .filter(|w| matches!(w[0], Ev::PreviewEnd) && matches!(w[1], Ev::Head(_)))
                    .count()
                + usize::from(matches!(req.last(), Some(Ev::PreviewEnd))),
        );
        ends(
            heads(&res).len(),
            res.iter().filter(|e| matches!(e, Ev::End(_))).count(),
        );
    }
}

#[test]
fn cicap_options_answer() {
    let res = heads(&responses("cicap-options-echo"));
    assert_eq!(res.len(), 1);
    let o = &res[0];
    assert_eq!((o.status, &o.reason[..]), (200, &b"OK"[..]));
    assert_eq!(o.headers.get("Preview"), Some(&b"1024"[..]));
    assert!(o.headers.has_token("Allow", "204"));
    assert_eq!(o.headers.get("Encapsulated"), Some(&b"null-body=0"[..]));
    assert_eq!(o.body, None);
    let req = heads(&requests("cicap-options-echo"));
    assert_eq!(req[0].method, Method::Options);
}

#[test]
fn url_check_block_page() {
    let evs = responses("cicap-reqmod-urlcheck-blocked");
    assert_eq!(statuses(&evs), vec![200, 200]);
    let block = &heads(&evs)[1];
    let http = block
        .http_response
        .as_ref()
        .expect("a REQMOD answered with a response");
    assert_eq!(http.status, 403);
    assert_eq!(block.body, Some(BodyKind::Response));
    assert_eq!(block.headers.get("X-Response-Info"), Some(&b"BLOCKED"[..]));
    let page = bodies(&evs)[0];
    assert_eq!(page.len(), 680);
    assert!(
        page.ends_with(b"\0\0"),
        "c-icap block pages end in two NULs"
    );
    // The allowed URL gets a 204 without Encapsulated and no body.
    let ok = responses("cicap-reqmod-urlcheck-allowed");
    assert_eq!(statuses(&ok), vec![200, 204]);
    assert_eq!(heads(&ok)[1].reason, &b"Unmodified"[..]);
}

#[test]
fn content_filtering_rewrites_the_body() {
    let evs = responses("cicap-respmod-cf-rewrite");
    let b = bodies(&evs);
    let body = b.last().unwrap();
    assert!(!body.windows(7).any(|w| w.eq_ignore_ascii_case(b"badword")));
    assert!(body.windows(7).any(|w| w == b"XXXXXXX"));
    let req = requests("cicap-respmod-cf-rewrite");
    let r = &heads(&req)[1];
    assert_eq!(r.method, Method::Respmod);
    assert_eq!(r.preview(), Some(56));
    assert!(matches!(req.last(), Some(Ev::End(l)) if l.ieof));
}

#[test]
fn preview_equal_to_body_then_continue_with_empty_rest() {
    // c-icap-client: 1024-byte body, Preview: 1024, no ieof; 100; then only `0`.
    let req = requests("cicap-respmod-preview-equal");
    match &req[2..] {
        [Ev::Head(r), Ev::Body(b), Ev::PreviewEnd, Ev::End(l)] => {
            assert_eq!(r.preview(), Some(1024));
            assert_eq!(b.len(), 1024);
            assert!(!l.ieof);
        }
        other => panic!("{:?}", other.len()),
    }
    assert_eq!(
        statuses(&responses("cicap-respmod-preview-equal")),
        vec![200, 100, 200]
    );
}

#[test]
fn preview_then_rest_after_100() {
    let req = requests("cicap-respmod-preview-continue");
    match &req[2..] {
        [Ev::Head(_), Ev::Body(p), Ev::PreviewEnd, Ev::Body(rest), Ev::End(_)] => {
            assert_eq!((p.len(), rest.len()), (1024, 1976));
        }
        other => panic!("{}", other.len()),
    }
    let res = responses("cicap-respmod-preview-continue");
    assert_eq!(statuses(&res), vec![200, 100, 200]);
    assert_eq!(bodies(&res).iter().map(|b| b.len()).sum::<usize>(), 3000);
}

#[test]
fn ex206_use_original_body() {
    let res = responses("cicap-respmod-ex206");
    assert_eq!(statuses(&res), vec![200, 206]);
    match res.last() {
        Some(Ev::End(l)) => assert_eq!(l.use_original_body, Some(0)),
        other => panic!("{other:?}"),
    }
    // The client sent two Allow headers; both are kept.
    let r = &heads(&requests("cicap-respmod-ex206"))[1];
    assert_eq!(r.headers.count("Allow"), 2);
    assert!(r.allows_206() && r.allows_204());
}

#[test]
fn zero_length_encapsulated_section() {
    let res = responses("cicap-reqmod-204as200");
    let r = heads(&res).pop().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("Encapsulated"),
        Some(&b"req-hdr=0, null-body=0"[..])
    );
    assert!(r.http_request.is_none() && r.http_response.is_none() && r.body.is_none());
}

#[test]
fn unknown_service_404_without_encapsulated() {
    let res = heads(&responses("cicap-unknown-service"));
    assert_eq!(res[0].status, 404);
    assert!(res[0].headers.has_token("Connection", "close"));
}

#[test]
fn squid_keeps_one_connection_per_service() {
    let req = requests("squid-large-respmod");
    let methods: Vec<_> = heads(&req).iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        methods,
        vec![Method::Options, Method::Respmod, Method::Respmod]
    );
    let opt = &heads(&req)[0];
    assert!(opt.headers.get("Encapsulated").is_none());
    let big = &heads(&req)[1];
    assert!(big
        .http_request
        .as_ref()
        .unwrap()
        .target
        .starts_with(b"http://"));
    assert_eq!(big.headers.get("X-Client-IP"), Some(&b"127.0.0.1"[..]));
    let res = responses("squid-large-respmod");
    assert_eq!(statuses(&res), vec![200, 100, 200, 200]);
    let lens: Vec<_> = bodies(&res).iter().map(|b| b.len()).collect();
    assert_eq!(lens, vec![4064 + 736, 20]);
}
