//! One transaction relayed on one upstream connection: the request pumped from the client
//! (and kept for a replay while it fits), the answer pumped back, both as read, with the
//! preview decision (`100 Continue` or a final answer) passed from the answer side to the
//! request side.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::proto::decode::{RequestEvent, ResponseDecoder, ResponseEvent};
use crate::proto::error::{Error, ErrorKind};
use crate::proto::head::Method;
use crate::proto::limits::Limits;

use super::downstream::{refill, wants_close, Downstream};
use super::{GatewayConfig, GatewayError};

/// What one relayed transaction was, for an access log.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TransactionLog {
    /// The ICAP method.
    pub method: String,
    /// The request URI as the client sent it.
    pub uri: String,
    /// The upstream that answered (`host:port`), empty when none did.
    pub upstream: String,
    /// The ICAP status relayed (the gateway's own `503` when no upstream answered), 0 when
    /// the transaction broke off.
    pub status: u16,
    /// `X-Infection-Found` of the answer.
    pub infection: Option<String>,
    /// `X-Violations-Found` of the answer.
    pub violations: Option<String>,
    /// The status of the HTTP response inside the answer.
    pub http_status: Option<u16>,
    /// Request bytes read from the client.
    pub bytes_in: u64,
    /// Answer bytes written to the client.
    pub bytes_out: u64,
    /// Upstreams tried and given up on before the one that answered.
    pub failovers: u32,
    /// From the first byte of the request head to the last byte of the answer.
    pub duration: Duration,
    /// Why the transaction broke off or got the gateway's `503`, when it did.
    pub error: Option<GatewayError>,
}

/// Where a relayed transaction failed.
pub(super) enum Failure {
    /// The client went away or broke the protocol: close its connection.
    Client(GatewayError),
    /// The upstream failed; `answered` when answer bytes already reached the client.
    Upstream { error: GatewayError, answered: bool },
}

/// Request bytes relayed to the current upstream, kept while they fit for a replay.
pub(super) struct Replay {
    /// `None` once the request outgrew the limit: it cannot be replayed.
    pub(super) pieces: Option<Vec<Bytes>>,
    len: usize,
    limit: usize,
}

impl Replay {
    pub(super) fn new(limit: usize) -> Self {
        Replay {
            pieces: Some(Vec::new()),
            len: 0,
            limit,
        }
    }

    fn keep(&mut self, b: &Bytes) {
        if let Some(p) = self.pieces.as_mut() {
            self.len += b.len();
            if self.len > self.limit {
                self.pieces = None;
            } else {
                p.push(b.clone());
            }
        }
    }
}

enum PumpError {
    Client(GatewayError),
    Upstream(GatewayError),
}

fn unexpected(at: u64, what: &str) -> Error {
    Error::new(ErrorKind::InvalidState, at, what)
}

/// Relays the request (from wherever its decoding stands) to `up`, or discards it when
/// `up` is `None`. At the end of a preview waits for the answer side's decision (`true`:
/// the upstream sent `100 Continue`).
async fn pump_request<R, W>(
    down: &mut Downstream<R>,
    mut up: Option<(&mut W, &str)>,
    replay: &mut Replay,
    mut decision: Option<oneshot::Receiver<bool>>,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        // Decode all that was read before writing: a small request goes out in one write.
        let mut need_read = false;
        while down.in_body && !down.dec.awaiting_preview_decision() {
            match down.dec.decode() {
                Ok(Some(RequestEvent::End(_))) => down.in_body = false,
                Ok(Some(RequestEvent::Data(_) | RequestEvent::PreviewEnd)) => {}
                Ok(Some(_)) => {
                    let e = unexpected(down.dec.position(), "a head inside a request");
                    return Err(PumpError::Client(GatewayError::ClientProtocol(e)));
                }
                Ok(None) => {
                    need_read = true;
                    break;
                }
                Err(e) => return Err(PumpError::Client(GatewayError::ClientProtocol(e))),
            }
        }
        let pieces = down.take_decoded();
        if let Some((up, name)) = up.as_mut() {
            let up_err = |source| {
                PumpError::Upstream(GatewayError::UpstreamIo {
                    upstream: name.to_string(),
                    op: "write",
                    source,
                })
            };
            for p in &pieces {
                replay.keep(p);
            }
            for p in &pieces {
                up.write_all(p).await.map_err(up_err)?;
            }
            if !pieces.is_empty() {
                up.flush().await.map_err(up_err)?;
            }
        }
        if !down.in_body {
            return Ok(());
        }
        if down.dec.awaiting_preview_decision() {
            let go_on = match decision.take() {
                Some(rx) => rx.await.unwrap_or(false),
                None => false,
            };
            let r = if go_on {
                down.dec.continue_after_preview()
            } else {
                down.in_body = false;
                down.dec.finish_after_preview()
            };
            r.map_err(|e| PumpError::Client(GatewayError::ClientProtocol(e)))?;
            continue;
        }
        if need_read && !down.read().await.map_err(PumpError::Client)? {
            return Err(PumpError::Client(GatewayError::ClientClosed));
        }
    }
}

/// Reads the rest of the current request and discards it.
pub(super) async fn drain<R: AsyncRead + Unpin>(
    down: &mut Downstream<R>,
) -> Result<(), GatewayError> {
    let mut replay = Replay {
        pieces: None,
        len: 0,
        limit: 0,
    };
    match pump_request::<R, tokio::io::Sink>(down, None, &mut replay, None).await {
        Ok(()) => Ok(()),
        Err(PumpError::Client(e) | PumpError::Upstream(e)) => Err(e),
    }
}

/// Relays the answer from `up` to `w`. Errors say whether answer bytes already went out.
#[allow(clippy::too_many_arguments)]
async fn pump_response<R, W>(
    up: &mut R,
    name: &str,
    buf: &mut BytesMut,
    w: &mut W,
    method: Method,
    mut decision: Option<oneshot::Sender<bool>>,
    rec: &mut TransactionLog,
    timeout: Duration,
    limits: &Limits,
) -> Result<bool, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dec = ResponseDecoder::new(Limits {
        max_body: None,
        ..*limits
    });
    dec.expect_response_to(Some(method));
    let mut raw: VecDeque<Bytes> = VecDeque::new();
    let mut raw_pos = 0u64;
    let mut is_final = false;
    let mut close = false;
    let upstream = || name.to_string();
    let up_err = |error, rec: &TransactionLog| Failure::Upstream {
        error,
        answered: rec.bytes_out > 0,
    };
    loop {
        let ev = match dec.decode() {
            Ok(ev) => ev,
            Err(source) => {
                let e = GatewayError::UpstreamProtocol {
                    upstream: upstream(),
                    source,
                };
                return Err(up_err(e, rec));
            }
        };
        let ended = match ev {
            Some(ResponseEvent::Head(res)) => {
                if res.status == 100 {
                    if let Some(tx) = decision.take() {
                        let _ = tx.send(true);
                    }
                } else {
                    if let Some(tx) = decision.take() {
                        let _ = tx.send(false);
                    }
                    is_final = true;
                    rec.status = res.status;
                    let text = |n: &str| res.headers.get_str(n).map(str::to_owned);
                    rec.infection = text("x-infection-found");
                    rec.violations = text("x-violations-found");
                    rec.http_status = res.http_response.as_ref().map(|h| h.status);
                    close = wants_close(res.headers.get("connection"));
                }
                false
            }
            Some(ResponseEvent::End(_)) => is_final,
            Some(_) => false,
            None => {
                relay_decoded(&mut raw, &mut raw_pos, dec.position(), w, rec).await?;
                refill(buf);
                let e = match tokio::time::timeout(timeout, up.read_buf(buf)).await {
                    Err(_) => GatewayError::UpstreamTimeout {
                        upstream: upstream(),
                        phase: "answer",
                        after: timeout,
                    },
                    Ok(Err(source)) => GatewayError::UpstreamIo {
                        upstream: upstream(),
                        op: "read",
                        source,
                    },
                    Ok(Ok(0)) => GatewayError::UpstreamClosed {
                        upstream: upstream(),
                    },
                    Ok(Ok(_)) => {
                        let b = buf.split().freeze();
                        dec.feed_bytes(b.clone());
                        raw.push_back(b);
                        continue;
                    }
                };
                return Err(up_err(e, rec));
            }
        };
        if ended {
            relay_decoded(&mut raw, &mut raw_pos, dec.position(), w, rec).await?;
            // Bytes after the answer would be a protocol error: do not reuse.
            return Ok(!close && dec.buffered().is_empty());
        }
    }
}

/// Writes the answer bytes decoded so far to the client, as read, and flushes.
async fn relay_decoded<W: AsyncWrite + Unpin>(
    raw: &mut VecDeque<Bytes>,
    raw_pos: &mut u64,
    upto: u64,
    w: &mut W,
    rec: &mut TransactionLog,
) -> Result<(), Failure> {
    let mut want = (upto - *raw_pos) as usize;
    if want == 0 {
        return Ok(());
    }
    let client_err = |source| {
        Failure::Client(GatewayError::ClientIo {
            op: "write",
            source,
        })
    };
    while want > 0 {
        let front = raw.front_mut().expect("decoded bytes were read");
        let piece = if front.len() <= want {
            raw.pop_front().expect("front exists")
        } else {
            front.split_to(want)
        };
        want -= piece.len();
        *raw_pos += piece.len() as u64;
        w.write_all(&piece).await.map_err(client_err)?;
        rec.bytes_out += piece.len() as u64;
    }
    w.flush().await.map_err(client_err)
}

/// One attempt on one upstream connection. `Ok(reusable)` when the answer was relayed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_once<R, W>(
    down: &mut Downstream<R>,
    w: &mut W,
    conn: &mut TcpStream,
    name: &str,
    replay: &mut Replay,
    method: Method,
    rec: &mut TransactionLog,
    cfg: &GatewayConfig,
) -> Result<bool, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut ur, mut uw) = conn.split();
    // What an earlier attempt relayed goes first.
    if let Some(pieces) = replay.pieces.as_ref() {
        for p in pieces {
            uw.write_all(p).await.map_err(|source| Failure::Upstream {
                error: GatewayError::UpstreamIo {
                    upstream: name.to_string(),
                    op: "write",
                    source,
                },
                answered: false,
            })?;
        }
    }
    let (tx, rx) = oneshot::channel();
    let request_done = !down.in_body && down.dec.position() == down.raw_pos;
    let mut ubuf = std::mem::take(&mut down.ubuf);
    let result = async {
        let req = pump_request(down, Some((&mut uw, name)), replay, Some(rx));
        let res = pump_response(
            &mut ur,
            name,
            &mut ubuf,
            w,
            method,
            Some(tx),
            rec,
            cfg.upstream_timeout,
            &cfg.limits,
        );
        tokio::pin!(req);
        tokio::pin!(res);
        let mut req_done = request_done;
        loop {
            tokio::select! {
                r = &mut req, if !req_done => match r {
                    Ok(()) => req_done = true,
                    Err(PumpError::Client(e)) => return Err(Failure::Client(e)),
                    Err(PumpError::Upstream(error)) => {
                        return Err(Failure::Upstream { error, answered: false });
                    }
                },
                r = &mut res => {
                    let reusable = r?;
                    if !req_done {
                        // Answered before the request ended (no preview): the rest of the
                        // request still goes to the upstream, which reads it as RFC 3507
                        // expects; a failure now only costs the connection.
                        return match (&mut req).await {
                            Ok(()) => Ok(reusable),
                            Err(PumpError::Upstream(_)) => Ok(false),
                            Err(PumpError::Client(e)) => Err(Failure::Client(e)),
                        };
                    }
                    return Ok(reusable);
                }
            }
        }
    }
    .await;
    down.ubuf = ubuf;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_pieces_until_the_limit_then_gives_up() {
        let mut r = Replay::new(10);
        r.keep(&Bytes::from_static(b"12345"));
        r.keep(&Bytes::from_static(b"67890"));
        assert_eq!(r.pieces.as_ref().map(Vec::len), Some(2));
        r.keep(&Bytes::from_static(b"x"));
        assert!(r.pieces.is_none());
        // Once over, for good.
        r.keep(&Bytes::new());
        assert!(r.pieces.is_none());
    }

    #[tokio::test]
    async fn an_answer_is_relayed_byte_for_byte_and_its_fields_logged() {
        let answer: &[u8] = b"ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nX-Violations-Found: 1\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 403 No\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let (mut up_w, mut up_r) = tokio::io::duplex(16);
        let feeder = tokio::spawn(async move {
            for piece in answer.chunks(5) {
                up_w.write_all(piece).await.unwrap();
            }
            up_w
        });
        let mut out = Vec::new();
        let mut rec = TransactionLog::default();
        let mut buf = BytesMut::new();
        let reusable = pump_response(
            &mut up_r,
            "127.0.0.1:1",
            &mut buf,
            &mut out,
            Method::Respmod,
            None,
            &mut rec,
            Duration::from_secs(5),
            &Limits::default(),
        )
        .await
        .ok()
        .unwrap();
        drop(feeder.await.unwrap());
        assert!(reusable);
        assert_eq!(out, answer);
        assert_eq!(rec.status, 200);
        assert_eq!(rec.http_status, Some(403));
        assert_eq!(rec.violations.as_deref(), Some("1"));
        assert_eq!(rec.bytes_out, answer.len() as u64);
    }

    #[tokio::test]
    async fn an_upstream_that_closes_mid_answer_is_its_fault_and_says_so() {
        let (mut up_w, mut up_r) = tokio::io::duplex(1024);
        up_w.write_all(b"ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n5\r\nhel")
            .await
            .unwrap();
        drop(up_w);
        let mut out = Vec::new();
        let mut rec = TransactionLog::default();
        let r = pump_response(
            &mut up_r,
            "127.0.0.1:1",
            &mut BytesMut::new(),
            &mut out,
            Method::Respmod,
            None,
            &mut rec,
            Duration::from_secs(5),
            &Limits::default(),
        )
        .await;
        match r {
            Err(Failure::Upstream { error, answered }) => {
                assert!(answered, "the head went out");
                assert_eq!(
                    error.to_string(),
                    "upstream 127.0.0.1:1: closed before the answer ended"
                );
            }
            _ => panic!("not an upstream failure"),
        }
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_before_anything_is_answered() {
        let (_up_w, mut up_r) = tokio::io::duplex(1024);
        let mut rec = TransactionLog::default();
        let r = pump_response(
            &mut up_r,
            "127.0.0.1:1",
            &mut BytesMut::new(),
            &mut Vec::new(),
            Method::Reqmod,
            None,
            &mut rec,
            Duration::from_millis(20),
            &Limits::default(),
        )
        .await;
        assert!(matches!(
            r,
            Err(Failure::Upstream {
                error: GatewayError::UpstreamTimeout {
                    phase: "answer",
                    ..
                },
                answered: false
            })
        ));
    }
}
