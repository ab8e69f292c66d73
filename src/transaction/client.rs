//! The client side of a transaction: send one request, read its answer.

use bytes::Bytes;

use crate::proto::chunked::LastChunk;
use crate::proto::decode::{ResponseDecoder, ResponseEvent};
use crate::proto::encode::Encoder;
use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::head::Method;
use crate::proto::message::{Request, Response};

use super::{says_close, state_error, CloseReason, RequestBody, Reuse};

/// Where a [`ClientTransaction`] stands, seen from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// The heads are queued; body bytes go out as the preview, up to `Preview` bytes.
    Preview,
    /// The preview went out without `ieof`; waiting for `100 Continue` or a final answer.
    AwaitContinue,
    /// Sending the body: all of it (no preview) or the rest after `100 Continue`.
    Body,
    /// The whole request is queued; waiting for the answer.
    AwaitResponse,
    /// A final response head arrived; its body is arriving (and the request body may still
    /// be going out: see [`ClientTransaction::wants_body`]).
    Response,
    /// The response has ended.
    Done,
    /// An error ended the transaction; close the connection.
    Failed,
}

/// The request direction of a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    Preview,
    AwaitContinue,
    Body,
    Done,
}

/// The response direction of a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// Waiting for a final head (100 Continue does not count).
    Head,
    Body,
    Done,
}

/// What a [`ClientTransaction`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// `100 Continue`: send the rest of the body ([`ClientTransaction::wants_body`] is true
    /// again unless the body already ended).
    Continue,
    /// `204`: no modification. The original message stands, so the caller must still have it
    /// (its heads, and a body kept in memory or in a re-readable source such as a file it can
    /// read again from the start). [`ClientEvent::End`] follows.
    Unmodified(Response),
    /// A final response head: 200 (modified request or response, or a block page), 206 (a
    /// new body prefix; the rest is the original body from the offset in the
    /// [`LastChunk`] of the closing [`ClientEvent::End`]), or an error status. Body pieces
    /// and [`ClientEvent::End`] follow.
    Response(Response),
    /// A piece of the response body.
    Data(Bytes),
    /// The response is complete; for a 206, `use_original_body` says from which offset the
    /// original body continues it.
    End(LastChunk),
}

/// The client side of one transaction: sends a request with its preview and body, and
/// checks the answer against the rules.
///
/// The caller keeps the original message until the transaction ends: a 204 (always
/// possible in answer to a preview, and outside one when the request said `Allow: 204`) means
/// "use the original", and a 206 means "the rest is the original body from offset N". Only
/// the preview has to stay in memory; the rest can come again from a re-readable source
/// such as a file.
///
/// A final answer that arrives while the body is still going out (an early response) does
/// not by itself stop the body: servers stream answers while they read (c-icap's echo
/// service sends most of its 200 before the client's last chunk), so a 2xx without
/// `Connection: close` lets the body go on, and the connection stays reusable once both
/// messages end. A 204, an error status or `Connection: close` stops it: the server will not
/// read more, [`Self::wants_body`] turns false and the connection is closed afterwards. The
/// caller may also stop with [`Self::abort_body`].
///
/// ```
/// use bytes::Bytes;
/// use icap::{ClientEvent, ClientTransaction, RequestBody, Reuse};
/// use icap::{IcapUri, Request, ResponseDecoder};
///
/// let uri = IcapUri::parse("icap://av.example/respmod").unwrap();
/// let req = Request::respmod(&uri)
///     .http_response_parts(200, "OK", [("Content-Type", "text/plain")])
///     .preview(4)
///     .with_body()
///     .build()
///     .unwrap();
/// let mut tx = ClientTransaction::new(&req, RequestBody::Unknown, ResponseDecoder::default()).unwrap();
/// tx.send_body(Bytes::from_static(b"hello")).unwrap(); // 4 bytes of preview, then `0`
/// assert!(!tx.wants_body());
/// tx.feed(b"ICAP/1.0 204 No Content\r\nISTag: \"t\"\r\n\r\n");
/// assert!(matches!(tx.poll_event().unwrap(), Some(ClientEvent::Unmodified(_))));
/// assert!(matches!(tx.poll_event().unwrap(), Some(ClientEvent::End(_))));
/// assert_eq!(tx.reuse(), Reuse::Keep); // the original response, kept by the caller, stands
/// ```
#[derive(Debug)]
pub struct ClientTransaction {
    send: Send,
    recv: Recv,
    failed: bool,
    close: Option<CloseReason>,
    dec: ResponseDecoder,
    out: Encoder,
    preview: Option<u64>,
    allow_204: bool,
    allow_206: bool,
    client_close: bool,
    length: Option<u64>,
    /// Body bytes taken from the caller.
    sent: u64,
    /// Bytes past the preview, taken from the caller, sent after 100 Continue.
    held: Option<Bytes>,
    /// The caller ended the body while the preview waited for an answer.
    body_ended: bool,
    continued: bool,
    ieof_sent: bool,
    /// The decoder reports an End after a 100 head; it belongs to no final response.
    skip_end: bool,
}

impl ClientTransaction {
    /// Starts a transaction for `request` (from a builder or made by hand), with `body`
    /// describing the body the caller will pass to [`Self::send_body`]. The heads are queued
    /// at once. `decoder` reads the answer; take it back with [`Self::into_decoder`] to
    /// reuse the connection.
    pub fn new(request: &Request, body: RequestBody, mut decoder: ResponseDecoder) -> Result<Self> {
        if request.body.is_some() == (body == RequestBody::None) {
            return Err(state_error(
                "RequestBody must be None exactly when the request has no encapsulated body",
            ));
        }
        if decoder.is_failed() {
            return Err(state_error("the decoder has failed; open a new connection"));
        }
        decoder.expect_response_to(Some(request.method.clone()));
        // A bodiless request with a Preview header (squid sends `Preview: 0` on them) still
        // counts as previewed for the 204 rule: accept what servers answer to it.
        let preview = match request.method {
            Method::Reqmod | Method::Respmod => request.preview(),
            _ => None,
        };
        let mut tx = ClientTransaction {
            send: Send::Done,
            recv: Recv::Head,
            failed: false,
            close: None,
            dec: decoder,
            out: Encoder::new(),
            preview,
            allow_204: request.allows_204(),
            allow_206: request.allows_206(),
            client_close: says_close(&request.headers),
            length: match body {
                RequestBody::Known(n) => Some(n),
                _ => None,
            },
            sent: 0,
            held: None,
            body_ended: false,
            continued: false,
            ieof_sent: false,
            skip_end: false,
        };
        tx.out.request_head(request)?;
        match (body, preview) {
            (RequestBody::None, _) => {}
            (RequestBody::Known(0), Some(_)) => tx.finish_preview(true)?,
            (RequestBody::Known(0), None) => tx.finish_body()?,
            (RequestBody::Known(_), Some(0)) => tx.finish_preview(false)?,
            (_, Some(_)) => tx.send = Send::Preview,
            (_, None) => tx.send = Send::Body,
        }
        Ok(tx)
    }

    /// Where the transaction stands.
    pub fn state(&self) -> ClientState {
        match (self.failed, self.recv, self.send) {
            (true, _, _) => ClientState::Failed,
            (_, Recv::Done, _) => ClientState::Done,
            (_, Recv::Body, _) => ClientState::Response,
            (_, Recv::Head, Send::Preview) => ClientState::Preview,
            (_, Recv::Head, Send::AwaitContinue) => ClientState::AwaitContinue,
            (_, Recv::Head, Send::Body) => ClientState::Body,
            (_, Recv::Head, Send::Done) => ClientState::AwaitResponse,
        }
    }

    /// True when the machine takes body bytes now: in the preview, in the body, and after an
    /// early answer that lets the body go on.
    pub fn wants_body(&self) -> bool {
        !self.failed && matches!(self.send, Send::Preview | Send::Body)
    }

    /// The bytes to write to the server, as a [`bytes::Buf`]; drain it after each call.
    pub fn outgoing(&mut self) -> &mut Encoder {
        &mut self.out
    }

    /// Passes bytes received from the server to the decoder.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.dec.feed(bytes);
    }

    /// The decoder, to read straight into its buffer.
    pub fn decoder_mut(&mut self) -> &mut ResponseDecoder {
        &mut self.dec
    }

    /// Whether the connection can carry another transaction: [`Reuse::Keep`] once the
    /// request and the response have both ended cleanly.
    pub fn reuse(&self) -> Reuse {
        match self.close {
            Some(r) => Reuse::Close(r),
            None if self.recv == Recv::Done && self.send == Send::Done => Reuse::Keep,
            None => Reuse::Pending,
        }
    }

    /// The decoder back, for the next transaction on a kept connection; bytes of a pipelined
    /// next response stay buffered in it.
    pub fn into_decoder(self) -> ResponseDecoder {
        self.dec
    }

    fn finish_preview(&mut self, ieof: bool) -> Result<()> {
        self.out.end(ieof)?;
        self.ieof_sent = ieof;
        // After ieof, or once the server has answered, nothing more of this request goes out.
        self.send = if ieof || self.recv != Recv::Head {
            self.held = None;
            Send::Done
        } else {
            Send::AwaitContinue
        };
        Ok(())
    }

    fn finish_body(&mut self) -> Result<()> {
        self.out.end(false)?;
        self.send = Send::Done;
        Ok(())
    }

    fn fail(&mut self, reason: CloseReason, e: Error) -> Error {
        self.failed = true;
        self.close.get_or_insert(reason);
        e
    }

    /// Gives the next piece of body. In the preview, bytes beyond `Preview` are kept (a cheap
    /// `Bytes` view) and sent after `100 Continue`. With a [`RequestBody::Known`] length the
    /// body ends by itself on its last byte. Errors when [`Self::wants_body`] is false: the
    /// server's answer to the preview is awaited, or the body has ended or been stopped.
    pub fn send_body(&mut self, data: Bytes) -> Result<()> {
        if !self.wants_body() {
            return Err(state_error(match self.send {
                Send::AwaitContinue => {
                    "the preview waits for the server's answer; send the rest after 100 Continue"
                }
                _ if self.close == Some(CloseReason::UnfinishedRequest) => {
                    "the body was stopped: the server will not read more"
                }
                _ if self.failed => "the transaction has failed",
                _ => "the body has already ended",
            }));
        }
        let len = data.len() as u64;
        if let Some(n) = self.length {
            if self.sent + len > n {
                return Err(state_error(format!(
                    "body longer than the {n} bytes announced"
                )));
            }
        }
        if len == 0 {
            return Ok(());
        }
        let complete = |sent: u64, length: Option<u64>| length == Some(sent);
        if self.send == Send::Preview {
            let preview = self.preview.unwrap_or(0);
            let room = preview - self.sent;
            if len <= room {
                self.out.data(data)?;
                self.sent += len;
                if complete(self.sent, self.length) {
                    self.finish_preview(true)?;
                } else if self.sent == preview && self.length.is_some() {
                    // Known to go on past the preview: no reason to wait for the next piece.
                    self.finish_preview(false)?;
                }
            } else {
                self.out.data(data.slice(..room as usize))?;
                self.held = Some(data.slice(room as usize..));
                self.sent += len;
                self.body_ended = complete(self.sent, self.length);
                self.finish_preview(false)?;
            }
            return Ok(());
        }
        self.out.data(data)?;
        self.sent += len;
        if complete(self.sent, self.length) {
            self.finish_body()?;
        }
        Ok(())
    }

    /// Ends the body. Inside the preview this sends `0; ieof` (the whole body fit); while the
    /// preview waits for an answer it is remembered and the body ends right after the held
    /// bytes once `100 Continue` comes. A no-op when the body has already ended, by a known
    /// length or because it was stopped.
    pub fn end_body(&mut self) -> Result<()> {
        if self.failed {
            return Err(state_error("the transaction has failed"));
        }
        if let (Some(n), Send::Preview | Send::Body) = (self.length, self.send) {
            if self.sent < n {
                return Err(state_error(format!(
                    "body ended after {} of the {n} bytes announced",
                    self.sent
                )));
            }
        }
        match self.send {
            Send::Preview => self.finish_preview(true)?,
            Send::Body => self.finish_body()?,
            Send::AwaitContinue => self.body_ended = true,
            Send::Done => {}
        }
        Ok(())
    }

    /// Stops sending the body before its end (the source failed, or the caller does not
    /// want to send the rest after an early answer). The chunked body cannot be ended
    /// honestly, so the connection must be closed once the response has been read.
    pub fn abort_body(&mut self) {
        if self.send != Send::Done {
            self.send = Send::Done;
            self.held = None;
            self.close.get_or_insert(CloseReason::UnfinishedRequest);
        }
    }

    /// Call when the server closed the connection. `Ok` when the response had ended; an
    /// [`ErrorKind::UnexpectedEof`] error otherwise (a partial 200 without its last chunk is
    /// never a complete answer).
    pub fn on_eof(&mut self) -> Result<()> {
        if self.recv == Recv::Done {
            self.close.get_or_insert(CloseReason::Eof);
            return Ok(());
        }
        let at = self.dec.position();
        let e = Error::new(
            ErrorKind::UnexpectedEof,
            at,
            "the server closed the connection before its answer ended",
        );
        Err(self.fail(CloseReason::Eof, e))
    }

    /// Decodes what the server sent and applies the rules; `Ok(None)` means more bytes are
    /// needed (or the response is over: what follows belongs to the next transaction).
    pub fn poll_event(&mut self) -> Result<Option<ClientEvent>> {
        loop {
            if self.failed {
                return Err(state_error("the transaction has failed"));
            }
            if self.recv == Recv::Done {
                return Ok(None);
            }
            let ev = match self.dec.decode() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(CloseReason::DecodeError, e)),
            };
            match ev {
                ResponseEvent::Head(res) => return self.on_head(res).map(Some),
                ResponseEvent::Data(d) => return Ok(Some(ClientEvent::Data(d))),
                ResponseEvent::End(_) if self.skip_end => self.skip_end = false,
                ResponseEvent::End(last) => {
                    self.recv = Recv::Done;
                    return Ok(Some(ClientEvent::End(last)));
                }
            }
        }
    }

    fn violation(&mut self, msg: String) -> Error {
        let at = self.dec.position();
        let e = Error::new(ErrorKind::UnexpectedResponse, at, msg);
        self.fail(CloseReason::ProtocolViolation, e)
    }

    fn on_head(&mut self, res: Response) -> Result<ClientEvent> {
        let status = res.status;
        if status < 200 {
            if status != 100 || self.send != Send::AwaitContinue || self.recv != Recv::Head {
                let why = if self.ieof_sent {
                    "100 Continue after a preview that ended with ieof (RFC 3507 4.5)".to_string()
                } else {
                    format!("{status} while no preview waits for an answer")
                };
                return Err(self.violation(why));
            }
            self.continued = true;
            self.skip_end = true;
            if let Some(rest) = self.held.take() {
                self.out.data(rest)?;
            }
            if self.body_ended || self.length.is_some_and(|n| self.sent == n) {
                self.finish_body()?;
            } else {
                self.send = Send::Body;
            }
            return Ok(ClientEvent::Continue);
        }
        if self.recv != Recv::Head {
            return Err(self.violation(format!("a second final response ({status})")));
        }
        let answers_preview = self.preview.is_some() && !self.continued;
        if status == 204 && !self.allow_204 && !answers_preview {
            return Err(self.violation(
                "204 outside a preview to a request without Allow: 204 (RFC 3507 4.6)".into(),
            ));
        }
        if status == 206 && !self.allow_206 {
            return Err(self.violation("206 to a request without Allow: 206".into()));
        }
        if self.send == Send::AwaitContinue {
            // A final answer to a waiting preview ends the request: the held rest never goes.
            self.send = Send::Done;
            self.held = None;
        }
        let server_close = says_close(&res.headers);
        let still_sending = self.send != Send::Done;
        if still_sending && (status == 204 || status >= 400 || server_close) {
            // The server will not read the rest: stop, and close after the answer.
            self.abort_body();
        }
        if self.close.is_none() {
            self.close = if self.client_close {
                Some(CloseReason::ClientAsked)
            } else if server_close {
                Some(CloseReason::ServerAsked)
            } else if status >= 400 {
                Some(CloseReason::ErrorStatus(status))
            } else {
                None
            };
        }
        self.recv = Recv::Body;
        Ok(if status == 204 {
            ClientEvent::Unmodified(res)
        } else {
            ClientEvent::Response(res)
        })
    }
}
