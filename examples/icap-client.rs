//! icap-client: a general ICAP client in the spirit of c-icap-client.
//!
//! ```text
//! cargo run --features client --example icap-client -- --url icap://127.0.0.1:1344/echo \
//!     [--method OPTIONS|REQMOD|RESPMOD] [--file FILE] [--req URL] [--resp URL]
//!     [--preview N] [--no-204] [--allow-206] [-x 'X-Header: v'] [--hx 'HTTP-Header: v']
//!     [--output FILE] [--verbose] [--ca FILE | --pin-cert FILE]
//!     [--client-cert FILE --client-key FILE] [--timeout SECS] [--max-answer BYTES]
//! ```
//!
//! Prints the ICAP answer's status line and headers and the encapsulated HTTP heads; saves
//! a returned body with `--output`. `--verbose` also prints the request head as sent.
//! The method defaults to OPTIONS, or REQMOD with `--req`, RESPMOD with `--resp`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use icap::client::{BodySource, Client, ClientRequest, PreviewPolicy};
use icap::{Encoder, Headers, HttpRequestHead, HttpResponseHead};
use icap_dlp_engine::cli::seconds;
use icap_dlp_engine::tls_args::TlsArgs;
use tokio::io::AsyncWriteExt;

const EXIT_STATUS: &str = "Exit status:
  0  the server answered (100, 200, 204 or 206) and the answer is printed
  2  bad arguments, an unreadable file (named), a server that cannot be reached or answers
     with an error status or broken ICAP (the message names the server)";

#[derive(Parser, Debug)]
#[command(
    name = "icap-client",
    about = "Send one ICAP request and print the answer",
    after_help = EXIT_STATUS
)]
struct Args {
    /// The ICAP service URL (icap:// or icaps://).
    #[arg(long)]
    url: String,
    /// OPTIONS, REQMOD or RESPMOD [default: OPTIONS, or REQMOD with --req, RESPMOD with
    /// --resp].
    #[arg(long, ignore_case = true, value_parser = ["OPTIONS", "REQMOD", "RESPMOD"])]
    method: Option<String>,
    /// Body to send.
    #[arg(long)]
    file: Option<PathBuf>,
    /// REQMOD: the URL of the embedded HTTP request.
    #[arg(long)]
    req: Option<String>,
    /// RESPMOD: the URL whose response is embedded.
    #[arg(long)]
    resp: Option<String>,
    /// Preview size (default: from OPTIONS).
    #[arg(long)]
    preview: Option<u64>,
    /// Do not send Allow: 204.
    #[arg(long = "no-204")]
    no_204: bool,
    /// Send Allow: 206.
    #[arg(long = "allow-206")]
    allow_206: bool,
    /// Extra ICAP header.
    #[arg(short = 'x', long = "icap-header")]
    icap_headers: Vec<String>,
    /// Extra header of the embedded HTTP message.
    #[arg(long = "hx")]
    http_headers: Vec<String>,
    /// Where to save the returned body.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the request head as sent.
    #[arg(long)]
    verbose: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Most seconds for the whole exchange (connect, OPTIONS, request, answer).
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = seconds)]
    timeout: Duration,
    /// Most answer bytes (heads, framing, body) beyond the size of the body sent.
    #[arg(long = "max-answer", value_name = "BYTES", default_value_t = 16 << 20)]
    max_answer: u64,
}

fn split_header(h: &str) -> Result<(String, String), String> {
    h.split_once(':')
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("{h:?} is not `Name: value`"))
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(args: Args) -> Result<u8, String> {
    let tls = args.tls.client_tls().map_err(|e| e.to_string())?;
    let method = match (args.method.as_deref(), &args.req, &args.resp) {
        (Some(m), _, _) => m.to_ascii_uppercase(),
        (None, Some(_), _) => "REQMOD".into(),
        (None, None, Some(_)) => "RESPMOD".into(),
        (None, None, None) => "OPTIONS".into(),
    };
    let timeout = args.timeout;
    let client = Client::builder()
        .server(args.url.as_str())
        .tls(tls)
        .allow_204(!args.no_204)
        .preview(
            args.preview
                .map_or(PreviewPolicy::FromOptions, PreviewPolicy::Fixed),
        )
        .retries(0)
        .deadline(timeout)
        .transaction_timeout(timeout)
        .max_answer(args.max_answer)
        .user_agent("icap-client")
        .build()
        .map_err(|e| e.to_string())?;
    let body = match (&args.file, method.as_str()) {
        (_, "OPTIONS") => BodySource::None,
        (Some(f), _) => BodySource::file(f.clone()),
        (None, _) => BodySource::None,
    };
    let has_body = !matches!(body, BodySource::None);
    let icap_headers = args
        .icap_headers
        .iter()
        .map(|h| split_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let http_headers = args
        .http_headers
        .iter()
        .map(|h| split_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let file_len = match &args.file {
        Some(f) => Some(
            std::fs::metadata(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .len(),
        ),
        None => None,
    };
    let host_of = |url: &str| {
        url.split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("localhost")
            .to_string()
    };
    let headers = |mut h: Vec<(String, String)>| -> Headers {
        if let Some(n) = file_len {
            h.push(("Content-Length".into(), n.to_string()));
        }
        h.extend(http_headers.iter().cloned());
        h.into_iter().collect()
    };
    let mut req = match method.as_str() {
        "OPTIONS" => ClientRequest::options(),
        "REQMOD" => {
            let url = args
                .req
                .clone()
                .unwrap_or_else(|| "http://localhost/".into());
            let verb = if has_body { "POST" } else { "GET" };
            let h = headers(vec![("Host".into(), host_of(&url))]);
            ClientRequest::reqmod(HttpRequestHead::new(verb, &url, h))
        }
        "RESPMOD" => {
            let url = args
                .resp
                .clone()
                .unwrap_or_else(|| "http://localhost/".into());
            let host = host_of(&url);
            ClientRequest::respmod(HttpResponseHead::new(200, "OK", headers(Vec::new())))
                .http_request(HttpRequestHead::new(
                    "GET",
                    &url,
                    [("Host", host.as_str())].into_iter().collect(),
                ))
        }
        other => return Err(format!("unsupported method {other}")),
    }
    .body(body);
    if let Some(f) = args.file.as_ref().and_then(|f| f.to_str()) {
        req = req.file_name(f);
    }
    if args.allow_206 && method != "OPTIONS" {
        req = req.allow_206();
    }
    for (n, v) in &icap_headers {
        req = req.header(n.as_str(), v);
    }
    if args.verbose {
        // The preview is the client's choice (from OPTIONS unless --preview fixes it).
        let server = &client.servers()[0];
        let head = req
            .to_request(server, args.preview, client.config())
            .map_err(|e| e.to_string())?;
        let mut e = Encoder::new();
        e.request_head(&head).map_err(|e| e.to_string())?;
        eprintln!("--- request head for {server}\n{}", show(&e.to_bytes()));
    }
    let x = client.send(req).await.map_err(|e| e.to_string())?;
    let mut head = BytesMut::new();
    let r = &x.head;
    println!("ICAP server: {}", x.server);
    if let Some(v) = &x.tls_version {
        println!("TLS: {v}");
    }
    println!(
        "ICAP HEADERS:\n\t{} {} {}",
        r.version,
        r.status,
        show(&r.reason)
    );
    for (n, v) in r.headers.iter() {
        println!("\t{}: {}", show(n), show(v));
    }
    if let Some(h) = &r.http_request {
        h.write_to(&mut head);
        println!(
            "REQUEST HEADERS:\n\t{}",
            show(&head).trim_end().replace("\r\n", "\n\t")
        );
        head.clear();
    }
    if let Some(h) = &r.http_response {
        h.write_to(&mut head);
        println!(
            "RESPONSE HEADERS:\n\t{}",
            show(&head).trim_end().replace("\r\n", "\n\t")
        );
    }
    // The body streams from the connection to the file (or is only counted): bounded
    // memory whatever its size.
    let mut out = match &args.output {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let has_answer_body = r.body.is_some();
    let mut answer = x.into_body();
    let mut len = 0u64;
    while let Some(piece) = answer.data().await {
        let piece = piece.map_err(|e| e.to_string())?;
        len += piece.len() as u64;
        if let Some(f) = out.as_mut() {
            f.write_all(&piece).await.map_err(|e| e.to_string())?;
        }
    }
    if let Some(f) = out.as_mut() {
        f.flush().await.map_err(|e| e.to_string())?;
    }
    if has_answer_body {
        println!(
            "BODY: {len} bytes{}",
            args.output
                .as_ref()
                .map_or(String::new(), |p| format!(" saved to {}", p.display()))
        );
    }
    if let Some(n) = answer.use_original_body() {
        println!("206: the original body continues from offset {n}");
    }
    Ok(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    // clap prints --help and exits 0, or prints an argument error and exits 2.
    match run(Args::parse()).await {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("icap-client: {e}");
            ExitCode::from(2)
        }
    }
}
