//! The connection driver: runs one [`ClientTransaction`] over one connection, reading the
//! answer while the request body goes out, within the attempt's deadline.
//!
//! Writes drain the transaction's own [`Encoder`](crate::Encoder) through its
//! [`bytes::Buf`] with vectored writes (head, chunk size lines and body `Bytes` in one
//! system call), so no second write queue exists. Reads go into the decoder's buffer. The
//! answer goes to an [`Out`]: collected into an [`Exchange`](super::Exchange)'s pieces, or
//! streamed to an [`AnswerBody`](super::AnswerBody).

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::timeout_at;

use crate::client::ClientError;
use crate::proto::chunked::LastChunk;
use crate::proto::error::Error;
use crate::proto::message::{Request, Response};
use crate::transaction::{ClientEvent, ClientTransaction, RequestBody, Reuse};

use super::body::{Piece, PieceSender, Source, READ_SIZE};
use super::digest::BodyHash;
use super::pool::{tls_failure, Conn, Endpoint, Io};
use super::Inner;
use crate::observe;
use tracing::Instrument;

/// Bytes queued in the encoder below which more body is read first: at most about two
/// reads' worth wait to be written.
const WRITE_BATCH: usize = READ_SIZE;

/// Buffers handed to one vectored write.
const IOV: usize = 64;

/// Where an answer goes. One lives per attempt, on the stack: boxing the large variant
/// would cost an allocation per call for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Out {
    Collect(Collect),
    Stream(StreamOut),
}

/// An answer kept in memory: the final head and the start of the body, with the length and
/// hash of all of it and of the body sent.
pub(crate) struct Collect {
    pub(crate) response: Option<Response>,
    pub(crate) kept: BytesMut,
    keep: usize,
    pub(crate) truncated: bool,
    got: BodyHash,
    got_any: bool,
    sent: BodyHash,
}

impl Collect {
    pub(crate) fn new(keep: usize) -> Self {
        Collect {
            response: None,
            kept: BytesMut::new(),
            keep,
            truncated: false,
            got: BodyHash::default(),
            got_any: false,
            sent: BodyHash::default(),
        }
    }

    /// Length and hash of the returned body, when one came.
    pub(crate) fn body_digest(&self) -> Option<(u64, u64)> {
        let has_body = self.response.as_ref().is_some_and(|r| r.body.is_some());
        (self.got_any || has_body).then(|| self.got.finish())
    }

    pub(crate) fn sent_digest(&self) -> (u64, u64) {
        self.sent.finish()
    }
}

/// Head result of a streamed answer: the head, or why none came and whether any answer
/// byte had (a stale pooled connection is retried when none had).
pub(crate) type HeadResult = Result<Response, (ClientError, bool)>;

/// An answer handed on as it arrives: the head once, then the body's pieces.
pub(crate) struct StreamOut {
    pub(crate) head: Option<oneshot::Sender<HeadResult>>,
    pub(crate) tx: PieceSender,
}

/// How a transaction ended well.
pub(crate) struct Done {
    /// The connection, when it can serve another transaction.
    pub(crate) conn: Option<Conn>,
    pub(crate) use_original_body: Option<u64>,
    pub(crate) tls_version: Option<String>,
    pub(crate) elapsed: Duration,
}

/// What the wait for the socket brought.
enum Step {
    Wrote(usize),
    WriteFailed,
    Read(io::Result<usize>),
}

/// What one transaction did on the wire, for its span and metrics.
#[derive(Default)]
struct Seen {
    status: u16,
    verdict: &'static str,
    sent: u64,
    received: u64,
}

impl Inner {
    /// Runs one transaction on `conn`, within `until`, in a span of its own
    /// (`icap.client.transaction`: server, service, method, status, verdict, bytes each
    /// way, duration, the error's kind), and records it in the metrics. On failure, says
    /// whether no byte of an answer had arrived (a stale pooled connection).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &self,
        ep: &Endpoint,
        conn: Conn,
        req: &Request,
        reader: Option<Source>,
        rb: RequestBody,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        out: &mut Out,
        until: Instant,
    ) -> Result<Done, (ClientError, bool)> {
        let method = observe::method_label(&req.method);
        let span = tracing::info_span!(
            "icap.client.transaction",
            server = %ep.uri,
            service = ep.uri.path().trim_start_matches('/'),
            method,
            status = tracing::field::Empty,
            verdict = tracing::field::Empty,
            bytes_sent = tracing::field::Empty,
            bytes_received = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let start = Instant::now();
        let mut seen = Seen {
            verdict: "none",
            ..Seen::default()
        };
        let r = self
            .run_transaction(ep, conn, req, reader, rb, progress, out, until, &mut seen)
            .instrument(span.clone())
            .await;
        let error = r.as_ref().err().map(|(e, _)| observe::client_error_kind(e));
        if let Err((e, _)) = &r {
            span.in_scope(|| tracing::warn!(kind = error, "ICAP transaction failed: {e}"));
        }
        let done = observe::Finished {
            method,
            status: seen.status,
            verdict: seen.verdict,
            sent: seen.sent,
            received: seen.received,
            duration: start.elapsed(),
            error,
        };
        done.record_span(&span);
        done.record_client();
        ep.observe(ep.is_down());
        r
    }

    /// Sets up the transaction on the connection, drives it to the answer's end within
    /// `until`, and gives the connection back when it can serve another.
    #[allow(clippy::too_many_arguments)]
    async fn run_transaction(
        &self,
        ep: &Endpoint,
        conn: Conn,
        req: &Request,
        reader: Option<Source>,
        rb: RequestBody,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        out: &mut Out,
        until: Instant,
        seen: &mut Seen,
    ) -> Result<Done, (ClientError, bool)> {
        let Conn {
            io,
            decoder,
            tls_version,
            permit,
            ..
        } = conn;
        let tx =
            ClientTransaction::new(req, rb, decoder).map_err(|e| (ClientError::Config(e), true))?;
        let start = Instant::now();
        let mut wire = Wire {
            server: ep.name(),
            had_identity: self.cfg.tls.identity.is_some(),
            max_answer: self.cfg.max_answer,
            io,
            tx,
            req,
            source_done: reader.is_none(),
            reader,
            progress,
            out,
            seen,
            write_failed: false,
            body_sent: 0,
        };
        let driven = timeout_at(until.into(), wire.drive()).await;
        let last = match driven {
            Err(_) => {
                let e = ClientError::Timeout {
                    server: wire.server,
                    phase: "transaction",
                };
                return Err((e, false));
            }
            Ok(r) => r?,
        };
        let reuse = wire.tx.reuse() == Reuse::Keep && !wire.write_failed;
        let Wire { io, tx, .. } = wire;
        let conn = reuse.then(|| Conn {
            io,
            decoder: tx.into_decoder(),
            tls_version: tls_version.clone(),
            permit,
        });
        Ok(Done {
            conn,
            use_original_body: last.use_original_body,
            tls_version,
            elapsed: start.elapsed(),
        })
    }
}

/// One transaction under way on its connection: what its steps share. Each state of the
/// loop is one method: take the answer's events, read body to send, flush, wait for the
/// socket, account for what the wait brought.
struct Wire<'a> {
    server: String,
    had_identity: bool,
    max_answer: u64,
    io: Box<dyn Io>,
    tx: ClientTransaction,
    req: &'a Request,
    reader: Option<Source>,
    progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
    out: &'a mut Out,
    seen: &'a mut Seen,
    /// The server stopped taking bytes (it may have answered and closed): nothing more is
    /// written, its answer is still read.
    write_failed: bool,
    source_done: bool,
    body_sent: u64,
}

/// A failure with whether no byte of an answer had arrived (a stale pooled connection is
/// retried then).
type Failed = (ClientError, bool);

impl Wire<'_> {
    /// Runs the transaction to the answer's last chunk.
    async fn drive(&mut self) -> Result<LastChunk, Failed> {
        loop {
            // Answers first: they may stop the sending.
            if let Some(last) = self.take_answer().await? {
                return Ok(last);
            }
            if !self.write_failed {
                // Body is read while less than a read's worth waits to be written.
                if self.tx.outgoing().remaining() < WRITE_BATCH
                    && self.tx.wants_body()
                    && !self.source_done
                {
                    self.read_body().await?;
                    continue;
                }
                if !self.tx.outgoing().has_remaining() {
                    self.flush().await?;
                }
            }
            let step = self.wait().await;
            self.took(step)?;
        }
    }

    /// Hands on every event the bytes read so far make: the head, body pieces, the end.
    async fn take_answer(&mut self) -> Result<Option<LastChunk>, Failed> {
        while let Some(ev) = self.tx.poll_event().map_err(|e| self.fail(self.proto(e)))? {
            match ev {
                ClientEvent::Continue => {}
                ClientEvent::Unmodified(r) | ClientEvent::Response(r) => self.head(r)?,
                ClientEvent::Data(d) => self.data(d).await?,
                // A stream's end is told by the caller of `run`, once the connection is
                // back in the pool.
                ClientEvent::End(last) => return Ok(Some(last)),
            }
        }
        Ok(None)
    }

    fn head(&mut self, r: Response) -> Result<(), Failed> {
        self.seen.status = r.status;
        self.seen.verdict = observe::verdict(&self.req.method, &r);
        match self.out {
            Out::Collect(c) => c.response = Some(r),
            Out::Stream(s) => {
                if let Some(h) = s.head.take() {
                    // A caller that gave up on the head gets no body either.
                    h.send(Ok(r)).map_err(|_| (dropped(), false))?;
                }
            }
        }
        Ok(())
    }

    async fn data(&mut self, d: Bytes) -> Result<(), Failed> {
        match self.out {
            Out::Collect(c) => {
                c.got_any = true;
                c.got.update(&d);
                let n = c.keep.saturating_sub(c.kept.len()).min(d.len());
                c.kept.extend_from_slice(&d[..n]);
                c.truncated |= n < d.len();
            }
            Out::Stream(s) => {
                s.tx.send(Ok(Piece::Data(d)))
                    .await
                    .map_err(|_| (dropped(), false))?;
            }
        }
        Ok(())
    }

    /// The next piece of the body to send, into the encoder (or its end).
    async fn read_body(&mut self) -> Result<(), Failed> {
        let r = self
            .reader
            .as_mut()
            .expect("a body source when a body is wanted");
        let early = self.seen.received == 0;
        match r.next().await.map_err(|e| (ClientError::Body(e), early))? {
            None => {
                self.source_done = true;
                self.tx
                    .end_body()
                    .map_err(|e| (body_changed(e), self.seen.received == 0))?;
            }
            Some(chunk) => {
                self.body_sent += chunk.len() as u64;
                if let Out::Collect(c) = self.out {
                    c.sent.update(&chunk);
                }
                self.tx
                    .send_body(chunk)
                    .map_err(|e| (body_changed(e), self.seen.received == 0))?;
                if let Some(p) = self.progress {
                    p(self.body_sent);
                }
            }
        }
        Ok(())
    }

    /// Everything queued is written: pushes it out before waiting.
    async fn flush(&mut self) -> Result<(), Failed> {
        let io = &mut self.io;
        let r = poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await;
        r.map_err(|e| self.fail(self.io_err(e)))
    }

    /// Writes what is queued, or reads, whichever the socket allows first.
    async fn wait(&mut self) -> Step {
        let Wire {
            io,
            tx,
            write_failed,
            ..
        } = self;
        let write_failed = *write_failed;
        poll_fn(|cx| {
            if !write_failed && tx.outgoing().has_remaining() {
                let enc = tx.outgoing();
                let mut iov = [IoSlice::new(&[]); IOV];
                let k = enc.chunks_vectored(&mut iov);
                match Pin::new(&mut *io).poll_write_vectored(cx, &iov[..k]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        enc.advance(n);
                        return Poll::Ready(Step::Wrote(n));
                    }
                    Poll::Ready(_) => return Poll::Ready(Step::WriteFailed),
                    Poll::Pending => {}
                }
            }
            let buf = tx.decoder_mut().buffer_mut();
            buf.reserve(64 * 1024);
            // Polled once and dropped: reading into a buffer is cancel-safe.
            pin!(io.read_buf(buf)).poll(cx).map(Step::Read)
        })
        .await
    }

    /// Accounts for what the wait brought.
    fn took(&mut self, step: Step) -> Result<(), Failed> {
        match step {
            Step::Wrote(n) => self.seen.sent += n as u64,
            // The server may have answered and closed (c-icap does after a 404): stop
            // writing, keep reading its answer.
            Step::WriteFailed => {
                self.write_failed = true;
                let n = self.tx.outgoing().remaining();
                self.tx.outgoing().advance(n);
            }
            Step::Read(Ok(0)) => {
                self.tx.on_eof().map_err(|e| self.fail(self.proto(e)))?;
            }
            Step::Read(Ok(n)) => {
                self.seen.received += n as u64;
                // Relative to what was sent, so an echo of any file fits.
                let limit = self.max_answer.saturating_add(self.body_sent);
                if self.seen.received > limit {
                    let e = ClientError::AnswerTooLarge {
                        server: self.server.clone(),
                        limit,
                        read: self.seen.received,
                    };
                    return Err((e, false));
                }
            }
            Step::Read(Err(e)) => return Err(self.fail(self.io_err(e))),
        }
        Ok(())
    }

    /// `e` with whether no byte of an answer had arrived yet.
    fn fail(&self, e: ClientError) -> Failed {
        (e, self.seen.received == 0)
    }

    fn io_err(&self, e: io::Error) -> ClientError {
        match tls_failure(&e, self.had_identity) {
            Some((failure, message)) => ClientError::Tls {
                server: self.server.clone(),
                failure,
                message,
            },
            None => ClientError::Io {
                server: self.server.clone(),
                source: e,
            },
        }
    }

    fn proto(&self, e: Error) -> ClientError {
        ClientError::Protocol {
            server: self.server.clone(),
            source: e,
        }
    }
}

/// Only a body that is not the announced length makes the encoder refuse it: the file
/// changed while it was sent, no fault of the server.
fn body_changed(e: Error) -> ClientError {
    ClientError::Body(io::Error::new(io::ErrorKind::InvalidData, e))
}

fn dropped() -> ClientError {
    ClientError::Body(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the answer body was dropped before its end",
    ))
}
