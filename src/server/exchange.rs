//! One REQMOD or RESPMOD exchange: the service called with an owned [`Body`] fed from the
//! connection as the service reads (paced by what it has taken), `100 Continue` sent when it
//! reads past the preview, and the streaming echo it may ask for passed on as it moves
//! through the body.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;

use super::body::{self, Body, BodyError, Control, Piece, Receiver, Sender};
use super::conn::{Conn, Got};
use super::service::{IncomingRequest, PeerInfo, Reply, ReplyBody, Route};
use super::spool::Spool;
use super::Server;
use crate::builder::ErrorStatus;
use crate::proto::fields::Headers;
use crate::proto::message::Request;
use crate::transaction::{Reuse, ServerState, ServerTransaction};
use crate::BoxError;

/// Body bytes read ahead of the service: the connection reads on while the service has
/// taken all but this many of the bytes handed over (a preview is read whole regardless).
const READ_AHEAD: u64 = 64 * 1024;

/// What polling the service gave: its answer, or a message from its body.
// Lives for one turn of the loop, on the stack: boxing the answer would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    Done(Result<Reply, BoxError>),
    Control(Option<Control>),
}

/// Held-back echo bytes up to this many are copied out of the read buffer (see
/// `Feed::take_upto`); a scanner's holdback is usually about 1 KiB.
const HOLDBACK_COPY: usize = 4 * 1024;

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
    /// A first piece (data, or the end) came out of the decoder: the first chunk-size line
    /// parsed, so a 200 echo can commit without answering a body broken from its start.
    body_started: bool,
    /// Asked for during a preview: starts once the preview is read.
    echo_asked: Option<(usize, tokio::sync::oneshot::Sender<Result<(), BodyError>>)>,
    echo: Option<Echo>,
    pieces: Option<Sender<Piece>>,
}

impl Feed {
    fn hand(&mut self, p: Piece) {
        self.body_started = true;
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
                let rest = if front.len() - want <= HOLDBACK_COPY {
                    // The bytes held back, copied: as a view they would keep the whole read
                    // buffer they came in (16 KiB or more) from being reused by the next read.
                    let rest = Bytes::copy_from_slice(&front[want..]);
                    front.truncate(want);
                    rest
                } else {
                    front.split_off(want)
                };
                self.inflight.push_front(rest);
            }
            self.inflight_start += front.len() as u64;
            out.push(front);
        }
        out
    }
}

/// One exchange under way: the original head (for an echo), the body's feed, the spool an
/// echo after the service may be read back from, and the control channel from the body.
struct Exchange<'a> {
    head: Request,
    istag: &'a str,
    route: &'a Route,
    feed: Feed,
    spool: Option<Spool>,
    ctl_rx: Receiver<Control>,
    ctl_open: bool,
}

/// Why an exchange ended early: the connection is to be closed.
struct Close;

impl Server {
    /// Runs the service on a REQMOD or RESPMOD and answers; true when the connection may
    /// carry another transaction.
    ///
    /// One function per state: the service runs with the body fed to it
    /// ([`Self::run_service`], which hands each step to [`Self::on_control`],
    /// [`Self::on_piece`] and [`Self::start_echo`]), then its reply is answered by
    /// [`Self::service_failed`], [`Self::finish_echo`] or [`Self::finish_answer`].
    pub(crate) async fn exchange(
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
        let (piece_tx, piece_rx, ctl_tx, ctl_rx) = body::link();
        let body = Body::new(has_body.then_some(piece_rx), ctl_tx, previewed);
        let spool = (!head.allows_204() && has_body)
            .then(|| Spool::new(self.config.spool_memory, self.config.spool_dir.clone()));
        conn.let_room_grow(spool.is_none());
        let mut ex = Exchange {
            head,
            istag,
            route,
            feed: Feed {
                sent: 0,
                seen: 0,
                inflight: VecDeque::new(),
                inflight_start: 0,
                echo_possible: has_body,
                body_started: !has_body,
                echo_asked: None,
                echo: None,
                pieces: Some(piece_tx),
            },
            spool,
            ctl_rx,
            ctl_open: true,
        };
        let mut call = route.call(IncomingRequest::new(request, peer, body));
        let outcome = self.run_service(conn, txn, &mut ex, &mut call).await;
        // The service has answered: the body it may still hold gets no more.
        ex.feed.pieces = None;
        drop(call);
        match outcome {
            Err(Close) => false,
            Ok(Err(e)) => self.service_failed(conn, txn, &ex, peer, e).await,
            Ok(Ok(reply)) if ex.feed.echo.is_some() => {
                let unmodified = matches!(reply, Reply::Unmodified(_));
                drop(reply);
                self.finish_echo(conn, txn, &mut ex, unmodified).await
            }
            Ok(Ok(reply)) => self.finish_answer(conn, txn, &mut ex, reply).await,
        }
    }

    /// Polls the service, the messages from its body and the socket until the service
    /// answers.
    async fn run_service(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &mut Exchange<'_>,
        call: &mut super::service::ReplyFuture,
    ) -> Result<Result<Reply, BoxError>, Close> {
        loop {
            let in_preview = txn.state() == ServerState::Preview;
            let feed = &ex.feed;
            let can_read = feed.pieces.is_some()
                && txn.receiving()
                && (in_preview || feed.sent - feed.seen < READ_AHEAD);
            if !can_read {
                // Only the service can move next, maybe not soon (a verdict awaited): what it
                // passed on so far goes out now rather than wait for the next read.
                conn.flush_queued(txn).await.map_err(|_| Close)?;
            }
            // The service first, then what it asked for, and only then the socket: what the
            // service looked at in this poll is passed on (echo) and dropped before the next
            // read, so that read finds the buffer free and reuses it, instead of allocating a
            // new one beside the one the pieces still hold (two buffers per connection).
            let ctl_open = ex.ctl_open;
            let ctl_rx = &mut ex.ctl_rx;
            let service = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = call.as_mut().poll(cx) {
                    return Poll::Ready(Step::Done(r));
                }
                if ctl_open {
                    if let Poll::Ready(c) = ctl_rx.poll_recv(cx) {
                        return Poll::Ready(Step::Control(c));
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                biased;
                step = service => match step {
                    Step::Done(r) => return Ok(r),
                    Step::Control(None) => ex.ctl_open = false,
                    Step::Control(Some(c)) => Self::on_control(conn, txn, ex, c).await?,
                },
                got = conn.next_piece(txn), if can_read => self.on_piece(conn, txn, ex, got).await?,
            }
            // An echo asked for starts once the preview is in (after 100 Continue where the
            // client waits for one: an answer in the preview would end the body there), and
            // once the body's first chunk parsed (a body broken from its first line gets 400,
            // not a 200 cut short).
            if ex.feed.echo_asked.is_some()
                && ex.feed.body_started
                && txn.state() != ServerState::Preview
            {
                self.start_echo(conn, txn, ex).await?;
            }
        }
    }

    /// A message from the service's body: what it has looked at (passed on in an echo),
    /// `100 Continue` wanted, an echo asked for.
    async fn on_control(
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &mut Exchange<'_>,
        c: Control,
    ) -> Result<(), Close> {
        let feed = &mut ex.feed;
        match c {
            Control::Seen(n) => {
                feed.seen = n;
                if let Some(e) = &feed.echo {
                    let upto = n.saturating_sub(e.holdback);
                    for b in feed.take_upto(upto) {
                        forward(conn, txn, b).await.map_err(|_| Close)?;
                    }
                } else if n > 0 && feed.echo_asked.is_none() {
                    feed.echo_possible = false;
                    feed.inflight.clear();
                }
            }
            Control::Continue => {
                if txn.state() == (ServerState::Decide { ieof: false })
                    && (txn.send_continue().is_err() || conn.flush_out(txn).await.is_err())
                {
                    return Err(Close);
                }
            }
            Control::StartEcho { holdback, done } => {
                if !feed.echo_possible {
                    let _ = done.send(Err(BodyError::misuse(
                        "start_echo must come before the body is read",
                    )));
                } else {
                    feed.echo_asked = Some((holdback, done));
                }
            }
        }
        Ok(())
    }

    /// A piece of the body from the wire: kept for a possible echo and handed to the
    /// service; a body that cannot be read is answered (unless an echo already began).
    async fn on_piece(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &mut Exchange<'_>,
        got: Result<Got, BodyError>,
    ) -> Result<(), Close> {
        match got {
            Ok(Got::Data(d)) => {
                if let Some(s) = &mut ex.spool {
                    if let Err(e) = s.push(d.clone()).await {
                        let e = BodyError::Io(Arc::new(e));
                        ex.feed.hand(Piece::Failed(e.clone()));
                        self.body_error(conn, txn, e, ex.istag).await;
                        return Err(Close);
                    }
                }
                ex.feed.hand(Piece::Data(d));
            }
            Ok(Got::PreviewEnd) => ex.feed.hand(Piece::PreviewEnd),
            Ok(Got::End) => ex.feed.hand(Piece::End),
            Err(e) => {
                ex.feed.hand(Piece::Failed(e.clone()));
                if ex.feed.echo.is_none() {
                    // The 200 of an echo is out: closing is the only signal left.
                    self.body_error(conn, txn, e, ex.istag).await;
                }
                return Err(Close);
            }
        }
        Ok(())
    }

    /// Starts the streaming echo the service asked for: its 200 head (after `100 Continue`
    /// where the client waits for one).
    async fn start_echo(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &mut Exchange<'_>,
    ) -> Result<(), Close> {
        let (holdback, done) = ex.feed.echo_asked.take().expect("checked by the caller");
        let fields = &ex.route.echo_fields;
        let echo = self.echo_response(&ex.head, ex.istag, fields, &Headers::new());
        let mut started = Ok(());
        if txn.state() == (ServerState::Decide { ieof: false }) {
            started = txn.send_continue();
        }
        let started = started
            .and_then(|()| conn.respond(txn, echo))
            .map_err(BodyError::Protocol);
        if let Err(e) = started {
            let _ = done.send(Err(e));
            return Ok(());
        }
        if conn.flush_out(txn).await.is_err() {
            let _ = done.send(Err(BodyError::Closed));
            return Err(Close);
        }
        ex.feed.echo = Some(Echo {
            holdback: holdback as u64,
        });
        // Nothing will be echoed from a spool any more.
        ex.spool = None;
        conn.let_room_grow(true);
        let _ = done.send(Ok(()));
        Ok(())
    }

    /// The service failed: 500, or a cut answer when its echo already began.
    async fn service_failed(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &Exchange<'_>,
        peer: PeerInfo,
        e: BoxError,
    ) -> bool {
        conn.failed("service");
        tracing::error!(
            "{} {} from {peer} failed, answering 500: {e}",
            ex.head.method,
            String::from_utf8_lossy(&ex.head.uri)
        );
        if ex.feed.echo.is_some() {
            return false;
        }
        let res = self.error_response(ErrorStatus::ServerError, ex.istag);
        // Boxed: a rare path, which inline would make every exchange's state larger.
        Box::pin(self.send(conn, txn, res, ReplyBody::Empty, None, ex.istag)).await
    }

    /// The service answered during its echo: "unmodified" ends the echo (what it did not
    /// look at, then the rest of the body as it comes); any other verdict can no longer
    /// change the answer under way, so the client must not get a complete one: closing
    /// without the last chunk makes it an error on the client's side.
    async fn finish_echo(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &mut Exchange<'_>,
        unmodified: bool,
    ) -> bool {
        if !unmodified {
            return false;
        }
        let rest: Vec<Bytes> = ex.feed.inflight.drain(..).collect();
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

    /// The service's reply, answered whole (an answer in a preview once the preview is
    /// read to its end). The exchange is lent, not moved: each async layer keeps its own
    /// copy of what it is given by value.
    async fn finish_answer(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        ex: &mut Exchange<'_>,
        reply: Reply,
    ) -> bool {
        if txn.state() == ServerState::Preview {
            // Answered in the preview: read it to its end (it is short), so that the answer
            // comes where the client expects one and the connection stays usable.
            if let Err(e) = conn.drain(txn, ex.spool.as_mut()).await {
                self.body_error(conn, txn, e, ex.istag).await;
                return false;
            }
        }
        conn.release_read_buffer(txn);
        // Boxed: inline, its state (3.8 KiB) made every connection's future as large for the
        // whole exchange (8.1 KiB -> 5.8 KiB), while a streaming echo never gets here.
        let spool = ex.spool.take();
        Box::pin(self.answer(conn, txn, &ex.head, reply, spool, ex.route)).await
    }
}

/// Queues one piece of a streaming echo; written with the pieces after it (see
/// [`Conn::queue_out`]).
async fn forward(conn: &mut Conn<'_>, txn: &mut ServerTransaction, b: Bytes) -> io::Result<()> {
    txn.send_data(b)
        .map_err(|e| io::Error::other(e.to_string()))?;
    conn.queue_out(txn).await
}
