//! icap-inspect: decode one direction of an ICAP connection and print one JSON object per
//! message (JSON Lines).
//!
//! ```text
//! cargo run --example icap-inspect -- [--role request|response] [--feed N] [FILE]
//! ```
//!
//! Reads FILE (stdin when absent), feeds it to the streaming decoder N bytes at a time
//! (default: all at once) and prints each message as it completes. On malformed input it
//! prints `{"type":"error","kind":...,"offset":...,"message":...}` and exits with status 2,
//! as on bad arguments or an unreadable file (`--help` lists the exit status).
//! The schema is in the README.

use std::io::Read;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use icap::{
    Encapsulated, Headers, HttpRequestHead, HttpResponseHead, Request, RequestDecoder,
    RequestEvent, Response, ResponseDecoder, ResponseEvent,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const EXIT_STATUS: &str = "Exit status:
  0  every message decoded
  2  malformed input (the last line is the typed error with its byte offset), bad
     arguments, or an unreadable FILE (the message names it)";

/// Which side of the connection the bytes come from.
#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
enum Role {
    /// What a client sends: REQMOD, RESPMOD and OPTIONS requests.
    Request,
    /// What a server sends: ICAP responses.
    Response,
}

#[derive(Parser, Debug)]
#[command(
    name = "icap-inspect",
    about = "Decode one direction of an ICAP connection and print each message as JSON Lines",
    after_help = EXIT_STATUS
)]
struct Args {
    /// Which side sent the bytes [default: guessed from the first line].
    #[arg(long)]
    role: Option<Role>,
    /// Feed the decoder N bytes at a time [default: all at once].
    #[arg(long, value_name = "N")]
    feed: Option<NonZeroUsize>,
    /// The capture to decode [default: stdin].
    file: Option<PathBuf>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn headers(h: &Headers) -> Value {
    Value::Array(h.iter().map(|(n, v)| json!([text(n), text(v)])).collect())
}

fn encapsulated(h: &Headers) -> Value {
    let list = h
        .get("Encapsulated")
        .and_then(|v| Encapsulated::parse(v).ok())
        .map(|e| e.iter().map(|(s, o)| json!([s.as_str(), o])).collect())
        .unwrap_or_default();
    Value::Array(list)
}

fn http_request(h: &Option<HttpRequestHead>) -> Value {
    h.as_ref().map_or(
        Value::Null,
        |h| json!({"line": h.line(), "headers": headers(&h.headers)}),
    )
}

fn http_response(h: &Option<HttpResponseHead>) -> Value {
    h.as_ref().map_or(
        Value::Null,
        |h| json!({"line": h.line(), "headers": headers(&h.headers)}),
    )
}

fn request_json(r: &Request) -> Value {
    json!({
        "type": "request",
        "method": r.method.to_string(),
        "uri": text(&r.uri),
        "version": r.version.to_string(),
        "headers": headers(&r.headers),
        "encapsulated": encapsulated(&r.headers),
        "preview": r.preview(),
        "http_request": http_request(&r.http_request),
        "http_response": http_response(&r.http_response),
    })
}

fn response_json(r: &Response) -> Value {
    json!({
        "type": "response",
        "version": r.version.to_string(),
        "status": r.status,
        "reason": text(&r.reason),
        "headers": headers(&r.headers),
        "encapsulated": encapsulated(&r.headers),
        "http_request": http_request(&r.http_request),
        "http_response": http_response(&r.http_response),
    })
}

/// One message being assembled: its JSON head and a running digest of its body.
struct Pending {
    obj: Value,
    section: Option<&'static str>,
    len: u64,
    sha: Sha256,
}

impl Pending {
    fn new(obj: Value, body: Option<icap::BodyKind>) -> Self {
        Pending {
            obj,
            section: body.map(|b| b.section().as_str()),
            len: 0,
            sha: Sha256::new(),
        }
    }

    fn print(mut self, ieof: bool, use_original_body: Option<u64>) {
        let body = match self.section {
            None => Value::Null,
            Some(s) => {
                let digest = self.sha.finalize();
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                json!({"section": s, "length": self.len, "sha256": hex, "ieof": ieof,
                       "use_original_body": use_original_body})
            }
        };
        self.obj["body"] = body;
        println!("{}", self.obj);
    }
}

fn error(e: &icap::Error) -> ExitCode {
    println!(
        "{}",
        json!({"type": "error", "kind": e.kind().as_str(), "offset": e.offset(), "message": e.message()})
    );
    ExitCode::from(2)
}

/// Drives a decoder over `input`; `head` turns a head event into a pending message.
macro_rules! run {
    ($dec:expr, $ev:ident, $input:expr, $feed:expr, $head:expr, $preview:expr) => {{
        let mut dec = $dec;
        let mut pos = 0usize;
        let mut cur: Option<Pending> = None;
        loop {
            loop {
                let ev = match dec.decode() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => return error(&e),
                };
                match ev {
                    $ev::Head(m) => cur = Some($head(&m)),
                    $ev::Data(d) => {
                        let p = cur.as_mut().expect("data follows a head");
                        p.len += d.len() as u64;
                        p.sha.update(&d);
                    }
                    $ev::End(last) => {
                        if let Some(p) = cur.take() {
                            p.print(last.ieof, last.use_original_body);
                        }
                    }
                    // PreviewEnd: the preview decision is taken below.
                    _ => {}
                }
            }
            if !$preview(&mut dec, &mut cur, pos >= $input.len()) {
                if pos >= $input.len() {
                    break;
                }
                let n = $feed.min($input.len() - pos);
                dec.feed(&$input[pos..pos + n]);
                pos += n;
            }
        }
        if let Err(e) = dec.decode_eof() {
            return error(&e);
        }
        ExitCode::SUCCESS
    }};
}

fn main() -> ExitCode {
    // clap prints --help and exits 0, or prints an argument error and exits 2.
    let args = Args::parse();
    let mut input = Vec::new();
    let read = match &args.file {
        Some(f) => std::fs::File::open(f)
            .and_then(|mut f| f.read_to_end(&mut input))
            .map_err(|e| format!("{}: {e}", f.display())),
        None => std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| format!("stdin: {e}")),
    };
    if let Err(e) = read {
        eprintln!("icap-inspect: {e}");
        return ExitCode::from(2);
    }
    let role = args.role.unwrap_or_else(|| {
        let start = input
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(0);
        if input[start..].starts_with(b"ICAP/") {
            Role::Response
        } else {
            Role::Request
        }
    });
    let feed = args.feed.map_or(input.len().max(1), NonZeroUsize::get);
    match role {
        Role::Request => run!(
            RequestDecoder::default(),
            RequestEvent,
            input,
            feed,
            |m: &Request| Pending::new(request_json(m), m.body),
            // A capture shows only the client's bytes: after a preview, the client went on
            // (a chunk follows) if the server sent 100 Continue, or started a new request.
            |dec: &mut RequestDecoder, cur: &mut Option<Pending>, at_eof: bool| -> bool {
                if !dec.awaiting_preview_decision() {
                    return false;
                }
                match (dec.next_looks_like_chunk(), at_eof) {
                    (Some(true), _) => dec.continue_after_preview().is_ok(),
                    (Some(false), _) | (None, true) => {
                        if let Some(p) = cur.take() {
                            p.print(false, None);
                        }
                        dec.finish_after_preview().is_ok()
                    }
                    (None, false) => false,
                }
            }
        ),
        Role::Response => run!(
            ResponseDecoder::default(),
            ResponseEvent,
            input,
            feed,
            |m: &Response| Pending::new(response_json(m), m.body),
            |_: &mut ResponseDecoder, _: &mut Option<Pending>, _: bool| -> bool { false }
        ),
    }
}
