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

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::timeout_at;

use crate::error::{ClientError, Error};
use crate::message::{Request, Response};
use crate::transaction::{ClientEvent, ClientTransaction, RequestBody, Reuse};
use crate::verdict::BodyHash;

use super::body::{Piece, PieceSender, Source, READ_SIZE};
use super::pool::{tls_failure, Conn, Endpoint};
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

    #[allow(clippy::too_many_arguments)]
    async fn run_transaction(
        &self,
        ep: &Endpoint,
        conn: Conn,
        req: &Request,
        mut reader: Option<Source>,
        rb: RequestBody,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
        out: &mut Out,
        until: Instant,
        seen: &mut Seen,
    ) -> Result<Done, (ClientError, bool)> {
        let server = ep.name();
        let Conn {
            mut io,
            decoder,
            tls_version,
            permit,
            ..
        } = conn;
        let mut tx =
            ClientTransaction::new(req, rb, decoder).map_err(|e| (ClientError::Config(e), true))?;
        let start = Instant::now();
        let max_answer = self.cfg.max_answer;
        let had_identity = self.cfg.tls.identity.is_some();
        let io_err = |e: io::Error| match tls_failure(&e, had_identity) {
            Some((failure, message)) => ClientError::Tls {
                server: server.clone(),
                failure,
                message,
            },
            None => ClientError::Io {
                server: server.clone(),
                source: e,
            },
        };
        let proto = |e: Error| ClientError::Protocol {
            server: server.clone(),
            source: e,
        };
        // Only a body that is not the announced length makes these fail: the file changed
        // while it was sent, no fault of the server.
        let body_changed =
            |e: Error| ClientError::Body(io::Error::new(io::ErrorKind::InvalidData, e));
        let dropped = || {
            ClientError::Body(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the answer body was dropped before its end",
            ))
        };

        let work = async {
            let mut write_failed = false;
            let mut source_done = reader.is_none();
            let mut body_sent = 0u64;
            loop {
                // Answers first: they may stop the sending.
                while let Some(ev) = tx
                    .poll_event()
                    .map_err(|e| (proto(e), seen.received == 0))?
                {
                    match ev {
                        ClientEvent::Continue => {}
                        ClientEvent::Unmodified(r) | ClientEvent::Response(r) => {
                            seen.status = r.status;
                            seen.verdict = observe::verdict(&req.method, &r);
                            match out {
                                Out::Collect(c) => c.response = Some(r),
                                Out::Stream(s) => {
                                    if let Some(h) = s.head.take() {
                                        // A caller that gave up on the head gets no body either.
                                        h.send(Ok(r)).map_err(|_| (dropped(), false))?;
                                    }
                                }
                            }
                        }
                        ClientEvent::Data(d) => match out {
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
                        },
                        // A stream's end is told by the caller of `run`, once the
                        // connection is back in the pool.
                        ClientEvent::End(last) => {
                            return Ok((write_failed, last.use_original_body))
                        }
                    }
                }
                if !write_failed {
                    // Body is read while less than a read's worth waits to be written.
                    if tx.outgoing().remaining() < WRITE_BATCH && tx.wants_body() && !source_done {
                        let r = reader
                            .as_mut()
                            .expect("a body source when a body is wanted");
                        match r
                            .next()
                            .await
                            .map_err(|e| (ClientError::Body(e), seen.received == 0))?
                        {
                            None => {
                                source_done = true;
                                tx.end_body()
                                    .map_err(|e| (body_changed(e), seen.received == 0))?;
                            }
                            Some(chunk) => {
                                body_sent += chunk.len() as u64;
                                if let Out::Collect(c) = out {
                                    c.sent.update(&chunk);
                                }
                                tx.send_body(chunk)
                                    .map_err(|e| (body_changed(e), seen.received == 0))?;
                                if let Some(p) = progress {
                                    p(body_sent);
                                }
                            }
                        }
                        continue;
                    }
                    if !tx.outgoing().has_remaining() {
                        // Everything queued is written: push it out before waiting.
                        poll_fn(|cx| Pin::new(&mut io).poll_flush(cx))
                            .await
                            .map_err(|e| (io_err(e), seen.received == 0))?;
                    }
                }
                let step = poll_fn(|cx| {
                    if !write_failed && tx.outgoing().has_remaining() {
                        let enc = tx.outgoing();
                        let mut iov = [IoSlice::new(&[]); IOV];
                        let k = enc.chunks_vectored(&mut iov);
                        match Pin::new(&mut io).poll_write_vectored(cx, &iov[..k]) {
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
                .await;
                match step {
                    Step::Wrote(n) => seen.sent += n as u64,
                    // The server may have answered and closed (c-icap does after a 404):
                    // stop writing, keep reading its answer.
                    Step::WriteFailed => {
                        write_failed = true;
                        let n = tx.outgoing().remaining();
                        tx.outgoing().advance(n);
                    }
                    Step::Read(Ok(0)) => {
                        tx.on_eof().map_err(|e| (proto(e), seen.received == 0))?;
                    }
                    Step::Read(Ok(n)) => {
                        seen.received += n as u64;
                        // Relative to what was sent, so an echo of any file fits.
                        let limit = max_answer.saturating_add(body_sent);
                        if seen.received > limit {
                            let e = ClientError::AnswerTooLarge {
                                server: server.clone(),
                                limit,
                                read: seen.received,
                            };
                            return Err((e, false));
                        }
                    }
                    Step::Read(Err(e)) => return Err((io_err(e), seen.received == 0)),
                }
            }
        };
        let (write_failed, use_original_body) = match timeout_at(until.into(), work).await {
            Err(_) => {
                return Err((
                    ClientError::Timeout {
                        server: server.clone(),
                        phase: "transaction",
                    },
                    false,
                ))
            }
            Ok(r) => r?,
        };
        let reuse = tx.reuse() == Reuse::Keep && !write_failed;
        let decoder = tx.into_decoder();
        let conn = reuse.then(|| Conn {
            io,
            decoder,
            tls_version: tls_version.clone(),
            permit,
        });
        Ok(Done {
            conn,
            use_original_body,
            tls_version,
            elapsed: start.elapsed(),
        })
    }
}
