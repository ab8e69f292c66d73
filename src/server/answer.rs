//! Answers: a service's [`Reply`] turned into a legal response (204 where allowed, else the
//! 200 echo from the spool; the service's ISTag; a body that matches its head) and sent,
//! and the error answers the server gives on its own.

use std::io;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::body::BodyError;
use super::conn::Conn;
use super::service::{Reply, ReplyBody, Route};
use super::spool::Spool;
use super::Server;
use crate::builder::{ErrorStatus, ResponseBuilder};
use crate::proto::decode::RequestDecoder;
use crate::proto::error::Error;
use crate::proto::fields::Headers;
use crate::proto::head::Method;
use crate::proto::message::{Request, Response};
use crate::transaction::{Reuse, ServerState, ServerTransaction};

/// Bytes read at once from a reply body given as a reader (the echo spool's file among
/// them): what a connection holds while it sends one.
const READER_ROOM: usize = 16 * 1024;

/// A body to send: the service's, or an echo's kept in memory and small enough to go as the
/// one chunk a reader of it would give (see [`READER_ROOM`]), without a read buffer for it.
pub(crate) enum Outgoing {
    Reply(ReplyBody),
    Spooled(Bytes),
}

impl From<ReplyBody> for Outgoing {
    fn from(b: ReplyBody) -> Self {
        Outgoing::Reply(b)
    }
}

/// Whether `value` is `istag` in quotes, as the server writes it.
fn is_quoted(value: &[u8], istag: &str) -> bool {
    let t = istag.trim_matches('"').as_bytes();
    value.len() == t.len() + 2
        && value.first() == Some(&b'"')
        && value.last() == Some(&b'"')
        && &value[1..value.len() - 1] == t
}

impl Server {
    pub(crate) fn server_header(&self, b: ResponseBuilder) -> ResponseBuilder {
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
    pub(crate) async fn fail_with(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        status: ErrorStatus,
        istag: &str,
    ) -> Option<RequestDecoder> {
        let _ = conn.respond(txn, self.error_response(status, istag));
        let _ = conn.flush_out(txn).await;
        None
    }

    /// Answers a body that could not be read (400 or 408) where the connection still works.
    pub(crate) async fn body_error(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        e: BodyError,
        istag: &str,
    ) {
        conn.failed(match e {
            BodyError::Timeout => "timeout",
            BodyError::Protocol(_) => "bad_request",
            BodyError::Eof => "eof",
            _ => "io",
        });
        let status = match e {
            BodyError::Timeout => ErrorStatus::RequestTimeout,
            BodyError::Protocol(_) => ErrorStatus::BadRequest,
            _ => return,
        };
        let _ = conn.respond(txn, self.error_response(status, istag));
        let _ = conn.flush_out(txn).await;
    }

    /// Turns the service's reply into a legal response and sends it.
    pub(crate) async fn answer(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        req: &Request,
        reply: Reply,
        spool: Option<Spool>,
        route: &Route,
    ) -> bool {
        let istag = route.options.istag.as_str();
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
                let res = self.echo_response(req, istag, &route.echo_fields, &extra);
                // The spool exists whenever a body came without Allow: 204.
                let mut spool = spool.filter(|_| req.body.is_some());
                let small = spool.as_mut().and_then(|s| s.take_small(READER_ROOM));
                let body = match (small, spool) {
                    (Some(b), _) => Outgoing::Spooled(b),
                    (None, Some(s)) => match s.into_reader().await {
                        Ok(r) => Outgoing::Reply(ReplyBody::Reader(r)),
                        Err(e) => {
                            tracing::error!("no echo, answering 500: {e}");
                            let res = self.error_response(ErrorStatus::ServerError, istag);
                            return self
                                .send(conn, txn, res, ReplyBody::Empty, None, istag)
                                .await;
                        }
                    },
                    _ => Outgoing::Reply(ReplyBody::Empty),
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
    ///
    /// Its own ICAP fields (`Server`, `ISTag`) are made once per service, in `fields`, and
    /// copied from there.
    pub(crate) fn echo_response(
        &self,
        req: &Request,
        istag: &str,
        fields: &OnceLock<Headers>,
        extra: &Headers,
    ) -> Response {
        let mut res = Response::new(200, "OK");
        res.headers = fields
            .get_or_init(|| {
                let mut h = Headers::new();
                if let Some(s) = &self.config.server_name {
                    h.append("Server", s);
                }
                h.append("ISTag", format!("\"{}\"", istag.trim_matches('"')));
                h
            })
            .clone();
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
    pub(crate) async fn send(
        &self,
        conn: &mut Conn<'_>,
        txn: &mut ServerTransaction,
        res: Response,
        body: impl Into<Outgoing>,
        original_from: Option<u64>,
        istag: &str,
    ) -> bool {
        let body = body.into();
        let mut res = res;
        if let Some(name) = &self.config.server_name {
            if !res.headers.contains("Server") {
                res.headers.append("Server", name);
            }
        }
        // The service's ISTag, whatever the reply carried: it is declared once, with the
        // service's options. (An echo's head has it already.)
        let tagged = {
            let mut tags = res.headers.get_all("ISTag");
            matches!((tags.next(), tags.next()), (Some(v), None) if is_quoted(v, istag))
        };
        if !tagged {
            res.headers
                .insert("ISTag", format!("\"{}\"", istag.trim_matches('"')));
        }
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
        if let Err(e) = checked.and_then(|res| conn.respond(txn, res)) {
            // The service broke a rule (a 206 without Allow: 206, sections that do not suit
            // the method, a body that does not match its head ...): a server error is all
            // that can be said.
            tracing::debug!("refused response: {e}");
            conn.failed("refused_reply");
            let _ = conn.respond(txn, self.error_response(ErrorStatus::ServerError, istag));
            let _ = conn.flush_out(txn).await;
            return false;
        }
        if txn.state() == ServerState::Responding {
            let sent = match body {
                Outgoing::Reply(ReplyBody::Empty) => Ok(()),
                Outgoing::Spooled(b) if b.is_empty() => Ok(()),
                Outgoing::Reply(ReplyBody::Full(b)) | Outgoing::Spooled(b) => txn
                    .send_data(b)
                    .map_err(|e| io::Error::other(e.to_string())),
                Outgoing::Reply(ReplyBody::Reader(mut r)) => {
                    let mut ok = Ok(());
                    // One buffer for the whole body: each full piece is written out (and
                    // dropped) before the next read, which then reuses the buffer in place. A
                    // short piece (the last, or all of a small body) waits for what follows,
                    // so a small echo goes out in one write with its head and last chunk.
                    let mut buf = BytesMut::new();
                    loop {
                        buf.reserve(READER_ROOM);
                        match r.read_buf(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => {
                                if let Err(e) = txn.send_data(buf.split().freeze()) {
                                    ok = Err(io::Error::other(e.to_string()));
                                    break;
                                }
                                if bytes::Buf::remaining(txn.outgoing()) >= READER_ROOM
                                    && conn.flush_out(txn).await.is_err()
                                {
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

/// The body is given twice, declared in the response (`with_body()`, its HTTP head's
/// Content-Length) and handed over as `body`: when the two disagree, what would go out is
/// invalid HTTP (a head announcing bytes that never come, or a body the head does not
/// announce), so it does not go out.
fn mismatch(res: &Response, body: &Outgoing, whole: bool) -> Option<Error> {
    let wrong = |m: String| Some(Error::new(crate::ErrorKind::InvalidMessage, 0, m));
    let declared = res.body.is_some();
    let len = match body {
        Outgoing::Reply(ReplyBody::Empty) if declared => {
            return wrong("the response declares a body, the reply gives none".into())
        }
        Outgoing::Reply(ReplyBody::Full(_) | ReplyBody::Reader(_)) | Outgoing::Spooled(_)
            if !declared =>
        {
            return wrong("the reply gives a body, the response declares none".into())
        }
        // A 206 prefix is not the whole body its head describes. (An echo, spooled, is
        // what the client sent, as a reader of it would give it.)
        Outgoing::Reply(ReplyBody::Full(b)) if whole => b.len() as u64,
        _ => return None,
    };
    let head = match (&res.http_response, &res.http_request) {
        (Some(h), _) => &h.headers,
        (None, Some(h)) => &h.headers,
        (None, None) => return None,
    };
    let cl = head
        .get_all("Content-Length")
        .find(|v| crate::proto::grammar::decimal(v) != Some(len))?;
    wrong(format!(
        "the encapsulated head says Content-Length: {} but the reply body has {len} bytes",
        String::from_utf8_lossy(cl)
    ))
}
