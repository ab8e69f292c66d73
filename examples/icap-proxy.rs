//! icap-proxy: a forward HTTP proxy on hyper that adapts every `http://` request and
//! response through ICAP (the `icap::adapt` layer).
//!
//! ```text
//! cargo run --features adapt --example icap-proxy -- [OPTIONS]
//!   --listen ADDR           where to listen (default 127.0.0.1:3128)
//!   --reqmod URL            REQMOD service for uploads (icap:// or icaps://)
//!   --respmod URL           RESPMOD service for downloads
//!   --fail-open             let the original pass when ICAP fails (default: a 503 page)
//!   --max-hold BYTES        bytes of a body held for a 204 (default 1 MiB)
//!   --ca FILE / --pin-cert FILE / --client-cert FILE --client-key FILE   TLS for icaps://
//!   --header-timeout SECS   longest time a request head may take (default 30)
//!   --max-connections N     client connections at once (default 10000); when full,
//!                           newcomers wait in the listen backlog
//!   --queue-timeout SECS    that wait, after which one is answered 503 (default 10)
//!   --body-idle-timeout SECS   longest silence inside a request body (default 30)
//!   --min-body-rate BYTES   least average request-body rate once --rate-grace has passed
//!                           (bytes/s, default 1024; 0: none)
//!   --rate-grace SECS       time a body may take before its rate is checked (default 10)
//! ```
//!
//! With neither `--reqmod` nor `--respmod` it uses `icap://127.0.0.1:1344/reqmod` and
//! `/respmod`, dlp-server's defaults. `CONNECT` is tunnelled untouched (no interception).
//! One access-log line per request goes to stdout:
//! `METHOD URL STATUS REQMOD-VERDICT/RESPMOD-VERDICT BYTES MS`.

use icap_dlp_engine::cli::{seconds, seconds_or_zero};
use icap_dlp_engine::listen;
use icap_dlp_engine::tls_args::TlsArgs;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use icap::adapt::{AdaptBody, AdaptConfig, AdaptLayer, ClientInfo, Disposition, Dispositions};
use icap::client::Client;
use tokio::net::TcpStream;
use tower::{Layer, Service, ServiceExt};

const EXIT_STATUS: &str = "Exit status:
  0  never (runs until killed)
  2  bad arguments, or the proxy cannot start (an address that cannot be bound, an unreadable
     certificate file, a bad ICAP URL); the message names it";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type OriginBody = BoxBody<Bytes, BoxError>;
type UpBody = AdaptBody<GuardedBody<Incoming>>;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "icap-proxy",
    about = "A forward HTTP proxy adapting requests (REQMOD) and responses (RESPMOD) through ICAP",
    after_help = EXIT_STATUS
)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128")]
    listen: SocketAddr,
    /// REQMOD service URL (uploads).
    #[arg(long, value_name = "ICAP_URL")]
    reqmod: Option<String>,
    /// RESPMOD service URL (downloads).
    #[arg(long, value_name = "ICAP_URL")]
    respmod: Option<String>,
    /// Let the original pass when the ICAP service fails (default: answer 503).
    #[arg(long = "fail-open")]
    fail_open: bool,
    /// Bytes of a body held while the ICAP server decides (204 outside the preview is
    /// offered only for bodies up to this).
    #[arg(long = "max-hold", value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_hold: usize,
    #[command(flatten)]
    tls: TlsArgs,
    /// Seconds a request head may take from its first byte (and an idle kept-alive
    /// connection may wait for one): a client that trickles its head is cut.
    #[arg(long = "header-timeout", value_name = "SECS", default_value = "30", value_parser = seconds)]
    header_timeout: Duration,
    /// Client connections served at once; when full, newcomers wait in the listen backlog.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 10000)]
    max_connections: usize,
    /// Seconds newcomers wait in the listen backlog while the proxy is full, before one is
    /// answered 503.
    #[arg(long = "queue-timeout", value_name = "SECS", default_value = "10",
          value_parser = seconds_or_zero)]
    queue_timeout: Duration,
    /// Seconds a connection may sit between requests (or before its first) and keep its
    /// place while the proxy is full: past them, the one idle the longest is closed
    /// (gracefully: never within a request) to make room for a newcomer.
    #[arg(long = "eviction-grace", value_name = "SECS", default_value = "10",
          value_parser = seconds_or_zero)]
    eviction_grace: Duration,
    /// Seconds a request body may stay silent; a body that does is cut and its connection
    /// closed (it would otherwise hold an ICAP connection to the scanner too).
    #[arg(long = "body-idle-timeout", value_name = "SECS", default_value = "30",
          value_parser = seconds)]
    body_idle_timeout: Duration,
    /// Least average request-body rate in bytes/s, checked once --rate-grace has passed: a
    /// client sending a byte now and then is cut. 0 checks no rate.
    #[arg(long = "min-body-rate", value_name = "BYTES", default_value_t = 1024)]
    min_body_rate: u64,
    /// Seconds a request body may take before its average rate is checked.
    #[arg(long = "rate-grace", value_name = "SECS", default_value = "10", value_parser = seconds)]
    rate_grace: Duration,
}

/// The time side of request bodies (`--body-idle-timeout`, `--min-body-rate`, `--rate-grace`).
#[derive(Clone, Copy, Debug)]
struct BodyPace {
    idle: Duration,
    min_rate: u64,
    grace: Duration,
}

impl BodyPace {
    fn from_args(args: &Args) -> BodyPace {
        BodyPace {
            idle: args.body_idle_timeout,
            min_rate: args.min_body_rate,
            grace: args.rate_grace,
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("icap-proxy: {msg}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (reqmod, respmod) = match (&args.reqmod, &args.respmod) {
        (None, None) => (
            Some("icap://127.0.0.1:1344/reqmod".to_string()),
            Some("icap://127.0.0.1:1344/respmod".to_string()),
        ),
        (a, b) => (a.clone(), b.clone()),
    };
    let tls = match args.tls.client_tls() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let client = |url: &str| Client::builder().server(url).tls(tls.clone()).build();
    let mut cfg = AdaptConfig::default()
        .fail_open(args.fail_open)
        .max_hold(args.max_hold);
    for (url, req) in [(&reqmod, true), (&respmod, false)] {
        if let Some(u) = url {
            match client(u) {
                Ok(c) if req => cfg = cfg.reqmod(c),
                Ok(c) => cfg = cfg.respmod(c),
                Err(e) => return fail(format!("{u}: {e}")),
            }
        }
    }
    let queue_timeout = args.queue_timeout;

    listen::raise_open_files("icap-proxy", 3 * args.max_connections as u64 + 64);
    let listener = match listen::listen(args.listen) {
        Ok(l) => l,
        Err(e) => return fail(format!("{}: {e}", args.listen)),
    };
    eprintln!(
        "icap-proxy: listening on {}; reqmod {}; respmod {}; fail-{}",
        listener.local_addr().map_or(args.listen, |a| a),
        reqmod.as_deref().unwrap_or("off"),
        respmod.as_deref().unwrap_or("off"),
        if args.fail_open { "open" } else { "closed" }
    );
    let header_timeout = args.header_timeout;

    let pace = BodyPace::from_args(&args);
    let eviction_grace = args.eviction_grace;

    let mut gate = listen::Gate::new(args.max_connections, queue_timeout, eviction_grace);
    let pool = Pool::default();
    let forward = tower::service_fn(move |req| forward(pool.clone(), req));
    let svc = AdaptLayer::new(cfg).layer(forward);
    loop {
        let (stream, peer, slot) = match gate.accept(&listener).await {
            Ok(listen::Accepted::Serve(stream, peer, slot)) => (stream, peer, slot),
            Ok(listen::Accepted::Refuse(stream, peer)) => {
                eprintln!(
                    "icap-proxy: refused {peer}: {} connections open (--max-connections)",
                    args.max_connections
                );
                tokio::spawn(listen::refuse(stream, OVERLOADED, Duration::from_secs(5)));
                continue;
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("icap-proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        tokio::spawn(async move {
            let activity = slot.activity.clone();
            let _slot = slot;
            let marks = activity.clone();
            let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (svc, marks) = (svc.clone(), marks.clone());
                marks.busy();
                async move {
                    let r = handle(svc, peer, req.map(|b| GuardedBody::new(b, pace))).await;
                    // The answer's body may still be on its way: a graceful shutdown
                    // lets it finish.
                    marks.idle();
                    r
                }
            });
            // Without a timer hyper waits for a head forever: a client sending a byte now
            // and then would hold its connection (and a slot) for good.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), handler)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = activity.evicted() => {}
            }
            eprintln!("icap-proxy: closing {peer}: idle past the eviction grace while full");
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}

/// The answer of a connection refused while the proxy is full.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 35\r\n\r\n\
    icap-proxy: too many connections.\r\n";

/// Fields that concern one connection only (RFC 9110 7.6.1), dropped on the way through.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    for n in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        h.remove(n);
    }
}

fn page(status: StatusCode, text: &str) -> Response<AdaptBody<OriginBody>> {
    let mut r = Response::new(AdaptBody::full(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One client request: CONNECT is tunnelled, anything else adapted and forwarded.
async fn handle<S>(
    mut svc: S,
    peer: SocketAddr,
    mut req: Request<GuardedBody<Incoming>>,
) -> Result<Response<LogBody>, Infallible>
where
    S: Service<
        Request<GuardedBody<Incoming>>,
        Response = Response<AdaptBody<OriginBody>>,
        Error = Infallible,
    >,
{
    let start = Instant::now();
    let line = format!("{} {}", req.method(), req.uri());
    if req.method() == http::Method::CONNECT {
        let resp = tunnel(req);
        return Ok(LogBody::wrap(resp.map(Full::new), line, "tunnel", start));
    }
    let resp = if req.uri().scheme_str() != Some("http") || req.uri().authority().is_none() {
        page(
            StatusCode::BAD_REQUEST,
            "icap-proxy: only absolute http:// URLs and CONNECT are proxied\n",
        )
    } else {
        strip_hop_by_hop(req.headers_mut());
        req.extensions_mut().insert(ClientInfo::new(peer.ip()));
        match svc.ready().await {
            Ok(s) => match s.call(req).await {
                Ok(r) => r,
                Err(e) => match e {},
            },
            Err(e) => match e {},
        }
    };
    let v = resp
        .extensions()
        .get::<Dispositions>()
        .copied()
        .unwrap_or_default();
    let name = |v: Option<Disposition>| v.map_or("-", Disposition::as_str);
    let verdict = format!("{}/{}", name(v.reqmod), name(v.respmod));
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(LogBody::wrap(
        Response::from_parts(parts, body),
        line,
        &verdict,
        start,
    ))
}

/// CONNECT: 200 at once, then bytes both ways untouched once hyper hands the connection over.
fn tunnel(req: Request<GuardedBody<Incoming>>) -> Response<Bytes> {
    let Some(target) = req.uri().authority().map(|a| a.to_string()) else {
        let mut r = Response::new(Bytes::from_static(b"CONNECT needs host:port\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    tokio::spawn(async move {
        let Ok(up) = hyper::upgrade::on(req).await else {
            return;
        };
        if let Ok(mut origin) = TcpStream::connect(&target).await {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(up), &mut origin).await;
        }
    });
    Response::new(Bytes::new())
}

/// Idle origin connections per `host:port`, given back once their answer is read.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<HashMap<String, Vec<SendRequest<UpBody>>>>>);

impl Pool {
    fn take(&self, key: &str) -> Option<SendRequest<UpBody>> {
        let mut map = self.0.lock().expect("not poisoned");
        let list = map.get_mut(key)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put_back_when_ready(&self, key: String, mut s: SendRequest<UpBody>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if s.ready().await.is_ok() {
                pool.0
                    .lock()
                    .expect("not poisoned")
                    .entry(key)
                    .or_default()
                    .push(s);
            }
        });
    }
}

/// The inner service: sends the (adapted) request to the origin, origin-form.
async fn forward(pool: Pool, mut req: Request<UpBody>) -> Result<Response<OriginBody>, Infallible> {
    let bad_gateway = |msg: String| {
        let mut r = Response::new(
            Full::new(Bytes::from(msg))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        );
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        Ok(r)
    };
    let Some(auth) = req.uri().authority().cloned() else {
        return bad_gateway("icap-proxy: no host in the URL\n".into());
    };
    let key = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80));
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = match pq.parse() {
        Ok(u) => u,
        Err(_) => return bad_gateway("icap-proxy: bad path\n".into()),
    };
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let mut sender = match pool.take(&key) {
        Some(s) => s,
        None => {
            let stream = match TcpStream::connect(&key).await {
                Ok(s) => s,
                Err(e) => return bad_gateway(format!("icap-proxy: {key}: {e}\n")),
            };
            let _ = stream.set_nodelay(true);
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    s
                }
                Err(e) => return bad_gateway(format!("icap-proxy: {key}: {e}\n")),
            }
        }
    };
    let fut = sender.send_request(req);
    pool.put_back_when_ready(key.clone(), sender);
    match fut.await {
        Ok(r) => Ok(r.map(|b| b.map_err(BoxError::from).boxed())),
        Err(e) => bad_gateway(format!("icap-proxy: {key}: {e}\n")),
    }
}

/// The response body on its way to the client, counted; the access-log line is written
/// when it is done (or dropped by a client that went away).
struct LogBody {
    inner: Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>,
    line: String,
    status: u16,
    verdict: String,
    bytes: u64,
    start: Instant,
}

impl LogBody {
    fn wrap<B>(resp: Response<B>, line: String, verdict: &str, start: Instant) -> Response<LogBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let status = resp.status().as_u16();
        resp.map(|b| LogBody {
            inner: Box::pin(b.map_err(Into::into)),
            line,
            status,
            verdict: verdict.to_string(),
            bytes: 0,
            start,
        })
    }
}

impl Drop for LogBody {
    fn drop(&mut self) {
        println!(
            "{} {} {} {} {}",
            self.line,
            self.status,
            self.verdict,
            self.bytes,
            self.start.elapsed().as_millis()
        );
    }
}

impl Body for LogBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body with a time side: cut (an error, which makes hyper close the connection)
/// when it stays silent for `idle`, or when, past `grace`, its average rate is below
/// `min_rate`. The one timer is set to whichever of the two comes first, so a stalled body is
/// cut on time even though nothing polls it in between. The clocks start at the first read:
/// a request waiting for a free ICAP connection is not the client's delay.
struct GuardedBody<B> {
    inner: B,
    pace: BodyPace,
    /// Time of the first read, and of the last byte.
    clock: Option<(Instant, Instant)>,
    bytes: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> GuardedBody<B> {
    fn new(inner: B, pace: BodyPace) -> Self {
        GuardedBody {
            inner,
            pace,
            clock: None,
            bytes: 0,
            timer: Box::pin(tokio::time::sleep(pace.idle)),
        }
    }

    /// When the body is cut if nothing more arrives: silence, or the average rate falling
    /// under the minimum (the bytes so far cover `bytes / min_rate` seconds).
    fn deadline(&self, start: Instant, last: Instant) -> Instant {
        let idle = last + self.pace.idle;
        if self.pace.min_rate == 0 {
            return idle;
        }
        let covered = Duration::from_secs_f64(self.bytes as f64 / self.pace.min_rate as f64);
        idle.min(start + self.pace.grace.max(covered))
    }

    fn cut(&self, start: Instant) -> BoxError {
        let secs = start.elapsed().as_secs_f64();
        format!(
            "request body too slow: {} bytes in {secs:.1} s (--body-idle-timeout {:?}, --min-body-rate {} after {:?})",
            self.bytes, self.pace.idle, self.pace.min_rate, self.pace.grace
        )
        .into()
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (start, last) = *self.clock.get_or_insert_with(|| {
            let now = Instant::now();
            (now, now)
        });
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                    self.clock = Some((start, Instant::now()));
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let at = tokio::time::Instant::from_std(self.deadline(start, last));
                if self.timer.deadline() != at {
                    self.timer.as_mut().reset(at);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let e = self.cut(start);
                        eprintln!("icap-proxy: {e}");
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
