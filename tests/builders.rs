//! Builders, byte for byte: RFC 3507's example messages (4.8.3, 4.9.3, 4.10.3) rebuilt with
//! the builders must equal the RFC's bytes; every other builder output is pinned too; and
//! property tests check that whatever the builders make decodes back to the same structure
//! under any split of its bytes.

use bytes::Bytes;
use icap::builder::ErrorStatus;
use icap::builder::{http_request_head, http_response_head};
use icap::{
    BodyKind, Encoder, ErrorKind, IcapUri, Method, Request, RequestDecoder, RequestEvent, Response,
    ResponseDecoder, ResponseEvent, ServiceOptions, Transfer,
};
use proptest::prelude::*;

fn rfc(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/rfc/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn uri(s: &str) -> IcapUri {
    IcapUri::parse(s).unwrap()
}

fn req_wire(req: &Request, body: Option<&'static [u8]>) -> String {
    let mut e = Encoder::new();
    e.whole_request(req, body.map(Bytes::from_static)).unwrap();
    String::from_utf8(e.to_bytes().to_vec()).unwrap()
}

fn res_wire(res: &Response, body: Option<&'static [u8]>) -> String {
    let mut e = Encoder::new();
    e.whole_response(res, body.map(Bytes::from_static)).unwrap();
    String::from_utf8(e.to_bytes().to_vec()).unwrap()
}

fn same(built: String, file: &str) {
    assert_eq!(built, String::from_utf8(rfc(file)).unwrap(), "{file}");
}

/// The ICAP response head fields shared by the RFC's example answers.
fn rfc_ok() -> icap::builder::ResponseBuilder {
    Response::ok("W3E4R7U9-L2E4-2")
        .header("Date", "Mon, 10 Jan 2000  09:55:21 GMT")
        .header("Server", "ICAP-Server-Software/1.0")
        .connection_close()
}

#[test]
fn rfc_example_1_reqmod_get() {
    let req = Request::reqmod(&uri("icap://icap-server.net/server?arg=87"))
        .http_request_parts(
            "GET",
            "/",
            [
                ("Host", "www.origin-server.com"),
                ("Accept", "text/html, text/plain"),
                ("Accept-Encoding", "compress"),
                ("Cookie", "ff39fk3jur@4ii0e02i"),
                ("If-None-Match", "\"xyzzy\", \"r2d2xxxx\""),
            ],
        )
        .build()
        .unwrap();
    same(req_wire(&req, None), "ex1-request.bin");

    let res = rfc_ok()
        .http_request_parts(
            "GET",
            "/modified-path",
            [
                ("Host", "www.origin-server.com"),
                (
                    "Via",
                    "1.0 icap-server.net (ICAP Example ReqMod Service 1.1)",
                ),
                ("Accept", "text/html, text/plain, image/gif"),
                ("Accept-Encoding", "gzip, compress"),
                ("If-None-Match", "\"xyzzy\", \"r2d2xxxx\""),
            ],
        )
        .build()
        .unwrap();
    same(res_wire(&res, None), "ex1-response.bin");
}

#[test]
fn rfc_example_2_reqmod_post() {
    let req = Request::reqmod(&uri("icap://icap-server.net/server?arg=87"))
        .http_request_parts(
            "POST",
            "/origin-resource/form.pl",
            [
                ("Host", "www.origin-server.com"),
                ("Accept", "text/html, text/plain"),
                ("Accept-Encoding", "compress"),
                ("Pragma", "no-cache"),
            ],
        )
        .with_body()
        .build()
        .unwrap();
    same(
        req_wire(&req, Some(b"I am posting this information.")),
        "ex2-request.bin",
    );

    let res = rfc_ok()
        .http_request_parts(
            "POST",
            "/origin-resource/form.pl",
            [
                ("Host", "www.origin-server.com"),
                (
                    "Via",
                    "1.0 icap-server.net (ICAP Example ReqMod Service 1.1)",
                ),
                ("Accept", "text/html, text/plain, image/gif"),
                ("Accept-Encoding", "gzip, compress"),
                ("Pragma", "no-cache"),
                ("Content-Length", "45"),
            ],
        )
        .with_body()
        .build()
        .unwrap();
    assert_eq!(res.body, Some(BodyKind::Request));
    same(
        res_wire(&res, Some(b"I am posting this information.  ICAP powered!")),
        "ex2-response.bin",
    );
}

#[test]
fn rfc_example_3_reqmod_blocked_with_403_page() {
    let req = Request::reqmod(&uri("icap://icap-server.net/content-filter"))
        .http_request_parts(
            "GET",
            "/naughty-content",
            [
                ("Host", "www.naughty-site.com"),
                ("Accept", "text/html, text/plain"),
                ("Accept-Encoding", "compress"),
            ],
        )
        .build()
        .unwrap();
    same(req_wire(&req, None), "ex3-request.bin");

    let res = rfc_ok()
        .http_response_parts(
            403,
            "Forbidden",
            [
                ("Date", "Wed, 08 Nov 2000 16:02:10 GMT"),
                ("Server", "Apache/1.3.12 (Unix)"),
                ("Last-Modified", "Thu, 02 Nov 2000 13:51:37 GMT"),
                ("ETag", "\"63600-1989-3a017169\""),
                ("Content-Length", "58"),
                ("Content-Type", "text/html"),
            ],
        )
        .with_body()
        .build()
        .unwrap();
    same(
        res_wire(
            &res,
            Some(b"Sorry, you are not allowed to access that naughty content."),
        ),
        "ex3-response.bin",
    );
}

#[test]
fn rfc_example_4_respmod() {
    let req = Request::respmod(&uri("icap://icap.example.org/satisf"))
        .http_request_parts(
            "GET",
            "/origin-resource",
            [
                ("Host", "www.origin-server.com"),
                ("Accept", "text/html, text/plain, image/gif"),
                ("Accept-Encoding", "gzip, compress"),
            ],
        )
        .http_response_parts(
            200,
            "OK",
            [
                ("Date", "Mon, 10 Jan 2000 09:52:22 GMT"),
                ("Server", "Apache/1.3.6 (Unix)"),
                ("ETag", "\"63840-1ab7-378d415b\""),
                ("Content-Type", "text/html"),
                ("Content-Length", "51"),
            ],
        )
        .with_body()
        .build()
        .unwrap();
    same(
        req_wire(
            &req,
            Some(b"This is data that was returned by an origin server."),
        ),
        "ex4-request.bin",
    );

    let res = rfc_ok()
        .http_response_parts(
            200,
            "OK",
            [
                ("Date", "Mon, 10 Jan 2000  09:55:21 GMT"),
                (
                    "Via",
                    "1.0 icap.example.org (ICAP Example RespMod Service 1.1)",
                ),
                ("Server", "Apache/1.3.6 (Unix)"),
                ("ETag", "\"63840-1ab7-378d415b\""),
                ("Content-Type", "text/html"),
                ("Content-Length", "92"),
            ],
        )
        .with_body()
        .build()
        .unwrap();
    same(
        res_wire(
            &res,
            Some(b"This is data that was returned by an origin server, but with\r\nvalue added by an ICAP server."),
        ),
        "ex4-response.bin",
    );
}

#[test]
fn rfc_example_5_options() {
    let req = Request::options(&uri("icap://icap.server.net/sample-service"))
        .user_agent("BazookaDotCom-ICAP-Client-Library/2.3")
        .build()
        .unwrap();
    same(req_wire(&req, None), "ex5-request.bin");

    // The RFC puts Encapsulated in the middle of the list; the builder can place it there.
    let res = Response::options_answer("W3E4R7U9-L2E4-2")
        .header("Date", "Mon, 10 Jan 2000  09:55:21 GMT")
        .header("Methods", "RESPMOD")
        .header("Service", "FOO Tech Server 1.0")
        .istag_here()
        .encapsulated_here()
        .header("Max-Connections", "1000")
        .header("Options-TTL", "7200")
        .header("Allow", "204")
        .header("Preview", "2048")
        .header("Transfer-Complete", "asp, bat, exe, com")
        .header("Transfer-Ignore", "html")
        .header("Transfer-Preview", "*")
        .build()
        .unwrap();
    same(res_wire(&res, None), "ex5-response.bin");
}

fn decode_one_response(wire: &[u8], method: Method) -> Response {
    let mut d = ResponseDecoder::default();
    d.expect_response_to(Some(method));
    d.feed(wire);
    match d.decode().unwrap() {
        Some(ResponseEvent::Head(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn options_view_of_rfc_example_5_and_back() {
    let res = decode_one_response(&rfc("ex5-response.bin"), Method::Options);
    let o = ServiceOptions::from_response(&res).unwrap();
    assert_eq!(o.methods, vec![Method::Respmod]);
    assert_eq!(o.service.as_deref(), Some("FOO Tech Server 1.0"));
    assert_eq!(o.istag, "\"W3E4R7U9-L2E4-2\"");
    assert_eq!(o.date.as_deref(), Some("Mon, 10 Jan 2000  09:55:21 GMT"));
    assert_eq!(
        (o.max_connections, o.options_ttl, o.preview),
        (Some(1000), Some(7200), Some(2048))
    );
    assert!(o.allow_204 && !o.allow_206 && !o.allow_trailers);
    assert_eq!(o.transfer_complete, ["asp", "bat", "exe", "com"]);
    assert_eq!(o.transfer_for("virus.exe"), Transfer::Complete);
    assert_eq!(o.transfer_for("index.HTML"), Transfer::Ignore);
    assert_eq!(o.transfer_for("a.pdf"), Transfer::Preview);
    assert!(
        o.supports(&Method::Respmod)
            && o.supports(&Method::Options)
            && !o.supports(&Method::Reqmod)
    );

    let built = o.to_response().unwrap();
    assert_eq!(
        res_wire(&built, None),
        "ICAP/1.0 200 OK\r\n\
         Methods: RESPMOD\r\n\
         Service: FOO Tech Server 1.0\r\n\
         ISTag: \"W3E4R7U9-L2E4-2\"\r\n\
         Transfer-Preview: *\r\n\
         Transfer-Ignore: html\r\n\
         Transfer-Complete: asp, bat, exe, com\r\n\
         Options-TTL: 7200\r\n\
         Max-Connections: 1000\r\n\
         Date: Mon, 10 Jan 2000  09:55:21 GMT\r\n\
         Preview: 2048\r\n\
         Allow: 204\r\n\
         Encapsulated: null-body=0\r\n\r\n"
    );
    let back = decode_one_response(&Encoder::new().tap_response(&built), Method::Options);
    assert_eq!(ServiceOptions::from_response(&back).unwrap(), o);
}

#[test]
fn options_view_of_a_c_icap_answer() {
    let p = format!(
        "{}/tests/data/cicap-respmod-ex206.response.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let wire = std::fs::read(p).unwrap();
    let res = decode_one_response(&wire, Method::Options);
    let o = ServiceOptions::from_response(&res).unwrap();
    assert_eq!(o.methods, vec![Method::Respmod, Method::Reqmod]);
    assert!(o.allow_204 && o.allow_206);
    assert_eq!(o.preview, Some(1024));
    assert_eq!(o.transfer_for("anything.bin"), Transfer::Preview);
    assert_eq!(o.preview_for(Some(10)), Some(10));
}

#[test]
fn options_view_refuses_broken_answers() {
    let cases: [(&[u8], ErrorKind); 4] = [
        (b"ICAP/1.0 404 Service Not Found\r\nISTag: \"x\"\r\nEncapsulated: null-body=0\r\n\r\n", ErrorKind::UnexpectedResponse),
        (b"ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nEncapsulated: null-body=0\r\n\r\n", ErrorKind::BadHeader),
        (b"ICAP/1.0 200 OK\r\nMethods: REQMOD\r\nEncapsulated: null-body=0\r\n\r\n", ErrorKind::BadHeader),
        (b"ICAP/1.0 200 OK\r\nMethods: REQMOD\r\nISTag: \"x\"\r\nPreview: -1\r\nEncapsulated: null-body=0\r\n\r\n", ErrorKind::BadHeader),
    ];
    for (wire, kind) in cases {
        let res = decode_one_response(wire, Method::Options);
        assert_eq!(
            ServiceOptions::from_response(&res).unwrap_err().kind(),
            kind
        );
    }
    let o = ServiceOptions::default().with_istag("x");
    assert_eq!(
        o.to_response()
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
}

/// Encodes a head alone, for the decoder.
trait Tap {
    fn tap_response(&mut self, r: &Response) -> Vec<u8>;
}

impl Tap for Encoder {
    fn tap_response(&mut self, r: &Response) -> Vec<u8> {
        self.response_head(r).unwrap();
        self.to_bytes().to_vec()
    }
}

#[test]
fn client_style_requests() {
    let u = uri("icaps://dlp.example/reqmod");
    let req = Request::reqmod(&u)
        .user_agent("icap")
        .client_ip("192.0.2.7".parse().unwrap())
        .server_ip("2001:db8::1".parse().unwrap())
        .authenticated_user("TG9jYWw6Ly9hbGljZQ==")
        .allow_204()
        .allow_206()
        .preview(1024)
        .http_request_parts(
            "POST",
            "http://upload.example/f",
            [
                ("Host", "upload.example"),
                ("Proxy-Authorization", "Basic YTpi"),
                ("Connection", "close"),
                ("Content-Length", "3"),
            ],
        )
        .with_body()
        .build()
        .unwrap();
    let mut e = Encoder::new();
    e.request_head(&req).unwrap();
    assert_eq!(
        String::from_utf8(e.to_bytes().to_vec()).unwrap(),
        "REQMOD icaps://dlp.example/reqmod ICAP/1.0\r\n\
         Host: dlp.example\r\n\
         User-Agent: icap\r\n\
         X-Client-IP: 192.0.2.7\r\n\
         X-Server-IP: 2001:db8::1\r\n\
         X-Authenticated-User: TG9jYWw6Ly9hbGljZQ==\r\n\
         Allow: 204, 206\r\n\
         Preview: 1024\r\n\
         Proxy-Authorization: Basic YTpi\r\n\
         Encapsulated: req-hdr=0, req-body=82\r\n\r\n\
         POST http://upload.example/f HTTP/1.1\r\nHost: upload.example\r\nContent-Length: 3\r\n\r\n"
    );
    // A preview request goes through a ClientTransaction, not whole.
    assert_eq!(
        Encoder::new()
            .whole_request(&req, Some(Bytes::from_static(b"abc")))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidState
    );

    let resp = Request::respmod(&uri("icap://av:1345/respmod"))
        .connection_close()
        .allow_trailers()
        .http_response_parts(
            200,
            "OK",
            [
                ("Transfer-Encoding", "chunked"),
                ("Proxy-Authenticate", "Basic"),
                ("Content-Type", "text/plain"),
            ],
        )
        .build()
        .unwrap();
    assert_eq!(
        req_wire(&resp, None),
        "RESPMOD icap://av:1345/respmod ICAP/1.0\r\n\
         Host: av:1345\r\n\
         Connection: close\r\n\
         Allow: trailers\r\n\
         Proxy-Authenticate: Basic\r\n\
         Encapsulated: res-hdr=0, null-body=45\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    );
    assert_eq!(
        Encoder::new()
            .whole_request(&resp, Some(Bytes::from_static(b"x")))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidState
    );
}

#[test]
fn server_style_responses() {
    // 204 with ISTag, the reason c-icap uses, no Encapsulated.
    let r = Response::no_content("CI0001-XXXXXXXXX")
        .header("Server", "C-ICAP/0.5.10")
        .reason("Unmodified")
        .build()
        .unwrap();
    assert_eq!(
        res_wire(&r, None),
        "ICAP/1.0 204 Unmodified\r\nServer: C-ICAP/0.5.10\r\nISTag: \"CI0001-XXXXXXXXX\"\r\n\r\n"
    );
    // A REQMOD answered with a block page.
    let page = b"<html>blocked</html>";
    let r = Response::ok("t1")
        .header("X-Blocked-Reason", "policy")
        .http_error_page(403, "Forbidden", "text/html", page)
        .build()
        .unwrap();
    let mut e = Encoder::new();
    e.whole_response(&r, Some(Bytes::from_static(page)))
        .unwrap();
    assert_eq!(
        String::from_utf8(e.to_bytes().to_vec()).unwrap(),
        "ICAP/1.0 200 OK\r\nX-Blocked-Reason: policy\r\nISTag: \"t1\"\r\nEncapsulated: res-hdr=0, res-body=71\r\n\r\n\
         HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 20\r\n\r\n\
         14\r\n<html>blocked</html>\r\n0\r\n\r\n"
    );
    // A 206 as c-icap's ex206 service sends it: head, no new bytes, use-original-body=0.
    let r = Response::partial_content("CI0001-XXXXXXXXX")
        .http_response_parts(200, "OK", [("Content-Length", "3000")])
        .build()
        .unwrap();
    let mut e = Encoder::new();
    e.partial_response(&r, Bytes::new(), 0).unwrap();
    assert_eq!(
        String::from_utf8(e.to_bytes().to_vec()).unwrap(),
        "ICAP/1.0 206 Partial Content\r\nISTag: \"CI0001-XXXXXXXXX\"\r\nEncapsulated: res-hdr=0, res-body=41\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n0; use-original-body=0\r\n\r\n"
    );
    assert_eq!(
        Encoder::new()
            .whole_response(&r, Some(Bytes::new()))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidState
    );
    // 206 with a new prefix.
    let mut e = Encoder::new();
    e.partial_response(&r, Bytes::from_static(b"NEW"), 3)
        .unwrap();
    assert!(e
        .to_bytes()
        .ends_with(b"\r\n\r\n3\r\nNEW\r\n0; use-original-body=3\r\n\r\n"));
    // Every error status, byte for byte.
    for (s, line) in [
        (ErrorStatus::BadRequest, "400 Bad Request"),
        (ErrorStatus::ServiceNotFound, "404 Service Not Found"),
        (ErrorStatus::MethodNotAllowed, "405 Method Not Allowed"),
        (ErrorStatus::RequestTimeout, "408 Request Timeout"),
        (ErrorStatus::ServerError, "500 Server Error"),
        (
            ErrorStatus::MethodNotImplemented,
            "501 Method Not Implemented",
        ),
        (ErrorStatus::ServiceOverloaded, "503 Service Overloaded"),
        (
            ErrorStatus::VersionNotSupported,
            "505 ICAP Version Not Supported",
        ),
    ] {
        let r = Response::error(s, "t").build().unwrap();
        assert_eq!(
            res_wire(&r, None),
            format!("ICAP/1.0 {line}\r\nConnection: close\r\nISTag: \"t\"\r\nEncapsulated: null-body=0\r\n\r\n")
        );
    }
    // 100 Continue, exactly.
    let mut e = Encoder::new();
    e.response_head(&Response::continue_100()).unwrap();
    assert_eq!(&e.to_bytes()[..], b"ICAP/1.0 100 Continue\r\n\r\n");
    // An OPTIONS answer with an opt-body.
    let r = Response::options_answer("t")
        .header("Methods", "REQMOD")
        .header("Opt-body-type", "XML-Policy-Table-1.0")
        .with_body()
        .build()
        .unwrap();
    assert_eq!(r.body, Some(BodyKind::Options));
    assert!(res_wire(&r, Some(b"<x/>"))
        .ends_with("Encapsulated: opt-body=0\r\n\r\n4\r\n<x/>\r\n0\r\n\r\n"));
    assert_eq!(
        Response::options_answer("t")
            .http_response_parts(200, "OK", [("A", "b")])
            .build()
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
}

#[test]
fn raw_part_helpers_check_their_input() {
    assert!(http_request_head("GET", "/", "HTTP/1.0", [("A", "b")]).is_ok());
    assert_eq!(
        http_request_head("GET", "/", "HTTP/1.0 x", [("A", "b")])
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
    assert_eq!(
        http_request_head("GET", "/", "HTP", [("A", "b")])
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
    assert_eq!(
        http_response_head("HTTP/1.1", 99, "x", [("A", "b")])
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
    assert_eq!(
        http_response_head("HTTP/1.1", 200, "O\nK", [("A", "b")])
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
    assert_eq!(
        http_response_head("HTTP/1.1", 200, "OK", [("A:", "b")])
            .map_err(icap::Error::from)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidMessage
    );
    let u = uri("icap://h/");
    for name in ["Host", "encapsulated", "Preview", "Allow"] {
        assert_eq!(
            Request::options(&u)
                .header(name, "1")
                .build()
                .map_err(icap::Error::from)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidMessage
        );
    }
    for name in ["ISTag", "Encapsulated"] {
        assert_eq!(
            Response::ok("t")
                .with_body()
                .header(name, "1")
                .build()
                .map_err(icap::Error::from)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidMessage
        );
    }
}

#[cfg(feature = "http")]
#[test]
fn from_http_crate_parts() {
    let (parts, ()) = http::Request::builder()
        .method("POST")
        .uri("http://example.com/upload?x=1")
        .version(http::Version::HTTP_2)
        .header("content-type", "text/plain")
        .header("connection", "keep-alive")
        .header("proxy-authorization", "Basic YTpi")
        .body(())
        .unwrap()
        .into_parts();
    let req = Request::reqmod(&uri("icap://h/r"))
        .http_request_from(&parts)
        .build()
        .unwrap();
    assert_eq!(
        req_wire(&req, None),
        "REQMOD icap://h/r ICAP/1.0\r\nHost: h\r\nproxy-authorization: Basic YTpi\r\n\
         Encapsulated: req-hdr=0, null-body=73\r\n\r\n\
         POST http://example.com/upload?x=1 HTTP/1.1\r\ncontent-type: text/plain\r\n\r\n"
    );
    let (parts, ()) = http::Response::builder()
        .status(404)
        .version(http::Version::HTTP_10)
        .header("content-length", "0")
        .body(())
        .unwrap()
        .into_parts();
    let res = Response::ok("t")
        .http_response_from(&parts)
        .build()
        .unwrap();
    let h = res.http_response.unwrap();
    assert_eq!(h.line(), "HTTP/1.0 404 Not Found");
    assert_eq!(h.headers.get_str("content-length"), Some("0"));
}

/// Heads with mixed-case names, a repeated field split by another one (which `HeaderMap`
/// groups) and a reason phrase of their own: what a proxy really sends.
#[cfg(feature = "http")]
fn awkward_heads() -> (icap::HttpRequestHead, icap::HttpResponseHead) {
    let req = http_request_head(
        "GET",
        "http://shop.example/cart?id=7",
        "HTTP/1.0",
        [
            ("Host", "shop.example"),
            ("Cookie", "a=1"),
            ("X-Trace-ID", "t1"),
            ("Cookie", "b=2"),
        ],
    )
    .unwrap();
    let res = http_response_head(
        "HTTP/1.1",
        200,
        "Okey Dokey",
        [
            ("Set-Cookie", "s=1"),
            ("Content-Type", "text/html"),
            ("set-cookie", "s=2"),
            ("Content-Length", "0"),
        ],
    )
    .unwrap();
    (req, res)
}

#[cfg(feature = "http")]
#[test]
fn into_http_crate_parts_and_back_is_byte_exact() {
    use icap::builder::{
        http_request_head_from, http_request_parts, http_response_head_from, http_response_parts,
    };
    let (req_head, res_head) = awkward_heads();
    let req_parts = http_request_parts(&req_head).unwrap();
    assert_eq!(req_parts.method, http::Method::GET);
    assert_eq!(req_parts.uri, "http://shop.example/cart?id=7");
    assert_eq!(req_parts.version, http::Version::HTTP_10);
    let cookies: Vec<_> = req_parts.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(req_parts.headers.len(), 4);
    let res_parts = http_response_parts(&res_head).unwrap();
    assert_eq!(res_parts.status, http::StatusCode::OK);
    let set: Vec<_> = res_parts.headers.get_all("set-cookie").iter().collect();
    assert_eq!(set, ["s=1", "s=2"]);

    assert_eq!(http_request_head_from(&req_parts), req_head);
    assert_eq!(http_response_head_from(&res_parts), res_head);
    let u = uri("icap://icap.example/respmod");
    let direct = Request::respmod(&u)
        .http_request(req_head)
        .http_response(res_head)
        .build()
        .unwrap();
    let via_http = Request::respmod(&u)
        .http_request_from(&req_parts)
        .http_response_from(&res_parts)
        .build()
        .unwrap();
    assert_eq!(req_wire(&via_http, None), req_wire(&direct, None));
    assert!(req_wire(&via_http, None).contains(
        "GET http://shop.example/cart?id=7 HTTP/1.0\r\nHost: shop.example\r\nCookie: a=1\r\n\
         X-Trace-ID: t1\r\nCookie: b=2\r\n\r\n\
         HTTP/1.1 200 Okey Dokey\r\nSet-Cookie: s=1\r\nContent-Type: text/html\r\n\
         set-cookie: s=2\r\nContent-Length: 0\r\n\r\n"
    ));
}

#[cfg(feature = "http")]
#[test]
fn edited_http_parts_make_a_fresh_head() {
    use icap::builder::{http_response_head_from, http_response_parts};
    let (_, res_head) = awkward_heads();
    let mut parts = http_response_parts(&res_head).unwrap();
    parts.status = http::StatusCode::FORBIDDEN;
    let h = http_response_head_from(&parts);
    assert_eq!(h.line(), "HTTP/1.1 403 Forbidden");
    let fields: Vec<(String, String)> = h
        .headers
        .iter()
        .map(|(n, v)| {
            (
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect();
    // `HeaderMap` lower-cases names and groups a repeated field; duplicates stay in order.
    assert_eq!(
        fields,
        [
            ("set-cookie", "s=1"),
            ("set-cookie", "s=2"),
            ("content-type", "text/html"),
            ("content-length", "0"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()))
    );
}

#[cfg(feature = "http")]
#[test]
fn http_parts_from_the_http_crate_round_trip() {
    use icap::builder::{http_request_head_from, http_request_parts};
    let (parts, ()) = http::Request::builder()
        .method("PUT")
        .uri("http://files.example/a.txt")
        .header("content-type", "text/plain")
        .header("x-tag", "1")
        .header("x-tag", "2")
        .body(())
        .unwrap()
        .into_parts();
    let head = http_request_head_from(&parts);
    let back = http_request_parts(&head).unwrap();
    assert_eq!(
        (&back.method, &back.uri, back.version, &back.headers),
        (&parts.method, &parts.uri, parts.version, &parts.headers)
    );
}

#[cfg(feature = "http")]
#[test]
fn heads_the_http_crate_cannot_hold_are_a_typed_error() {
    use icap::builder::{http_request_parts, http_response_parts};
    use icap::{HttpRequestHead, HttpResponseHead};
    let (req, res) = awkward_heads();
    let cases: [(HttpRequestHead, &str); 3] = [
        (
            HttpRequestHead {
                target: Bytes::from_static(b"http://a b/"),
                ..req.clone()
            },
            "invalid ICAP message: HTTP request target \"http://a b/\" is not a URI: invalid uri character",
        ),
        (
            HttpRequestHead {
                version: Bytes::from_static(b"HTTP/4.2"),
                ..req.clone()
            },
            "invalid ICAP message: HTTP version \"HTTP/4.2\" has no http::Version",
        ),
        (
            HttpRequestHead {
                method: Bytes::from_static(b"G\"T"),
                ..req
            },
            "invalid ICAP message: HTTP method \"G\\\"T\" is not valid for the http crate",
        ),
    ];
    for (head, want) in cases {
        assert_eq!(http_request_parts(&head).unwrap_err().to_string(), want);
    }
    let bad_status = HttpResponseHead { status: 42, ..res };
    assert_eq!(
        http_response_parts(&bad_status).unwrap_err().message(),
        "HTTP status 42 is not valid"
    );
}

// ---------------------------------------------------------------------------------------
// Property tests: built messages decode back to the same structure under any byte split.

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,11}"
}

fn value() -> impl Strategy<Value = String> {
    // Printable, no surrounding whitespace (a decoder trims it), inner spaces allowed.
    "[!-~]([ -~]{0,20}[!-~])?"
}

fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((token(), value()), 0..6)
}

fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..30)
}

/// An event of either role as (head, data, end), for the generic [`decode_with`].
trait Split<M> {
    fn split(self) -> (Option<M>, Option<bytes::Bytes>, bool);
}

impl Split<Request> for RequestEvent {
    fn split(self) -> (Option<Request>, Option<bytes::Bytes>, bool) {
        match self {
            RequestEvent::Head(h) => (Some(h), None, false),
            RequestEvent::Data(d) => (None, Some(d), false),
            RequestEvent::End(_) => (None, None, true),
            _ => (None, None, false),
        }
    }
}

impl Split<Response> for ResponseEvent {
    fn split(self) -> (Option<Response>, Option<bytes::Bytes>, bool) {
        match self {
            ResponseEvent::Head(h) => (Some(h), None, false),
            ResponseEvent::Data(d) => (None, Some(d), false),
            ResponseEvent::End(_) => (None, None, true),
            _ => (None, None, false),
        }
    }
}

/// Feeds `wire` in pieces of the given sizes (cycled) and collects the events.
fn decode_with<M: icap::Message>(
    mut dec: icap::Decoder<M>,
    wire: &[u8],
    sizes: &[usize],
) -> (Vec<M>, Vec<u8>, usize)
where
    M::Event: Split<M>,
{
    let (mut heads, mut body, mut ends) = (Vec::new(), Vec::new(), 0);
    let mut at = 0;
    let mut i = 0;
    loop {
        while let Some(ev) = dec.decode().unwrap() {
            match ev.split() {
                (Some(h), _, _) => heads.push(h),
                (_, Some(d), _) => body.extend_from_slice(&d),
                (_, _, true) => ends += 1,
                _ => panic!("no preview here"),
            }
        }
        if at == wire.len() {
            break;
        }
        let n = sizes[i % sizes.len()].min(wire.len() - at);
        dec.feed(&wire[at..at + n]);
        at += n;
        i += 1;
    }
    assert!(dec.is_idle());
    (heads, body, ends)
}

fn without_encapsulated(h: &icap::Headers) -> icap::Headers {
    let mut h = h.clone();
    h.remove("Encapsulated");
    h
}

#[derive(Debug, Clone)]
struct ReqCase {
    method: u8,
    host: String,
    port: Option<u16>,
    path: String,
    icap_fields: Vec<(String, String)>,
    allow: (bool, bool, bool),
    http_req: Option<(String, Vec<(String, String)>)>,
    http_res: Option<(u16, Vec<(String, String)>)>,
    body: Option<Vec<u8>>,
}

fn req_case() -> impl Strategy<Value = ReqCase> {
    (
        0u8..3,
        "[a-z][a-z0-9]{0,8}(\\.[a-z]{2,4})?",
        prop::option::of(1u16..),
        "(/[a-z0-9]{0,6}){0,3}(\\?[a-z]=[0-9]{1,3})?",
        prop::collection::vec(("X-[A-Za-z]{1,8}", value()), 0..4),
        any::<(bool, bool, bool)>(),
        prop::option::of(("/[a-z/]{0,10}", fields())),
        prop::option::of((100u16..600, fields())),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(
            |(method, host, port, path, icap_fields, allow, http_req, http_res, body)| ReqCase {
                method,
                host,
                port,
                path,
                icap_fields,
                allow,
                http_req,
                http_res,
                body,
            },
        )
}

fn build_request(c: &ReqCase) -> icap::Result<Request> {
    let port = c.port.map_or(String::new(), |p| format!(":{p}"));
    let u = uri(&format!("icap://{}{port}{}", c.host, c.path));
    let mut b = match c.method {
        0 => Request::reqmod(&u),
        1 => Request::respmod(&u),
        _ => Request::options(&u),
    };
    for (n, v) in &c.icap_fields {
        b = b.header(n, v);
    }
    if c.allow.0 {
        b = b.allow_204();
    }
    if c.allow.1 {
        b = b.allow_206();
    }
    if c.allow.2 {
        b = b.allow_trailers();
    }
    if let Some((t, f)) = &c.http_req {
        b = b.http_request_parts("GET", t, f.clone());
    }
    if let Some((s, f)) = &c.http_res {
        b = b.http_response_parts(*s, "Some Reason", f.clone());
    }
    if c.body.is_some() {
        b = b.with_body();
    }
    b.build().map_err(Into::into)
}

#[derive(Debug, Clone)]
struct ResCase {
    kind: u8,
    fields: Vec<(String, String)>,
    http_req: Option<(String, Vec<(String, String)>)>,
    http_res: Option<(u16, Vec<(String, String)>)>,
    body: Option<Vec<u8>>,
    istag: String,
}

fn res_case() -> impl Strategy<Value = ResCase> {
    (
        0u8..5,
        prop::collection::vec(("X-[A-Za-z]{1,8}", value()), 0..4),
        prop::option::of(("/[a-z/]{0,10}", fields())),
        prop::option::of((100u16..600, fields())),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        "[A-Za-z0-9-]{1,32}",
    )
        .prop_map(|(kind, fields, http_req, http_res, body, istag)| ResCase {
            kind,
            fields,
            http_req,
            http_res,
            body,
            istag,
        })
}

fn build_response(c: &ResCase) -> icap::Result<Response> {
    let mut b = match c.kind {
        0 => Response::ok(&c.istag),
        1 => Response::no_content(&c.istag),
        2 => Response::error(ErrorStatus::ServerError, &c.istag),
        3 => Response::options_answer(&c.istag),
        _ => Response::partial_content(&c.istag),
    };
    for (n, v) in &c.fields {
        b = b.header(n, v);
    }
    if let Some((t, f)) = &c.http_req {
        b = b.http_request_parts("POST", t, f.clone());
    }
    if let Some((s, f)) = &c.http_res {
        b = b.http_response_parts(*s, "R", f.clone());
    }
    if c.body.is_some() {
        b = b.with_body();
    }
    b.build().map_err(Into::into)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn built_requests_decode_back(c in req_case(), sizes in splits()) {
        let Ok(req) = build_request(&c) else {
            // Refused combinations must be the illegal ones.
            let legal = match c.method {
                0 => c.http_req.is_some() && c.http_res.is_none(),
                1 => c.http_res.is_some(),
                _ => c.http_req.is_none() && c.http_res.is_none() && c.body.is_none(),
            };
            prop_assert!(!legal, "a legal request was refused: {c:?}");
            return Ok(());
        };
        let mut e = Encoder::new();
        e.whole_request(&req, c.body.clone().map(Bytes::from)).unwrap();
        let wire = e.to_bytes();
        let (heads, body, ends) = decode_with(RequestDecoder::default(), &wire, &sizes);
        prop_assert_eq!(heads.len(), 1);
        prop_assert_eq!(ends, 1);
        let got = &heads[0];
        prop_assert_eq!(&got.method, &req.method);
        prop_assert_eq!(&got.uri, &req.uri);
        prop_assert_eq!(&without_encapsulated(&got.headers), &req.headers);
        prop_assert_eq!(&got.http_request, &req.http_request);
        prop_assert_eq!(&got.http_response, &req.http_response);
        prop_assert_eq!(got.body, req.body);
        prop_assert_eq!(body, c.body.clone().unwrap_or_default());
    }

    #[test]
    fn built_responses_decode_back(c in res_case(), sizes in splits(), offset in 0u64..1000) {
        let Ok(res) = build_response(&c) else {
            let heads = c.http_req.is_some() as u8 + c.http_res.is_some() as u8;
            let legal = match c.kind {
                0 => heads < 2 && (heads == 1 || c.body.is_some()),
                1 | 2 => heads == 0 && c.body.is_none(),
                3 => heads == 0,
                _ => heads < 2,
            };
            prop_assert!(!legal, "a legal response was refused: {c:?}");
            return Ok(());
        };
        let mut e = Encoder::new();
        let mut body = c.body.clone().unwrap_or_default();
        if res.status == 206 {
            e.partial_response(&res, Bytes::from(body.clone()), offset).unwrap();
        } else {
            if res.body.is_none() {
                body.clear();
            }
            e.whole_response(&res, res.body.map(|_| Bytes::from(body.clone()))).unwrap();
        }
        let wire = e.to_bytes();
        let (heads, got_body, ends) = decode_with(ResponseDecoder::default(), &wire, &sizes);
        prop_assert_eq!(heads.len(), 1);
        prop_assert_eq!(ends, 1);
        let got = &heads[0];
        prop_assert_eq!(got.status, res.status);
        prop_assert_eq!(&got.reason, &res.reason);
        prop_assert_eq!(&without_encapsulated(&got.headers), &without_encapsulated(&res.headers));
        prop_assert_eq!(&got.http_request, &res.http_request);
        prop_assert_eq!(&got.http_response, &res.http_response);
        prop_assert_eq!(got.body, res.body);
        prop_assert_eq!(got_body, body);
    }
}

/// `Request::preview` reads the header as the decoder does: digits only, and it fits a `u64`.
/// Values the decoder refuses as `BadPreview` are `None`, the others the decoder's number.
#[test]
fn request_preview_is_read_as_strictly_as_the_decoder_reads_it() {
    let cases: &[(&str, Option<u64>)] = &[
        ("5", Some(5)),
        ("0", Some(0)),
        ("007", Some(7)),
        ("+5", None),
        ("-5", None),
        ("5 5", None),
        ("0x5", None),
        ("5;", None),
        ("", None),
        ("\u{0665}", None),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("99999999999999999999999", None),
        // Surrounding whitespace is not part of a header value (OWS): both see "5".
        (" 5", Some(5)),
        ("5 ", Some(5)),
        ("\t5\t", Some(5)),
    ];
    for &(v, want) in cases {
        let mut req = Request::options(&uri("icap://x/o")).build().unwrap();
        req.headers.insert("Preview", v);
        assert_eq!(req.preview(), want, "Preview: {v:?}");
        let mut dec = RequestDecoder::default();
        dec.feed(
            format!("OPTIONS icap://x/o ICAP/1.0\r\nHost: x\r\nPreview: {v}\r\n\r\n").as_bytes(),
        );
        match dec.decode() {
            Ok(Some(RequestEvent::Head(r))) => {
                assert_eq!(r.preview(), want, "decoded Preview: {v:?}")
            }
            Err(e) if e.kind() == ErrorKind::BadPreview => assert_eq!(want, None, "{v:?}: {e}"),
            // Numbers the decoder reads, then refuses for the preview limit.
            Err(e) if e.kind() == ErrorKind::PreviewTooLarge => assert!(want.is_some(), "{v:?}"),
            other => panic!("Preview: {v:?}: {other:?}"),
        }
    }
}
