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
use icap::client::{BodySource, Client, ClientConfig, PreviewPolicy};
use icap::tls::ClientTls;
use icap::{Encoder, IcapUri, Request};

#[derive(Parser, Debug)]
#[command(
    name = "icap-client",
    about = "Send one ICAP request and print the answer"
)]
struct Args {
    /// The ICAP service URL (icap:// or icaps://).
    #[arg(long)]
    url: String,
    /// OPTIONS, REQMOD or RESPMOD.
    #[arg(long)]
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
    /// CA file for icaps://.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Pinned server certificate.
    #[arg(long = "pin-cert")]
    pin_cert: Option<PathBuf>,
    /// Client certificate.
    #[arg(long = "client-cert", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Client key.
    #[arg(long = "client-key", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Most seconds for the whole exchange (connect, OPTIONS, request, answer).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f64,
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
    let mut tls = ClientTls::default();
    if let Some(ca) = &args.ca {
        tls = tls.with_ca_file(ca).map_err(|e| e.to_string())?;
    }
    if let Some(pin) = &args.pin_cert {
        tls = tls.with_pinned_cert_file(pin).map_err(|e| e.to_string())?;
    }
    if let (Some(c), Some(k)) = (&args.client_cert, &args.client_key) {
        tls = tls
            .with_client_cert_files(c, k)
            .map_err(|e| e.to_string())?;
    }
    let method = match (args.method.as_deref(), &args.req, &args.resp) {
        (Some(m), _, _) => m.to_ascii_uppercase(),
        (None, Some(_), _) => "REQMOD".into(),
        (None, None, Some(_)) => "RESPMOD".into(),
        (None, None, None) => "OPTIONS".into(),
    };
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            format!(
                "--timeout {}: not a positive number of seconds",
                args.timeout
            )
        })?;
    let cfg = ClientConfig {
        tls,
        allow_204: !args.no_204,
        preview: args
            .preview
            .map_or(PreviewPolicy::FromOptions, PreviewPolicy::Fixed),
        retries: 0,
        deadline: timeout,
        transaction_timeout: timeout,
        max_answer: args.max_answer,
        ..Default::default()
    };
    let client = Client::new(&[args.url.as_str()], cfg).map_err(|e| e.to_string())?;
    let body = match (&args.file, method.as_str()) {
        (_, "OPTIONS") => BodySource::None,
        (Some(f), _) => BodySource::File(f.clone()),
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
    let verbose = args.verbose;
    let build = |uri: &IcapUri, preview: Option<u64>| -> icap::Result<Request> {
        let mut b = match method.as_str() {
            "OPTIONS" => Request::options(uri),
            "REQMOD" => {
                let url = args
                    .req
                    .clone()
                    .unwrap_or_else(|| "http://localhost/".into());
                let host = url
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .unwrap_or("localhost")
                    .to_string();
                let mut h: Vec<(String, String)> = vec![("Host".into(), host)];
                if let Some(n) = file_len {
                    h.push(("Content-Length".into(), n.to_string()));
                }
                h.extend(http_headers.iter().cloned());
                let verb = if has_body { "POST" } else { "GET" };
                Request::reqmod(uri).http_request_parts(verb, &url, h)
            }
            "RESPMOD" => {
                let url = args
                    .resp
                    .clone()
                    .unwrap_or_else(|| "http://localhost/".into());
                let host = url
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .unwrap_or("localhost")
                    .to_string();
                let mut h: Vec<(String, String)> = Vec::new();
                if let Some(n) = file_len {
                    h.push(("Content-Length".into(), n.to_string()));
                }
                h.extend(http_headers.iter().cloned());
                Request::respmod(uri)
                    .http_request_parts("GET", &url, [("Host", host.as_str())])
                    .http_response_parts(200, "OK", h)
            }
            other => {
                return Err(icap::Error::new(
                    icap::ErrorKind::InvalidMessage,
                    0,
                    format!("unsupported method {other}"),
                ))
            }
        };
        b = b.user_agent("icap-client");
        if has_body {
            b = b.with_body();
            if let Some(p) = preview {
                b = b.preview(p);
            }
        }
        if !args.no_204 && method != "OPTIONS" {
            b = b.allow_204();
        }
        if args.allow_206 && method != "OPTIONS" {
            b = b.allow_206();
        }
        for (n, v) in &icap_headers {
            b = b.header(n, v);
        }
        let req = b.build()?;
        if verbose {
            let mut e = Encoder::new();
            e.request_head(&req).unwrap();
            eprintln!("--- request head sent to {uri}\n{}", show(&e.to_bytes()));
        }
        Ok(req)
    };
    let x = match &args.output {
        Some(path) => {
            let mut f = tokio::fs::File::create(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let x = client
                .send_to(
                    build,
                    &body,
                    args.file.as_ref().and_then(|f| f.to_str()),
                    None,
                    &mut f,
                )
                .await;
            tokio::io::AsyncWriteExt::flush(&mut f)
                .await
                .map_err(|e| e.to_string())?;
            x
        }
        None => {
            client
                .send(
                    build,
                    &body,
                    args.file.as_ref().and_then(|f| f.to_str()),
                    None,
                )
                .await
        }
    }
    .map_err(|e| e.to_string())?;
    let mut head = BytesMut::new();
    let r = &x.response;
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
    if let Some((len, _)) = x.body_digest {
        println!(
            "BODY: {len} bytes{}",
            args.output
                .as_ref()
                .map_or(String::new(), |p| format!(" saved to {}", p.display()))
        );
    }
    if let Some(n) = x.use_original_body {
        println!("206: the original body continues from offset {n}");
    }
    Ok(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("icap-client: {e}");
            ExitCode::from(2)
        }
    }
}
