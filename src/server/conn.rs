//! One connection, driven: the wait for its first byte and the TLS handshake, its
//! transactions one after the other (the head read within its deadline, routing, the checks
//! that need no service, OPTIONS), reading with the clocks that bound slow clients, and the
//! refusal of a connection over the limits. The exchange with a service is in `exchange`,
//! the answers in `answer`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use super::body::BodyError;
use super::config::{MinRate, ServerConfig};
use super::service::{PeerInfo, ReplyBody};
use super::slots::Slot;
use super::spool::Spool;
use super::{Server, Stats};
use crate::builder::ErrorStatus;
use crate::decode::{RequestDecoder, RequestEvent};
use crate::error::Error;
use crate::head::Method;
use crate::observe;
use crate::transaction::{ServerEvent, ServerTransaction};
use crate::uri::IcapUri;
use tracing::Instrument;

/// A connection: TCP, TLS, or whatever the user accepted.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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
    /// When the read under way began: a read given up while the service acts (its future
    /// dropped, the bytes left in the socket) goes on at the next call, still charged.
    reading_since: Option<Instant>,
    /// What the transaction under way did, for its span and metrics.
    pub(crate) seen: Seen,
    /// Room made in the read buffer before each read: [`HEAD_ROOM`] until the head is in,
    /// [`BODY_ROOM`] after.
    room: usize,
}

/// Read room while a head is awaited. The decoded head points into the buffer it was read
/// into and keeps that buffer for the whole transaction, while the body is read into another:
/// a small first buffer makes that cost ~1 KiB instead of a body-sized buffer per
/// connection, and an idle connection holds no more. Longer heads take a few more reads (the
/// buffer doubles each time).
const HEAD_ROOM: usize = 1024;

/// Read room inside a body: a read buffer the pieces of which are all passed on before the
/// next read is reused in place, so this is, with the service's own state, the memory of a
/// connection streaming a body.
const BODY_ROOM: usize = 16 * 1024;

/// One transaction as seen on the wire: reset before each, reported after.
#[derive(Default)]
pub(crate) struct Seen {
    /// The first byte of the head.
    started: Option<Instant>,
    method: Option<Method>,
    status: u16,
    verdict: &'static str,
    sent: u64,
    received: u64,
    pub(crate) error: Option<&'static str>,
    span: Option<tracing::Span>,
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
pub(crate) enum Got {
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
        buf.reserve(self.room);
        let n = self.io.read_buf(buf).await?;
        if n > 0 {
            self.seen.received += n as u64;
            self.seen.started.get_or_insert_with(Instant::now);
        }
        Ok(n)
    }

    /// Lets the read buffer go once the request is read to its end with nothing of the next
    /// one buffered: an answer can take a while (an echo read back from its spool file, 64
    /// at once), and the next head is read into a small new buffer anyway (see
    /// [`HEAD_ROOM`]).
    pub(crate) fn release_read_buffer(&mut self, txn: &mut ServerTransaction) {
        if txn.receiving() {
            return;
        }
        let buf = txn.decoder_mut().buffer_mut();
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
    }

    /// Hands the answer's head to the transaction, remembering its status and verdict.
    pub(crate) fn respond(
        &mut self,
        txn: &mut ServerTransaction,
        res: crate::message::Response,
    ) -> Result<(), Error> {
        let status = res.status;
        let verdict = match &self.seen.method {
            Some(m) => observe::verdict(m, &res),
            None if status >= 400 => "error",
            None => "none",
        };
        txn.respond(res)?;
        self.seen.status = status;
        self.seen.verdict = verdict;
        Ok(())
    }

    /// The first error of the transaction is the one counted.
    pub(crate) fn failed(&mut self, kind: &'static str) {
        self.seen.error.get_or_insert(kind);
    }

    /// Records the transaction that just ended (when one began) in its span and the
    /// metrics, and resets for the next.
    fn finish(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        let Some(started) = seen.started else { return };
        let done = observe::Finished {
            method: seen.method.as_ref().map_or("OTHER", observe::method_label),
            status: seen.status,
            verdict: if seen.status == 0 {
                "none"
            } else {
                seen.verdict
            },
            sent: seen.sent,
            received: seen.received,
            duration: started.elapsed(),
            error: seen.error,
        };
        if let Some(span) = &seen.span {
            done.record_span(span);
            if let Some(kind) = seen.error {
                span.in_scope(|| tracing::debug!(kind, "ICAP transaction failed"));
            }
        } else if let Some(kind) = seen.error {
            tracing::debug!(
                kind,
                status = seen.status,
                "ICAP request refused before its head was read"
            );
        }
        done.record_server();
    }

    /// Reads within what the clock allows (and `per_read`), and charges the wait to it.
    async fn read_timed(
        &mut self,
        txn: &mut ServerTransaction,
        per_read: Option<Duration>,
    ) -> Result<usize, ReadFail> {
        let clock = self.clock.unwrap_or(ReadClock::new(None, None));
        let started = *self.reading_since.get_or_insert_with(Instant::now);
        let pending = started.elapsed();
        let allow = match (clock.allowance(), per_read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|d| d.saturating_sub(pending));
        let r = match allow {
            Some(d) => timeout(d, self.read(txn)).await,
            None => Ok(self.read(txn).await),
        };
        self.reading_since = None;
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
        let pending = bytes::Buf::remaining(out) as u64;
        let write = async {
            self.io.write_all_buf(out).await?;
            self.io.flush().await
        };
        let r = match timeout(self.cfg.write_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        };
        match &r {
            Ok(()) => self.seen.sent += pending,
            Err(_) => self.failed("io"),
        }
        r
    }

    /// The next piece of a body from the wire. Cancel-safe: what was read stays in the
    /// decoder.
    pub(crate) async fn next_piece(
        &mut self,
        txn: &mut ServerTransaction,
    ) -> Result<Got, BodyError> {
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
    pub(crate) async fn drain(
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

impl Server {
    /// Answers 503 to a connection over the limits, so that the client can read it: after
    /// the TLS handshake on a TLS port, and reading (and dropping) what it sends until it
    /// closes, so that a client still writing its request is not reset before it reads the
    /// answer. Bounded by [`ServerConfig::refusal_timeout`] and
    /// [`ServerConfig::refusal_drain`].
    pub(crate) async fn refuse(&self, tcp: TcpStream) {
        let deadline = Instant::now() + self.config.refusal_timeout;
        let mut io: Box<dyn Io> = match self.tls_acceptor() {
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
                    Ok(Some(RequestEvent::End(_) | RequestEvent::PreviewEnd)) => break 'drain,
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
        let (io, secure): (Box<dyn Io>, bool) = match self.tls_acceptor() {
            None => (Box::new(tcp), false),
            Some(acceptor) => {
                match timeout(self.config.tls_handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => (Box::new(tls), true),
                    Ok(Err(e)) => {
                        tracing::debug!(
                            kind = "tls_handshake",
                            "TLS handshake with {peer} failed: {e}"
                        );
                        observe::server_error("tls_handshake");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(
                            kind = "tls_handshake",
                            "TLS handshake with {peer} timed out"
                        );
                        observe::server_error("tls_handshake");
                        return;
                    }
                }
            }
        };
        let peer = PeerInfo::new(peer).secure(secure);
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
            reading_since: None,
            seen: Seen::default(),
            room: HEAD_ROOM,
        };
        observe::server_connections(1.0);
        let mut decoder = RequestDecoder::new(self.config.limits);
        loop {
            let txn = ServerTransaction::new(decoder);
            let next = self.transaction(&mut conn, txn, peer, stop.clone()).await;
            conn.finish();
            match next {
                Some(d) => decoder = d,
                None => break,
            }
        }
        observe::server_connections(-1.0);
        let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
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
        conn.reading_since = None;
        conn.room = HEAD_ROOM;
        let buf = txn.decoder_mut().buffer_mut();
        if buf.is_empty() && buf.capacity() > 4 * HEAD_ROOM {
            // The last body's buffer: let it go rather than read the next head into it (see
            // HEAD_ROOM); a connection waiting for its next request then holds none.
            *buf = BytesMut::new();
        }
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
                    conn.failed("bad_request");
                    return self
                        .fail_with(conn, &mut txn, ErrorStatus::BadRequest, istag)
                        .await;
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
                conn.seen.started.get_or_insert_with(Instant::now);
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
                Err(ReadFail::Io(_)) => {
                    conn.failed("io");
                    return None;
                }
                Err(ReadFail::Timeout) => {
                    conn.failed("timeout");
                    return self
                        .fail_with(conn, &mut txn, ErrorStatus::RequestTimeout, istag)
                        .await;
                }
            }
        };
        conn.room = BODY_ROOM;
        // The body has its own clock, started now.
        conn.clock = Some(ReadClock::new(
            self.config.body_timeout,
            self.config.min_rate,
        ));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let path = IcapUri::parse(&String::from_utf8_lossy(&request.uri))
            .ok()
            .map(|u| u.path().trim_start_matches('/').to_string());
        let span = tracing::info_span!(
            "icap.server.transaction",
            peer = %peer,
            service = path.as_deref().unwrap_or(""),
            method = observe::method_label(&request.method),
            status = tracing::field::Empty,
            verdict = tracing::field::Empty,
            bytes_sent = tracing::field::Empty,
            bytes_received = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        conn.seen.method = Some(request.method.clone());
        conn.seen.span = Some(span.clone());
        let keep = self
            .after_head(conn, &mut txn, request, path, peer)
            .instrument(span)
            .await;
        keep.then(|| txn.into_decoder())
    }

    /// A transaction from its head on: routing, the checks that need no service, OPTIONS,
    /// or the service. True when the connection may carry another transaction.
    async fn after_head(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        request: crate::message::Request,
        path: Option<String>,
        peer: PeerInfo,
    ) -> bool {
        let istag = &self.config.istag;
        // 2. Routing and the checks that need no service code.
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
            self.fail_with(conn, txn, status, istag).await;
            return false;
        }
        let route = route.expect("refused above when missing");

        // 3. OPTIONS is answered from the declared options (503 while the service says it
        // cannot serve).
        if request.method == Method::Options {
            // An OPTIONS body (rare) is read and dropped before answering.
            if let Err(e) = conn.drain(txn, None).await {
                self.body_error(conn, txn, e, istag).await;
                return false;
            }
            let res = if route.is_available() {
                route
                    .options
                    .response_builder()
                    .map(|b| self.server_header(b))
                    .and_then(|b| b.build())
                    .unwrap_or_else(|_| self.error_response(ErrorStatus::ServerError, istag))
            } else {
                self.error_response(ErrorStatus::ServiceOverloaded, istag)
            };
            return self
                .send(conn, txn, res, ReplyBody::Empty, None, istag)
                .await;
        }

        // 4. REQMOD / RESPMOD: the service, with the body fed as it reads.
        self.exchange(conn, txn, &route, request, peer, istag).await
    }
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
