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
use crate::observe;
use crate::proto::decode::{RequestDecoder, RequestEvent};
use crate::proto::error::Error;
use crate::proto::head::Method;
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
    /// [`BODY_ROOM`] after, growing to [`BODY_ROOM_MAX`] while reads fill it.
    room: usize,
    /// Whether the body's read room may grow: not while its pieces are kept (a spool for an
    /// echo after the service), as each kept piece holds on to the whole buffer it was read
    /// into.
    room_grows: bool,
}

/// Read room while a connection at rest awaits a head. The decoded head points into the
/// buffer it was read into and keeps that buffer for the whole transaction, while the body is
/// read into another: a small first buffer makes that cost ~1 KiB instead of a body-sized
/// buffer per connection, and an idle connection holds no more. Longer heads take a few more
/// reads (the buffer doubles each time).
const HEAD_ROOM: usize = 1024;

/// Read room for a head on a busy connection (one that served a request less than
/// [`IDLE_SETTLE`] ago, or whose head has begun): a small request comes whole in one read,
/// head and body, where [`HEAD_ROOM`] took two; the buffer lives as long as the transaction.
const HEAD_ROOM_BUSY: usize = 4 * 1024;

/// How long a connection waits for its next request with the decoder of the last one (and
/// the room it keeps for the next heads) before it lets that go: requests that follow each
/// other closely reuse it, a connection at rest holds only a small head buffer.
const IDLE_SETTLE: Duration = Duration::from_millis(100);

/// Read room at the start of a body: a read buffer the pieces of which are all passed on
/// before the next read is reused in place, so this is, with the service's own state, the
/// memory of a connection streaming a body.
const BODY_ROOM: usize = 16 * 1024;

/// The most read room a body grows to: a read that fills the room doubles it, so a body that
/// arrives faster than it is passed on is read in fewer, larger reads (32 per MiB at most
/// once grown), while a slow one keeps the small buffer.
const BODY_ROOM_MAX: usize = 64 * 1024;

/// Answer bytes queued before they are written without waiting for a read that would block:
/// pieces of an echo are queued as the service passes them, and written together before the
/// connection next waits on the client (see [`Conn::next_piece`]) or once this much is queued.
const WRITE_HIGH: usize = 64 * 1024;

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

/// How a connection's busy spell ended (see [`Server::busy`]).
enum Busy {
    /// The connection is to be closed.
    Closed,
    /// No request came within [`IDLE_SETTLE`]: the connection waits on at rest until the
    /// deadline, with a fresh decoder.
    Settled(Instant),
}

/// What waiting for a head gave.
// Lives for one step, on the stack: boxing the head would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// The head (from [`Server::wait_idle`]: `None`, bytes came, read on).
    Request(Option<crate::proto::message::Request>),
    /// Nothing within [`IDLE_SETTLE`]: the idle deadline.
    Settled(Instant),
    Closed,
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
        self.read_into(txn.decoder_mut().buffer_mut()).await
    }

    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(self.room);
        let n = self.io.read_buf(buf).await?;
        if n > 0 {
            self.seen.received += n as u64;
            self.seen.started.get_or_insert_with(Instant::now);
        }
        if self.room_grows && self.room >= BODY_ROOM && n >= self.room {
            self.room = (self.room * 2).min(BODY_ROOM_MAX);
        }
        Ok(n)
    }

    /// Lets the body's read room grow (see [`BODY_ROOM_MAX`]), or keeps it as it is.
    pub(crate) fn let_room_grow(&mut self, grow: bool) {
        self.room_grows = grow;
    }

    /// Writes the queued answer bytes once they reach [`WRITE_HIGH`]; below that they wait
    /// for more, up to the next read that finds nothing buffered.
    pub(crate) async fn queue_out(&mut self, txn: &mut ServerTransaction) -> io::Result<()> {
        if bytes::Buf::remaining(txn.outgoing()) >= WRITE_HIGH {
            self.flush_out(txn).await
        } else {
            Ok(())
        }
    }

    /// Writes what is queued, if anything.
    pub(crate) async fn flush_queued(&mut self, txn: &mut ServerTransaction) -> io::Result<()> {
        if bytes::Buf::has_remaining(txn.outgoing()) {
            self.flush_out(txn).await
        } else {
            Ok(())
        }
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
        res: crate::proto::message::Response,
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
        if let (Some(slot), Some(c)) = (&self.slot, &self.clock) {
            slot.reading(c.waited + pending, c.bytes, true);
        }
        let evicted = self.slot.as_ref().map(|s| s.eviction());
        let on_evicted = async {
            match evicted {
                Some(e) => e.await,
                None => std::future::pending().await,
            }
        };
        // Closed to make room (behind the minimum rate while the server is full): answered
        // like a client that fell behind its deadline. `None`: out of time.
        let r = tokio::select! {
            r = async {
                match allow {
                    Some(d) => timeout(d, self.read(txn)).await.ok(),
                    None => Some(self.read(txn).await),
                }
            } => r,
            _ = on_evicted => None,
        };
        self.reading_since = None;
        if let Some(c) = &mut self.clock {
            c.waited += started.elapsed();
            if let Some(Ok(n)) = &r {
                c.bytes += *n as u64;
            }
            if let Some(slot) = &self.slot {
                slot.reading(c.waited, c.bytes, false);
            }
        }
        match r {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => Err(ReadFail::Io(e)),
            None => {
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
            // Nothing buffered is left to pass on: what was queued goes out now, in one
            // write, before waiting on the client.
            self.flush_queued(txn)
                .await
                .map_err(|e| BodyError::Io(Arc::new(e)))?;
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
                // A handshake's bytes are not counted: one that takes longer than a second is
                // behind, and makes room first when the server is full.
                slot.reading(Duration::ZERO, 0, true);
                // Boxed: a handshake's state (rustls's connection, its buffers) is large, and
                // inline it would size every connection's task, idle ones included.
                let accept = Box::pin(timeout(
                    self.config.tls_handshake_timeout,
                    acceptor.accept(tcp),
                ));
                let handshake = tokio::select! {
                    r = accept => r,
                    _ = slot.evicted() => {
                        tracing::debug!(
                            kind = "tls_handshake",
                            "TLS handshake with {peer} closed to make room"
                        );
                        return;
                    }
                };
                if !slot.busy() {
                    return;
                }
                match handshake {
                    Ok(Ok(tls)) => (Box::new(tls), true),
                    Ok(Err(e)) => {
                        tracing::debug!(
                            kind = "tls_handshake",
                            "TLS handshake with {peer} failed: {}",
                            crate::tls::describe_handshake_error(&e)
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
            room_grows: false,
        };
        observe::server_connections(1.0);
        let mut decoder = RequestDecoder::new(self.config.limits);
        let mut stop = stop;
        loop {
            // Boxed: the state of a transaction under way (about 10 KiB) is held only while the
            // connection is busy, not by every connection at rest. Boxed once per busy spell,
            // not per transaction: moving that state into a new box is a copy of all of it.
            match Box::pin(self.busy(&mut conn, decoder, peer, stop.clone())).await {
                Busy::Closed => break,
                Busy::Settled(deadline) => {
                    decoder = RequestDecoder::new(self.config.limits);
                    if !self
                        .wait_settled(&mut conn, &mut decoder, &mut stop, deadline)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        observe::server_connections(-1.0);
        let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    }

    /// Runs transactions one after the other while they follow each other closely: until
    /// the connection ends, or has waited [`IDLE_SETTLE`] for its next request.
    ///
    /// One function per state, as each transaction moves through them: [`Self::begin`],
    /// then [`Self::read_head`] (waiting idle in [`Self::wait_idle`], reading the head
    /// against its clock in [`Self::read_head_bytes`]), then [`Self::start_head`] and
    /// [`Self::after_head`]. They are awaited here, not through a function per transaction:
    /// each async layer stores (and moves) the whole state of the one it awaits.
    async fn busy(
        &self,
        conn: &mut Conn<'_>,
        mut decoder: RequestDecoder,
        peer: PeerInfo,
        stop: watch::Receiver<bool>,
    ) -> Busy {
        // The service path of the last request URI: the same on most requests of a
        // connection, so parsed once.
        let mut last_uri: Option<(Bytes, Option<String>)> = None;
        loop {
            let mut txn = ServerTransaction::new(decoder);
            Self::begin(conn, &mut txn);
            let request = match self.read_head(conn, &mut txn, stop.clone()).await {
                Head::Request(Some(r)) => r,
                Head::Request(None) | Head::Closed => {
                    conn.finish();
                    return Busy::Closed;
                }
                Head::Settled(deadline) => {
                    conn.finish();
                    return Busy::Settled(deadline);
                }
            };
            let path = match &last_uri {
                Some((uri, path)) if *uri == request.uri => path.clone(),
                _ => {
                    let path = IcapUri::parse(&String::from_utf8_lossy(&request.uri))
                        .ok()
                        .map(|u| u.path().trim_start_matches('/').to_string());
                    last_uri = Some((request.uri.clone(), path.clone()));
                    path
                }
            };
            let span = self.start_head(conn, &request, path.as_deref(), peer);
            let keep = self
                .after_head(conn, &mut txn, request, path, peer)
                .instrument(span)
                .await;
            conn.finish();
            if !keep {
                return Busy::Closed;
            }
            decoder = txn.into_decoder();
        }
    }

    /// Resets the connection's clocks for a new transaction, and lets the last body's read
    /// buffer go rather than read the next head into it (see [`HEAD_ROOM`]): a connection
    /// waiting for its next request then holds none.
    fn begin(conn: &mut Conn<'_>, txn: &mut ServerTransaction) {
        conn.clock = None;
        conn.reading_since = None;
        conn.room = HEAD_ROOM_BUSY;
        let buf = txn.decoder_mut().buffer_mut();
        if buf.is_empty() {
            // Even a small remaining capacity may be the tail of a body-sized allocation
            // whose pieces went to the service: a view keeps all of it.
            *buf = BytesMut::new();
        }
    }

    /// The request head: waits idle for its first byte, then reads it within head_timeout
    /// (and the minimum rate) from that byte, empty lines before it included.
    /// [`Head::Closed`] when the connection ends instead (closed, timed out and answered,
    /// stopped, evicted).
    async fn read_head(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        mut stop: watch::Receiver<bool>,
    ) -> Head {
        let istag = &self.config.istag;
        loop {
            match txn.poll_event() {
                Ok(Some(ServerEvent::Request(r))) => return Head::Request(Some(r)),
                Ok(Some(ev)) => {
                    // The decoder gives a head first; anything else is a bug to report to
                    // the client as ours, not a reason to bring the server down.
                    tracing::error!("unexpected event before the request head: {ev:?}");
                    self.fail_with(conn, txn, ErrorStatus::ServerError, istag)
                        .await;
                    return Head::Closed;
                }
                Ok(None) => {}
                Err(_) => {
                    conn.failed("bad_request");
                    self.fail_with(conn, txn, ErrorStatus::BadRequest, istag)
                        .await;
                    return Head::Closed;
                }
            }
            if conn.clock.is_none() && txn.decoder_mut().buffered().is_empty() {
                // Idle: between requests (or before the first), nothing of the next one here.
                match self.wait_idle(conn, txn, &mut stop).await {
                    Head::Request(_) => continue,
                    other => return other,
                }
            }
            if conn.clock.is_none() {
                conn.seen.started.get_or_insert_with(Instant::now);
                // Pipelined (or read while settled): the next head is already (partly) here.
                conn.clock = Some(self.head_clock());
            }
            if self.read_head_bytes(conn, txn).await.is_none() {
                return Head::Closed;
            }
        }
    }

    fn head_clock(&self) -> ReadClock {
        ReadClock::new(Some(self.config.head_timeout), self.config.min_rate)
    }

    /// Waits, idle, for the first bytes of a request, at most [`IDLE_SETTLE`], then starts
    /// the head's clock. [`Head::Request`] (with no request: read on) when bytes came,
    /// [`Head::Settled`] with the idle deadline when none did (the rest of the wait is
    /// [`Self::wait_settled`]'s), [`Head::Closed`] when the connection ends instead.
    async fn wait_idle(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        stop: &mut watch::Receiver<bool>,
    ) -> Head {
        if *stop.borrow() || !conn.slot_idle() {
            return Head::Closed;
        }
        let evicted = conn.slot.as_ref().map(|s| s.eviction());
        let on_evicted = async {
            match evicted {
                Some(e) => e.await,
                None => std::future::pending().await,
            }
        };
        let deadline = Instant::now() + self.config.idle_timeout;
        let until = deadline.min(Instant::now() + IDLE_SETTLE);
        let read = tokio::select! {
            r = timeout_at(until, conn.read(txn)) => r,
            _ = stop.changed() => return Head::Closed,
            _ = on_evicted => return Head::Closed,
        };
        match read {
            Ok(Ok(0)) => {
                let _ = txn.on_eof();
                return Head::Closed;
            }
            Ok(Ok(_)) => {}
            Err(_) if until < deadline => {
                // No request followed at once: wait on without the decoder's spare room (its
                // header arena, a block kept for the next heads), its read buffer and the
                // busy connection's state (the caller starts a new decoder), so that a
                // connection at rest holds little. (The read is cancel-safe: nothing was read.)
                return Head::Settled(deadline);
            }
            Ok(Err(_)) | Err(_) => return Head::Closed,
        }
        if !conn.slot_busy() {
            // Closed to make room just as the request began.
            return Head::Closed;
        }
        conn.clock = Some(self.head_clock());
        Head::Request(None)
    }

    /// The rest of an idle wait (see [`Self::wait_idle`]), with a small read buffer and
    /// outside the busy connection's box, until the first bytes of a request come (true) or
    /// the connection ends (false). The head's clock starts with the next transaction.
    async fn wait_settled(
        &self,
        conn: &mut Conn<'_>,
        decoder: &mut RequestDecoder,
        stop: &mut watch::Receiver<bool>,
        deadline: Instant,
    ) -> bool {
        let evicted = conn.slot.as_ref().map(|s| s.eviction());
        let on_evicted = async {
            match evicted {
                Some(e) => e.await,
                None => std::future::pending().await,
            }
        };
        conn.room = HEAD_ROOM;
        let read = tokio::select! {
            r = timeout_at(deadline, conn.read_into(decoder.buffer_mut())) => r,
            _ = stop.changed() => return false,
            _ = on_evicted => return false,
        };
        // Closed, failed or timed out: nothing to answer.
        matches!(read, Ok(Ok(n)) if n > 0) && conn.slot_busy()
    }

    /// Reads more of a head against its clock; a head too slow is answered 408. `None`
    /// when the connection ends.
    async fn read_head_bytes(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
    ) -> Option<()> {
        match conn.read_timed(txn, None).await {
            Ok(0) => {
                let _ = txn.on_eof();
                None
            }
            Ok(_) => Some(()),
            Err(ReadFail::Io(_)) => {
                conn.failed("io");
                None
            }
            Err(ReadFail::Timeout) => {
                conn.failed("timeout");
                let istag = &self.config.istag;
                self.fail_with(conn, txn, ErrorStatus::RequestTimeout, istag)
                    .await;
                None
            }
        }
    }

    /// A head is in: starts the body's clock and returns the transaction's span.
    fn start_head(
        &self,
        conn: &mut Conn<'_>,
        request: &crate::proto::message::Request,
        path: Option<&str>,
        peer: PeerInfo,
    ) -> tracing::Span {
        conn.room = BODY_ROOM;
        conn.clock = Some(ReadClock::new(
            self.config.body_timeout,
            self.config.min_rate,
        ));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "icap.server.transaction",
            peer = %peer,
            service = path.unwrap_or(""),
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
        span
    }

    /// A transaction from its head on: routing, the checks that need no service, OPTIONS,
    /// or the service. True when the connection may carry another transaction.
    async fn after_head(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        request: crate::proto::message::Request,
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
