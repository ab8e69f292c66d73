//! One connection, driven: its transactions one after the other, each read through a
//! [`ServerTransaction`] (which holds the protocol rules), the service called with an owned
//! [`Body`] fed from here, and its [`Reply`] turned into a legal answer. Also the refusal of
//! a connection over the limits, and the clocks that bound slow clients.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, timeout_at, Instant};

use super::body::{Body, BodyError, Control, Piece};
use super::config::{MinRate, ServerConfig};
use super::service::{IncomingRequest, PeerInfo, Reply, ReplyBody, Route};
use super::slots::Slot;
use super::spool::Spool;
use super::{Server, Stats};
use crate::builder::{ErrorStatus, ResponseBuilder};
use crate::decode::{Event, RequestDecoder};
use crate::error::Error;
use crate::head::Method;
use crate::headers::Headers;
use crate::message::{Request, Response};
use crate::transaction::{Reuse, ServerEvent, ServerState, ServerTransaction};
use crate::uri::IcapUri;

/// A connection: TCP, TLS, or whatever the user accepted.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Body bytes read ahead of the service: the connection reads on while the service has
/// taken all but this many of the bytes handed over (a preview is read whole regardless).
const READ_AHEAD: u64 = 64 * 1024;

/// The connection, its place among the served ones, and the clock of the head or body
/// being read.
pub(crate) struct Conn<'s> {
    pub(crate) io: Box<dyn Io>,
    cfg: &'s ServerConfig,
    stats: &'s Stats,
    /// None for a connection the user accepted ([`Server::serve_connection`]).
    slot: Option<Slot>,
    /// Set from the first byte of a request head; replaced at the end of the head by the
    /// body's; cleared when a new transaction may wait idle.
    clock: Option<ReadClock>,
}

/// Why a timed read failed.
enum ReadFail {
    /// A deadline, the minimum rate or the per-read timeout ran out.
    Timeout,
    Io(io::Error),
}

/// The time budget of one head or body: a hard limit and a minimum rate, both on the time
/// spent waiting for the client (time the service takes between reads is not the client's).
#[derive(Debug, Clone, Copy)]
struct ReadClock {
    waited: Duration,
    bytes: u64,
    limit: Option<Duration>,
    rate: Option<MinRate>,
}

impl ReadClock {
    fn new(limit: Option<Duration>, rate: Option<MinRate>) -> Self {
        ReadClock {
            waited: Duration::ZERO,
            bytes: 0,
            limit,
            rate: rate.filter(|r| r.bytes_per_sec > 0),
        }
    }

    /// How much longer the next read may wait, `None` for no bound.
    fn allowance(&self) -> Option<Duration> {
        let hard = self.limit.map(|l| l.saturating_sub(self.waited));
        let rate = self.rate.map(|r| {
            // The bytes so far earned bytes / rate of waiting on top of the grace.
            let whole = Duration::from_secs(self.bytes / r.bytes_per_sec);
            let part = u128::from(self.bytes % r.bytes_per_sec) * 1_000_000_000
                / u128::from(r.bytes_per_sec);
            let earned = whole.saturating_add(Duration::from_nanos(part as u64));
            r.grace.saturating_add(earned).saturating_sub(self.waited)
        });
        match (hard, rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the wire gave next inside a body.
enum Got {
    Data(Bytes),
    /// A preview ended without `ieof`: the client waits.
    PreviewEnd,
    /// The body is complete (`ieof` included).
    End,
}

impl Conn<'_> {
    fn slot_idle(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.idle())
    }

    fn slot_busy(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.busy())
    }

    async fn read(&mut self, txn: &mut ServerTransaction) -> io::Result<usize> {
        let buf = txn.decoder_mut().buffer_mut();
        buf.reserve(16 * 1024);
        self.io.read_buf(buf).await
    }

    /// Reads within what the clock allows (and `per_read`), and charges the wait to it.
    async fn read_timed(
        &mut self,
        txn: &mut ServerTransaction,
        per_read: Option<Duration>,
    ) -> Result<usize, ReadFail> {
        let clock = self.clock.unwrap_or(ReadClock::new(None, None));
        let allow = match (clock.allowance(), per_read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let started = Instant::now();
        let r = match allow {
            Some(d) => timeout(d, self.read(txn)).await,
            None => Ok(self.read(txn).await),
        };
        if let Some(c) = &mut self.clock {
            c.waited += started.elapsed();
            if let Ok(Ok(n)) = &r {
                c.bytes += *n as u64;
            }
        }
        match r {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ReadFail::Io(e)),
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(ReadFail::Timeout)
            }
        }
    }

    pub(crate) async fn flush_out(&mut self, txn: &mut ServerTransaction) -> io::Result<()> {
        let out = txn.outgoing();
        let write = async {
            self.io.write_all_buf(out).await?;
            self.io.flush().await
        };
        match timeout(self.cfg.write_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// The next piece of a body from the wire. Cancel-safe: what was read stays in the
    /// decoder.
    async fn next_piece(&mut self, txn: &mut ServerTransaction) -> Result<Got, BodyError> {
        loop {
            match txn.poll_event() {
                Ok(Some(ServerEvent::Data(d))) => return Ok(Got::Data(d)),
                Ok(Some(ServerEvent::PreviewEnd { ieof: false })) => return Ok(Got::PreviewEnd),
                Ok(Some(ServerEvent::PreviewEnd { ieof: true } | ServerEvent::End(_))) => {
                    return Ok(Got::End)
                }
                Ok(Some(ServerEvent::Request(_))) => {
                    return Err(BodyError::Protocol(Error::new(
                        crate::ErrorKind::InvalidState,
                        txn.decoder_mut().position(),
                        "a second request head inside a transaction",
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(BodyError::Protocol(e)),
            }
            if !txn.receiving() {
                return Ok(Got::End);
            }
            let per_read = Some(self.cfg.read_timeout);
            match self.read_timed(txn, per_read).await {
                Err(ReadFail::Timeout) => return Err(BodyError::Timeout),
                Err(ReadFail::Io(e)) => return Err(BodyError::Io(Arc::new(e))),
                Ok(0) => {
                    let _ = txn.on_eof();
                    return Err(BodyError::Eof);
                }
                Ok(_) => {}
            }
        }
    }

    /// Reads the rest of the body (to the end of the preview in a preview), keeping it in
    /// `spool` when given.
    async fn drain(
        &mut self,
        txn: &mut ServerTransaction,
        mut spool: Option<&mut Spool>,
    ) -> Result<(), BodyError> {
        while txn.receiving() {
            match self.next_piece(txn).await? {
                Got::Data(d) => {
                    if let Some(s) = spool.as_deref_mut() {
                        s.push(d).await.map_err(|e| BodyError::Io(Arc::new(e)))?;
                    }
                }
                Got::PreviewEnd | Got::End => break,
            }
        }
        Ok(())
    }
}

/// A streaming echo under way: pieces handed to the service and not yet passed on.
struct Echo {
    holdback: u64,
}

/// The state of the body while the service runs.
struct Feed {
    /// Bytes handed to the service, and how many of them it has looked at.
    sent: u64,
    seen: u64,
    /// Copies of the pieces handed over and not yet looked at (all of them while an echo may
    /// still start; those not yet passed on once it has).
    inflight: VecDeque<Bytes>,
    inflight_start: u64,
    /// An echo can still start (the service has read nothing yet).
    echo_possible: bool,
    /// Asked for during a preview: starts once the preview is read.
    echo_asked: Option<(usize, tokio::sync::oneshot::Sender<Result<(), BodyError>>)>,
    echo: Option<Echo>,
    pieces: Option<mpsc::UnboundedSender<Piece>>,
}

impl Feed {
    fn hand(&mut self, p: Piece) {
        if let Piece::Data(d) = &p {
            self.sent += d.len() as u64;
            if self.echo_possible || self.echo.is_some() {
                self.inflight.push_back(d.clone());
            }
        }
        if let Some(tx) = &self.pieces {
            let _ = tx.send(p);
        }
    }

    /// Takes the front of `inflight` up to offset `upto`.
    fn take_upto(&mut self, upto: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        while self.inflight_start < upto {
            let Some(mut front) = self.inflight.pop_front() else {
                break;
            };
            let want = (upto - self.inflight_start) as usize;
            if front.len() > want {
                let rest = front.split_off(want);
                self.inflight.push_front(rest);
            }
            self.inflight_start += front.len() as u64;
            out.push(front);
        }
        out
    }
}

impl Server {
    /// Answers 503 to a connection over the limits, so that the client can read it: after
    /// the TLS handshake on a TLS port, and reading (and dropping) what it sends until it
    /// closes, so that a client still writing its request is not reset before it reads the
    /// answer. Bounded by [`ServerConfig::refusal_timeout`] and
    /// [`ServerConfig::refusal_drain`].
    pub(crate) async fn refuse(&self, tcp: TcpStream) {
        let deadline = Instant::now() + self.config.refusal_timeout;
        let mut io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => {
                let limit = deadline.min(Instant::now() + self.config.tls_handshake_timeout);
                match timeout_at(limit, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    _ => return,
                }
            }
        };
        let res = self.error_response(ErrorStatus::ServiceOverloaded, &self.config.istag);
        let mut buf = BytesMut::new();
        res.write_to(&mut buf);
        let write = async {
            io.write_all(&buf).await?;
            io.flush().await
        };
        if !matches!(timeout_at(deadline, write).await, Ok(Ok(()))) {
            return;
        }
        // Read on to the end of the request (the client then waits for the answer it has),
        // or to its close; a request that cannot be parsed is drained blind.
        let mut decoder = RequestDecoder::new(self.config.limits);
        let mut parsing = true;
        let mut drained = 0u64;
        'drain: while drained < self.config.refusal_drain {
            let buf = decoder.buffer_mut();
            if !parsing {
                buf.clear();
            }
            buf.reserve(16 * 1024);
            match timeout_at(deadline, io.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n as u64,
                _ => break,
            }
            while parsing {
                match decoder.decode() {
                    Ok(Some(Event::End(_) | Event::PreviewEnd)) => break 'drain,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => parsing = false,
                }
            }
        }
        let _ = timeout_at(deadline, io.shutdown()).await;
    }

    /// Serves a TCP connection accepted by [`Server::serve`]: waits (idle) for its first
    /// byte, then the TLS handshake, then its transactions.
    pub(crate) async fn connection(
        &self,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        slot: Slot,
        mut stop: watch::Receiver<bool>,
    ) {
        // Until its first byte a connection is idle: it may be closed to make room, and it
        // has idle_timeout to speak. The TLS handshake starts only then.
        let mut one = [0u8; 1];
        let first = tokio::select! {
            r = timeout(self.config.idle_timeout, tcp.peek(&mut one)) => r,
            _ = slot.evicted() => return,
            _ = stop.changed() => return,
        };
        if !matches!(first, Ok(Ok(n)) if n > 0) || !slot.busy() {
            return;
        }
        let (io, secure): (Box<dyn Io>, bool) = match &self.tls {
            None => (Box::new(tcp), false),
            Some(acceptor) => {
                match timeout(self.config.tls_handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => (Box::new(tls), true),
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {peer} failed: {e}");
                        return;
                    }
                    Err(_) => return,
                }
            }
        };
        let peer = PeerInfo::new(peer).with_secure(secure);
        self.run(io, peer, Some(slot), stop).await;
    }

    /// Runs the transactions of a connection until it closes.
    pub(crate) async fn run(
        &self,
        io: Box<dyn Io>,
        peer: PeerInfo,
        slot: Option<Slot>,
        stop: watch::Receiver<bool>,
    ) {
        let mut conn = Conn {
            io,
            cfg: &self.config,
            stats: &self.stats,
            slot,
            clock: None,
        };
        let mut decoder = RequestDecoder::new(self.config.limits);
        loop {
            let txn = ServerTransaction::new(decoder);
            match self.transaction(&mut conn, txn, peer, stop.clone()).await {
                Some(d) => decoder = d,
                None => break,
            }
        }
        let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    }

    fn server_header(&self, b: ResponseBuilder) -> ResponseBuilder {
        match &self.config.server_name {
            Some(s) => b.header("Server", s),
            None => b,
        }
    }

    pub(crate) fn error_response(&self, status: ErrorStatus, istag: &str) -> Response {
        let b = self.server_header(Response::error(status, istag));
        b.build().unwrap_or_else(|_| {
            // Only a bad ISTag can fail; fall back to the server's own.
            self.server_header(Response::error(status, "icap"))
                .build()
                .expect("a fixed ISTag is valid")
        })
    }

    /// Sends an error answer and closes (returns no decoder).
    async fn fail_with(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        status: ErrorStatus,
        istag: &str,
    ) -> Option<RequestDecoder> {
        let _ = txn.respond(self.error_response(status, istag));
        let _ = conn.flush_out(txn).await;
        None
    }

    /// Runs one transaction; returns the decoder when the connection may carry another.
    async fn transaction(
        &self,
        conn: &mut Conn<'_>,
        mut txn: ServerTransaction,
        peer: PeerInfo,
        mut stop: watch::Receiver<bool>,
    ) -> Option<RequestDecoder> {
        conn.clock = None;
        let istag = &self.config.istag;
        // 1. The head: wait idle, then at most head_timeout (and the minimum rate) from the
        // first byte, empty lines before it included.
        let request = loop {
            match txn.poll_event() {
                Ok(Some(ServerEvent::Request(r))) => break r,
                Ok(Some(ev)) => {
                    // The decoder gives a head first; anything else is a bug to report to
                    // the client as ours, not a reason to bring the server down.
                    tracing::error!("unexpected event before the request head: {ev:?}");
                    return self
                        .fail_with(conn, &mut txn, ErrorStatus::ServerError, istag)
                        .await;
                }
                Ok(None) => {}
                Err(_) => {
                    return self
                        .fail_with(conn, &mut txn, ErrorStatus::BadRequest, istag)
                        .await
                }
            }
            if conn.clock.is_none() && txn.decoder_mut().buffered().is_empty() {
                // Idle: between requests (or before the first), nothing of the next one here.
                if *stop.borrow() || !conn.slot_idle() {
                    return None;
                }
                let evicted = conn.slot.as_ref().map(|s| s.notify.clone());
                let on_evicted = async {
                    match &evicted {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                let read = tokio::select! {
                    r = timeout(self.config.idle_timeout, conn.read(&mut txn)) => r,
                    _ = stop.changed() => return None,
                    _ = on_evicted => return None,
                };
                match read {
                    Ok(Ok(0)) => {
                        let _ = txn.on_eof();
                        return None;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => return None,
                }
                if !conn.slot_busy() {
                    // Closed to make room just as the request began.
                    return None;
                }
                conn.clock = Some(ReadClock::new(
                    Some(self.config.head_timeout),
                    self.config.min_rate,
                ));
                continue;
            }
            if conn.clock.is_none() {
                // Pipelined: the next head is already (partly) here.
                conn.clock = Some(ReadClock::new(
                    Some(self.config.head_timeout),
                    self.config.min_rate,
                ));
            }
            match conn.read_timed(&mut txn, None).await {
                Ok(0) => {
                    let _ = txn.on_eof();
                    return None;
                }
                Ok(_) => {}
                Err(ReadFail::Io(_)) => return None,
                Err(ReadFail::Timeout) => {
                    return self
                        .fail_with(conn, &mut txn, ErrorStatus::RequestTimeout, istag)
                        .await
                }
            }
        };
        // The body has its own clock, started now.
        conn.clock = Some(ReadClock::new(
            self.config.body_timeout,
            self.config.min_rate,
        ));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);

        // 2. Routing and the checks that need no service code.
        let path = IcapUri::parse(&String::from_utf8_lossy(&request.uri))
            .ok()
            .map(|u| u.path().trim_start_matches('/').to_string());
        let route = path.as_ref().and_then(|p| self.routes.get(p)).cloned();
        let istag = route
            .as_ref()
            .map_or(istag.clone(), |r| r.options.istag.clone());
        let istag = istag.as_str();
        let refusal = if request.version.major != 1 {
            Some(ErrorStatus::VersionNotSupported)
        } else if matches!(request.method, Method::Other(_)) {
            Some(ErrorStatus::MethodNotImplemented)
        } else if path.is_none() {
            Some(ErrorStatus::BadRequest)
        } else if route.is_none() {
            Some(ErrorStatus::ServiceNotFound)
        } else if request.method != Method::Options
            && !route
                .as_ref()
                .is_some_and(|r| r.options.supports(&request.method))
        {
            Some(ErrorStatus::MethodNotAllowed)
        } else {
            None
        };
        if let Some(status) = refusal {
            // Answered before the body was read: the transaction closes the connection.
            return self.fail_with(conn, &mut txn, status, istag).await;
        }
        let route = route.expect("refused above when missing");

        // 3. OPTIONS is answered from the declared options.
        if request.method == Method::Options {
            // An OPTIONS body (rare) is read and dropped before answering.
            if let Err(e) = conn.drain(&mut txn, None).await {
                self.body_error(conn, &mut txn, e, istag).await;
                return None;
            }
            let res = route
                .options
                .response_builder()
                .map(|b| self.server_header(b))
                .and_then(|b| b.build())
                .unwrap_or_else(|_| self.error_response(ErrorStatus::ServerError, istag));
            let keep = self
                .send(conn, &mut txn, res, ReplyBody::Empty, None, istag)
                .await;
            return keep.then(|| txn.into_decoder());
        }

        // 4. REQMOD / RESPMOD: the service, with the body fed as it reads.
        let keep = self
            .exchange(conn, &mut txn, &route, request, peer, istag)
            .await;
        keep.then(|| txn.into_decoder())
    }

    /// Runs the service on a REQMOD or RESPMOD and answers; true when the connection may
    /// carry another transaction.
    async fn exchange(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        route: &Route,
        request: Request,
        peer: PeerInfo,
        istag: &str,
    ) -> bool {
        let head = request.clone();
        let has_body = request.body.is_some();
        let previewed = has_body && txn.state() == ServerState::Preview;
        let (piece_tx, piece_rx) = mpsc::unbounded_channel();
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
        let body = Body::new(has_body.then_some(piece_rx), ctl_tx, previewed);
        let mut spool = (!head.allows_204() && has_body)
            .then(|| Spool::new(self.config.spool_memory, self.config.spool_dir.clone()));
        let mut feed = Feed {
            sent: 0,
            seen: 0,
            inflight: VecDeque::new(),
            inflight_start: 0,
            echo_possible: has_body,
            echo_asked: None,
            echo: None,
            pieces: Some(piece_tx),
        };
        let mut call = route.call(IncomingRequest::new(request, peer, body));
        let mut ctl_open = true;
        let outcome = loop {
            let in_preview = txn.state() == ServerState::Preview;
            let can_read = feed.pieces.is_some()
                && txn.receiving()
                && (in_preview || feed.sent - feed.seen < READ_AHEAD);
            tokio::select! {
                biased;
                c = ctl_rx.recv(), if ctl_open => match c {
                    None => ctl_open = false,
                    Some(Control::Seen(n)) => {
                        feed.seen = n;
                        if let Some(e) = &feed.echo {
                            let upto = n.saturating_sub(e.holdback);
                            for b in feed.take_upto(upto) {
                                if forward(conn, txn, b).await.is_err() {
                                    return false;
                                }
                            }
                        } else if n > 0 && feed.echo_asked.is_none() {
                            feed.echo_possible = false;
                            feed.inflight.clear();
                        }
                    }
                    Some(Control::Continue) => {
                        if txn.state() == (ServerState::Decide { ieof: false })
                            && (txn.send_continue().is_err()
                                || conn.flush_out(txn).await.is_err())
                        {
                            return false;
                        }
                    }
                    Some(Control::StartEcho { holdback, done }) => {
                        if !feed.echo_possible {
                            let _ = done.send(Err(BodyError::misuse(
                                "start_echo must come before the body is read",
                            )));
                        } else {
                            feed.echo_asked = Some((holdback, done));
                        }
                    }
                },
                r = &mut call => break r,
                got = conn.next_piece(txn), if can_read => match got {
                    Ok(Got::Data(d)) => {
                        if let Some(s) = &mut spool {
                            if let Err(e) = s.push(d.clone()).await {
                                let e = BodyError::Io(Arc::new(e));
                                feed.hand(Piece::Failed(e.clone()));
                                self.body_error(conn, txn, e, istag).await;
                                return false;
                            }
                        }
                        feed.hand(Piece::Data(d));
                    }
                    Ok(Got::PreviewEnd) => feed.hand(Piece::PreviewEnd),
                    Ok(Got::End) => feed.hand(Piece::End),
                    Err(e) => {
                        feed.hand(Piece::Failed(e.clone()));
                        if feed.echo.is_none() {
                            // The 200 of an echo is out: closing is the only signal left.
                            self.body_error(conn, txn, e, istag).await;
                        }
                        return false;
                    }
                },
            }
            // An echo asked for starts once the preview is in (after 100 Continue where the
            // client waits for one: an answer in the preview would end the body there).
            if feed.echo_asked.is_some() && txn.state() != ServerState::Preview {
                let (holdback, done) = feed.echo_asked.take().expect("checked");
                let echo = self.echo_response(&head, istag, &Headers::new());
                let mut started = Ok(());
                if txn.state() == (ServerState::Decide { ieof: false }) {
                    started = txn.send_continue();
                }
                let started = started
                    .and_then(|()| txn.respond(echo))
                    .map_err(BodyError::Protocol);
                if let Err(e) = started {
                    let _ = done.send(Err(e));
                    continue;
                }
                if conn.flush_out(txn).await.is_err() {
                    let _ = done.send(Err(BodyError::Closed));
                    return false;
                }
                feed.echo = Some(Echo {
                    holdback: holdback as u64,
                });
                // Nothing will be echoed from a spool any more.
                spool = None;
                let _ = done.send(Ok(()));
            }
        };
        // The service has answered: the body it may still hold gets no more.
        feed.pieces = None;
        drop(call);
        let reply = match outcome {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("service {:?} failed: {e}", route.options.service);
                if feed.echo.is_some() {
                    return false;
                }
                let res = self.error_response(ErrorStatus::ServerError, istag);
                return self
                    .send(conn, txn, res, ReplyBody::Empty, None, istag)
                    .await;
            }
        };
        if feed.echo.is_some() {
            return match reply {
                Reply::Unmodified(_) => {
                    // Forward what the service did not look at, then the rest as it comes.
                    let rest: Vec<Bytes> = feed.inflight.drain(..).collect();
                    for b in rest {
                        if forward(conn, txn, b).await.is_err() {
                            return false;
                        }
                    }
                    while txn.receiving() {
                        match conn.next_piece(txn).await {
                            Ok(Got::Data(b)) => {
                                if forward(conn, txn, b).await.is_err() {
                                    return false;
                                }
                            }
                            Ok(_) => break,
                            Err(_) => return false,
                        }
                    }
                    if txn.end_response().is_err() || conn.flush_out(txn).await.is_err() {
                        return false;
                    }
                    txn.reuse() == Reuse::Keep
                }
                // A verdict other than "unmodified" after the echo began: the answer can
                // no longer change, so the client must not get a complete one. Closing
                // without the last chunk makes it an error on the client's side.
                _ => false,
            };
        }
        if txn.state() == ServerState::Preview {
            // Answered in the preview: read it to its end (it is short), so that the answer
            // comes where the client expects one and the connection stays usable.
            if let Err(e) = conn.drain(txn, spool.as_mut()).await {
                self.body_error(conn, txn, e, istag).await;
                return false;
            }
        }
        self.answer(conn, txn, &head, reply, spool, istag).await
    }

    /// Answers a body that could not be read (400 or 408) where the connection still works.
    async fn body_error(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        e: BodyError,
        istag: &str,
    ) {
        let status = match e {
            BodyError::Timeout => ErrorStatus::RequestTimeout,
            BodyError::Protocol(_) => ErrorStatus::BadRequest,
            _ => return,
        };
        let _ = txn.respond(self.error_response(status, istag));
        let _ = conn.flush_out(txn).await;
    }

    /// Turns the service's reply into a legal response and sends it.
    async fn answer(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        req: &Request,
        reply: Reply,
        spool: Option<Spool>,
        istag: &str,
    ) -> bool {
        let in_preview = matches!(
            txn.state(),
            ServerState::Decide { .. } | ServerState::Preview
        );
        match reply {
            Reply::Unmodified(extra) if req.allows_204() || in_preview => {
                let mut b = self.server_header(Response::no_content(istag));
                for (n, v) in extra.iter() {
                    b = b.header(&String::from_utf8_lossy(n), v);
                }
                let res = b
                    .build()
                    .unwrap_or_else(|_| self.error_response(ErrorStatus::ServerError, istag));
                self.send(conn, txn, res, ReplyBody::Empty, None, istag)
                    .await
            }
            Reply::Unmodified(extra) => {
                // No 204 allowed: echo the original message, its body from the spool.
                let mut spool = spool;
                if let Err(e) = conn.drain(txn, spool.as_mut()).await {
                    self.body_error(conn, txn, e, istag).await;
                    return false;
                }
                let res = self.echo_response(req, istag, &extra);
                // The spool exists whenever a body came without Allow: 204.
                let body = match spool {
                    Some(s) if req.body.is_some() => match s.into_reader().await {
                        Ok(r) => ReplyBody::Reader(r),
                        Err(e) => {
                            tracing::error!("no echo, answering 500: {e}");
                            let res = self.error_response(ErrorStatus::ServerError, istag);
                            return self
                                .send(conn, txn, res, ReplyBody::Empty, None, istag)
                                .await;
                        }
                    },
                    _ => ReplyBody::Empty,
                };
                self.send(conn, txn, res, body, None, istag).await
            }
            Reply::Respond(res, body) => self.send(conn, txn, res, body, None, istag).await,
            Reply::Partial(res, prefix, from) => {
                self.send(conn, txn, res, ReplyBody::Full(prefix), Some(from), istag)
                    .await
            }
        }
    }

    /// The 200 that gives the client its own message back: the encapsulated heads as they
    /// came (the request head only for REQMOD, RFC 3507 4.9.2), and a body when it had one.
    fn echo_response(&self, req: &Request, istag: &str, extra: &Headers) -> Response {
        let mut res = Response::new(200, "OK");
        if let Some(s) = &self.config.server_name {
            res.headers.append("Server", s);
        }
        res.headers
            .append("ISTag", format!("\"{}\"", istag.trim_matches('"')));
        for (n, v) in extra.iter() {
            res.headers.append(&String::from_utf8_lossy(n), v);
        }
        res.http_request = req.http_request.clone();
        res.http_response = req.http_response.clone();
        if req.method == Method::Respmod {
            res.http_request = None;
        }
        res.body = req.body;
        res
    }

    /// Sends `res` through the transaction (which enforces the rules), then its body, with
    /// the service's ISTag. Returns true when the connection may carry another transaction.
    async fn send(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        res: Response,
        body: ReplyBody,
        original_from: Option<u64>,
        istag: &str,
    ) -> bool {
        let mut res = res;
        if let Some(name) = &self.config.server_name {
            if !res.headers.contains("Server") {
                res.headers.append("Server", name);
            }
        }
        // The service's ISTag, whatever the reply carried: it is declared once, with the
        // service's options.
        res.headers
            .insert("ISTag", format!("\"{}\"", istag.trim_matches('"')));
        if matches!(txn.state(), ServerState::Body | ServerState::Preview) {
            // Answered before the request was read to its end: rather than read on to keep
            // the connection, close it (and say so) once the answer is out.
            txn.abandon_request();
        }
        let checked = match mismatch(&res, &body, original_from.is_none()) {
            Some(e) => {
                tracing::error!("reply not sent, answering 500: {e}");
                Err(e)
            }
            None => Ok(res),
        };
        if let Err(e) = checked.and_then(|res| txn.respond(res)) {
            // The service broke a rule (a 206 without Allow: 206, sections that do not suit
            // the method, a body that does not match its head ...): a server error is all
            // that can be said.
            tracing::debug!("refused response: {e}");
            let _ = txn.respond(self.error_response(ErrorStatus::ServerError, istag));
            let _ = conn.flush_out(txn).await;
            return false;
        }
        if txn.state() == ServerState::Responding {
            let sent = match body {
                ReplyBody::Empty => Ok(()),
                ReplyBody::Full(b) => txn
                    .send_data(b)
                    .map_err(|e| io::Error::other(e.to_string())),
                ReplyBody::Reader(mut r) => {
                    let mut ok = Ok(());
                    loop {
                        let mut buf = BytesMut::with_capacity(64 * 1024);
                        match r.read_buf(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => {
                                if let Err(e) = txn.send_data(buf.freeze()) {
                                    ok = Err(io::Error::other(e.to_string()));
                                    break;
                                }
                                if conn.flush_out(txn).await.is_err() {
                                    return false;
                                }
                            }
                            Err(e) => {
                                ok = Err(e);
                                break;
                            }
                        }
                    }
                    ok
                }
            };
            if sent.is_err() {
                // The head is out; the only honest signal left is to cut the connection.
                let _ = conn.flush_out(txn).await;
                return false;
            }
            let ended = match original_from {
                Some(n) => txn.end_use_original_body(n),
                None => txn.end_response(),
            };
            if ended.is_err() {
                return false;
            }
        }
        if conn.flush_out(txn).await.is_err() {
            return false;
        }
        txn.reuse() == Reuse::Keep
    }
}

/// Sends one piece of a streaming echo.
async fn forward(conn: &mut Conn<'_>, txn: &mut ServerTransaction, b: Bytes) -> io::Result<()> {
    txn.send_data(b)
        .map_err(|e| io::Error::other(e.to_string()))?;
    conn.flush_out(txn).await
}

/// The body is given twice, declared in the response (`with_body()`, its HTTP head's
/// Content-Length) and handed over as `body`: when the two disagree, what would go out is
/// invalid HTTP (a head announcing bytes that never come, or a body the head does not
/// announce), so it does not go out.
fn mismatch(res: &Response, body: &ReplyBody, whole: bool) -> Option<Error> {
    let wrong = |m: String| Some(Error::new(crate::ErrorKind::InvalidMessage, 0, m));
    let declared = res.body.is_some();
    let len = match body {
        ReplyBody::Empty if declared => {
            return wrong("the response declares a body, the reply gives none".into())
        }
        ReplyBody::Full(_) | ReplyBody::Reader(_) if !declared => {
            return wrong("the reply gives a body, the response declares none".into())
        }
        // A 206 prefix is not the whole body its head describes.
        ReplyBody::Full(b) if whole => b.len() as u64,
        _ => return None,
    };
    let head = match (&res.http_response, &res.http_request) {
        (Some(h), _) => &h.headers,
        (None, Some(h)) => &h.headers,
        (None, None) => return None,
    };
    let cl = head
        .get_all("Content-Length")
        .find(|v| crate::decode::decimal(v) != Some(len))?;
    wrong(format!(
        "the encapsulated head says Content-Length: {} but the reply body has {len} bytes",
        String::from_utf8_lossy(cl)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_clock_allows_the_smaller_of_deadline_and_rate() {
        let rate = MinRate {
            bytes_per_sec: 1000,
            grace: Duration::from_secs(2),
        };
        let mut c = ReadClock::new(Some(Duration::from_secs(10)), Some(rate));
        assert_eq!(c.allowance(), Some(Duration::from_secs(2)));
        // 1500 bytes earn 1.5 s on top of the grace; 1 s already waited.
        c.bytes = 1500;
        c.waited = Duration::from_secs(1);
        assert_eq!(c.allowance(), Some(Duration::from_millis(2500)));
        // Far ahead of the rate: the hard limit decides.
        c.bytes = 1_000_000;
        assert_eq!(c.allowance(), Some(Duration::from_secs(9)));
        // Behind the rate: nothing left.
        c.bytes = 0;
        c.waited = Duration::from_secs(3);
        assert_eq!(c.allowance(), Some(Duration::ZERO));
        // No limit, no rate (or a zero rate): unbounded.
        assert_eq!(ReadClock::new(None, None).allowance(), None);
        let zero = MinRate {
            bytes_per_sec: 0,
            grace: Duration::ZERO,
        };
        assert_eq!(ReadClock::new(None, Some(zero)).allowance(), None);
        // Huge counts saturate instead of overflowing.
        let mut c = ReadClock::new(
            None,
            Some(MinRate {
                bytes_per_sec: 1,
                grace: Duration::MAX,
            }),
        );
        c.bytes = u64::MAX;
        assert_eq!(c.allowance(), Some(Duration::MAX));
    }
}
