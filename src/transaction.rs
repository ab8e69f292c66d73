//! The rules of one ICAP transaction, as two small state machines without I/O.
//!
//! [`ClientTransaction`] sends one request and reads its answer; [`ServerTransaction`] reads
//! one request and sends the answer. Each drives the codec (an [`Encoder`] for what goes out,
//! a [`Decoder`](crate::Decoder) for what comes in) and owns what the codec does not know:
//! the preview stop-and-wait and `ieof` (RFC 3507 4.5), when 100, 204 and 206 are allowed
//! (4.5, 4.6), what an early final response means, and whether the connection can carry
//! another transaction afterwards ([`Reuse`]). Sockets, timers and buffering of the original
//! message belong to the caller: feed received bytes in, poll events out, and write
//! [`ClientTransaction::outgoing`] / [`ServerTransaction::outgoing`] to the peer.
//!
//! Illegal steps (a 100 after `ieof`, a 204 the client did not allow, body bytes after the
//! server has answered) are returned as errors, never panics; after an error the machine is
//! [`Failed`](ClientState::Failed) and its connection must be closed.

use bytes::Bytes;

use crate::chunked::LastChunk;
use crate::decode::{Event, RequestDecoder, ResponseDecoder};
use crate::encode::Encoder;
use crate::error::{Error, ErrorKind, Result};
use crate::head::Method;
use crate::message::{Request, Response};

/// Whether a connection may carry another transaction once this one is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reuse {
    /// The transaction is not over yet.
    Pending,
    /// The connection is clean and may carry the next transaction.
    Keep,
    /// The connection must be closed, for this reason.
    Close(CloseReason),
}

/// Why a connection cannot be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The request said `Connection: close`.
    ClientAsked,
    /// The response said `Connection: close`.
    ServerAsked,
    /// The response was an error status; c-icap closes after every error, and after one the
    /// server may not have read the request to its end.
    ErrorStatus(u16),
    /// A final response came before the request was sent (or read) to its end, so the two
    /// sides no longer agree on where the next message starts.
    UnfinishedRequest,
    /// The peer closed the connection before the message ended.
    Eof,
    /// The decoder failed: the stream cannot be trusted.
    DecodeError,
    /// The peer broke a transaction rule (for example a 100 after `ieof`).
    ProtocolViolation,
}

fn state_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidState, 0, msg)
}

fn says_close(h: &crate::Headers) -> bool {
    h.has_token("Connection", "close")
}

/// The length of the body a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestBody {
    /// The request has no body (`null-body`).
    None,
    /// The body has exactly this many bytes: a body that fits the preview is sent with `ieof`
    /// at once, and more or fewer bytes than announced are an error.
    Known(u64),
    /// The length is not known in advance (a streamed origin response): the body ends when
    /// [`ClientTransaction::end_body`] is called.
    Unknown,
}

/// Where a [`ClientTransaction`] stands.
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
    /// A final response head arrived; its body is arriving.
    Response,
    /// The response has ended.
    Done,
    /// An error ended the transaction; close the connection.
    Failed,
}

/// What a [`ClientTransaction`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
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
/// ```
/// use bytes::Bytes;
/// use icap::transaction::{ClientEvent, ClientTransaction, RequestBody, Reuse};
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
    state: ClientState,
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
    /// The last chunk is queued, or the server answered the preview: nothing more goes out.
    request_complete: bool,
    /// The decoder reports an End after a 100 head; it belongs to no final response.
    skip_end: bool,
    reuse: Reuse,
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
        let preview = match request.method {
            Method::Reqmod | Method::Respmod => request.preview(),
            _ => None,
        };
        let mut tx = ClientTransaction {
            state: ClientState::AwaitResponse,
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
            request_complete: false,
            skip_end: false,
            reuse: Reuse::Pending,
        };
        tx.out.request_head(request);
        match (body, preview) {
            (RequestBody::None, _) => tx.request_complete = true,
            (RequestBody::Known(0), Some(_)) => tx.finish_preview(true),
            (RequestBody::Known(0), None) => tx.finish_body(),
            (RequestBody::Known(n), Some(0)) if n > 0 => tx.finish_preview(false),
            (_, Some(_)) => tx.state = ClientState::Preview,
            (_, None) => tx.state = ClientState::Body,
        }
        Ok(tx)
    }

    /// Where the transaction stands.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// True when the machine takes body bytes now (sending the preview, or the body).
    pub fn wants_body(&self) -> bool {
        matches!(self.state, ClientState::Preview | ClientState::Body)
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

    /// Whether the connection can carry another transaction (decided when it ends).
    pub fn reuse(&self) -> Reuse {
        self.reuse
    }

    /// The decoder back, for the next transaction on a kept connection; bytes of a pipelined
    /// next response stay buffered in it.
    pub fn into_decoder(self) -> ResponseDecoder {
        self.dec
    }

    fn finish_preview(&mut self, ieof: bool) {
        self.out.end(ieof);
        if ieof {
            self.ieof_sent = true;
            self.request_complete = true;
            self.state = ClientState::AwaitResponse;
        } else {
            self.state = ClientState::AwaitContinue;
        }
    }

    fn finish_body(&mut self) {
        self.out.end(false);
        self.request_complete = true;
        self.state = ClientState::AwaitResponse;
    }

    fn fail(&mut self, reason: CloseReason, e: Error) -> Error {
        self.state = ClientState::Failed;
        self.reuse = Reuse::Close(reason);
        e
    }

    /// Gives the next piece of body. In the preview, bytes beyond `Preview` are kept (a cheap
    /// `Bytes` view) and sent after `100 Continue`. With a [`RequestBody::Known`] length the
    /// body ends by itself on its last byte. Errors when [`Self::wants_body`] is false: the
    /// server's answer to the preview is awaited, or the server has already answered (stop
    /// sending).
    pub fn send_body(&mut self, data: Bytes) -> Result<()> {
        if !self.wants_body() {
            return Err(state_error(match self.state {
                ClientState::AwaitContinue => {
                    "the preview waits for the server's answer; send the rest after 100 Continue"
                }
                ClientState::Response | ClientState::Done => {
                    "the server has already answered; stop sending the body"
                }
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
        let at_end = |sent: u64, length: Option<u64>| length == Some(sent);
        if self.state == ClientState::Preview {
            let preview = self.preview.unwrap_or(0);
            let room = preview - self.sent;
            if len <= room {
                self.out.data(data);
                self.sent += len;
                if at_end(self.sent, self.length) {
                    self.finish_preview(true);
                } else if self.sent == preview && self.length.is_some() {
                    // Known to go on past the preview: no reason to wait for the next piece.
                    self.finish_preview(false);
                }
            } else {
                self.out.data(data.slice(..room as usize));
                self.held = Some(data.slice(room as usize..));
                self.sent += len;
                self.body_ended = at_end(self.sent, self.length);
                self.finish_preview(false);
            }
            return Ok(());
        }
        self.out.data(data);
        self.sent += len;
        if at_end(self.sent, self.length) {
            self.finish_body();
        }
        Ok(())
    }

    /// Ends the body. Inside the preview this sends `0; ieof` (the whole body fit); while the
    /// preview waits for an answer it is remembered and the body ends right after the held
    /// bytes once `100 Continue` comes. A no-op when the body has already ended, by a
    /// known length or because the server answered.
    pub fn end_body(&mut self) -> Result<()> {
        if let Some(n) = self.length {
            if self.sent < n && !self.request_complete {
                return Err(state_error(format!(
                    "body ended after {} of the {n} bytes announced",
                    self.sent
                )));
            }
        }
        match self.state {
            ClientState::Preview => self.finish_preview(true),
            ClientState::Body => self.finish_body(),
            ClientState::AwaitContinue => self.body_ended = true,
            ClientState::Failed => return Err(state_error("the transaction has failed")),
            _ => {}
        }
        Ok(())
    }

    /// Call when the server closed the connection. `Ok` when the response had ended; an
    /// [`ErrorKind::UnexpectedEof`] error otherwise (a partial 200 without its last chunk is
    /// never a complete answer).
    pub fn on_eof(&mut self) -> Result<()> {
        if self.state == ClientState::Done {
            self.reuse = Reuse::Close(CloseReason::Eof);
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
    /// needed (or the transaction is over).
    pub fn poll_event(&mut self) -> Result<Option<ClientEvent>> {
        loop {
            match self.state {
                ClientState::Done => return Ok(None),
                ClientState::Failed => return Err(state_error("the transaction has failed")),
                _ => {}
            }
            let ev = match self.dec.decode() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(CloseReason::DecodeError, e)),
            };
            match ev {
                Event::Head(res) => return self.on_head(res).map(Some),
                Event::Data(d) => return Ok(Some(ClientEvent::Data(d))),
                Event::End(_) if self.skip_end => self.skip_end = false,
                Event::End(last) => {
                    self.state = ClientState::Done;
                    return Ok(Some(ClientEvent::End(last)));
                }
                Event::PreviewEnd => {
                    let e = state_error("a response cannot end a preview");
                    return Err(self.fail(CloseReason::ProtocolViolation, e));
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
            if status != 100 || self.state != ClientState::AwaitContinue {
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
                self.out.data(rest);
            }
            if self.body_ended || self.length.is_some_and(|n| self.sent == n) {
                self.finish_body();
            } else {
                self.state = ClientState::Body;
            }
            return Ok(ClientEvent::Continue);
        }
        if matches!(self.state, ClientState::Response | ClientState::Done) {
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
        let early = !self.request_complete && self.state != ClientState::AwaitContinue;
        // A final answer to a waiting preview ends the request: the held rest is never sent.
        self.request_complete = true;
        self.held = None;
        self.reuse = Reuse::Close(if early {
            CloseReason::UnfinishedRequest
        } else if self.client_close {
            CloseReason::ClientAsked
        } else if says_close(&res.headers) {
            CloseReason::ServerAsked
        } else if status >= 400 {
            CloseReason::ErrorStatus(status)
        } else {
            self.reuse = Reuse::Keep;
            self.state = ClientState::Response;
            return Ok(self.final_event(res));
        });
        self.state = ClientState::Response;
        Ok(self.final_event(res))
    }

    fn final_event(&self, res: Response) -> ClientEvent {
        if res.status == 204 {
            ClientEvent::Unmodified(res)
        } else {
            ClientEvent::Response(res)
        }
    }
}

/// Where a [`ServerTransaction`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Waiting for a request head.
    Head,
    /// Reading preview bytes.
    Preview,
    /// The preview is complete; the application must answer: `100 Continue` (not after
    /// `ieof`), 204, or a final response.
    Decide {
        /// The preview held the whole body.
        ieof: bool,
    },
    /// Reading the body: all of it (no preview) or the rest after `100 Continue`.
    Body,
    /// The request has been read; the application must answer.
    Answer,
    /// A final response head is queued; its body is going out.
    Responding,
    /// The response is complete.
    Done,
    /// An error ended the transaction; answer with an error status if possible, then close.
    Failed,
}

/// What a [`ServerTransaction`] received.
// One head per transaction moves through this enum, like the codec's `Event`; boxing it would
// cost an allocation per request to save stack space for the small `Data` events.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The request head (ICAP head and encapsulated HTTP heads).
    Request(Request),
    /// A piece of the request body.
    Data(Bytes),
    /// The preview is complete: decide with [`ServerTransaction::send_continue`] (only when
    /// `ieof` is false) or [`ServerTransaction::respond`].
    PreviewEnd {
        /// The body ended inside the preview: no 100 Continue allowed.
        ieof: bool,
    },
    /// The request (not previewed, or after 100 Continue) is complete: respond.
    End(LastChunk),
}

/// The server side of one transaction: reads a request and its preview, lets the
/// application decide, and checks that the answer is allowed.
#[derive(Debug)]
pub struct ServerTransaction {
    state: ServerState,
    dec: RequestDecoder,
    out: Encoder,
    method: Option<Method>,
    allow_204: bool,
    allow_206: bool,
    client_close: bool,
    request_complete: bool,
    status: Option<u16>,
    reuse: Reuse,
}

impl ServerTransaction {
    /// Starts reading one request with `decoder` (a fresh one, or the one of the previous
    /// transaction on this connection, from [`Self::into_decoder`]).
    pub fn new(decoder: RequestDecoder) -> Self {
        ServerTransaction {
            state: if decoder.is_failed() {
                ServerState::Failed
            } else {
                ServerState::Head
            },
            dec: decoder,
            out: Encoder::new(),
            method: None,
            allow_204: false,
            allow_206: false,
            client_close: false,
            request_complete: false,
            status: None,
            reuse: Reuse::Pending,
        }
    }

    /// Where the transaction stands.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The bytes to write to the client, as a [`bytes::Buf`].
    pub fn outgoing(&mut self) -> &mut Encoder {
        &mut self.out
    }

    /// Passes bytes received from the client to the decoder.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.dec.feed(bytes);
    }

    /// The decoder, to read straight into its buffer.
    pub fn decoder_mut(&mut self) -> &mut RequestDecoder {
        &mut self.dec
    }

    /// Whether the connection can carry another transaction (decided when it ends).
    pub fn reuse(&self) -> Reuse {
        self.reuse
    }

    /// The decoder back, for the next request on a kept connection (pipelined bytes stay in
    /// it).
    pub fn into_decoder(self) -> RequestDecoder {
        self.dec
    }

    fn fail(&mut self, reason: CloseReason, e: Error) -> Error {
        self.state = ServerState::Failed;
        self.reuse = Reuse::Close(reason);
        e
    }

    /// Decodes what the client sent; `Ok(None)` means more bytes are needed, or the
    /// application must act (answer a preview or the request), or the transaction is over.
    /// A decoder error (a malformed request, a preview longer than announced) fails the
    /// transaction; [`Self::respond`] can still send an error status before closing.
    pub fn poll_event(&mut self) -> Result<Option<ServerEvent>> {
        match self.state {
            ServerState::Head | ServerState::Preview | ServerState::Body => {}
            ServerState::Failed => return Err(state_error("the transaction has failed")),
            _ => return Ok(None),
        }
        let ev = match self.dec.decode() {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(CloseReason::DecodeError, e)),
        };
        Ok(Some(match ev {
            Event::Head(req) => {
                self.allow_204 = req.allows_204();
                self.allow_206 = req.allows_206();
                self.client_close = says_close(&req.headers);
                let previewed = matches!(req.method, Method::Reqmod | Method::Respmod)
                    && req.preview().is_some()
                    && req.body.is_some();
                self.method = Some(req.method.clone());
                self.state = if previewed {
                    ServerState::Preview
                } else {
                    ServerState::Body
                };
                ServerEvent::Request(req)
            }
            Event::Data(d) => ServerEvent::Data(d),
            Event::PreviewEnd => {
                self.state = ServerState::Decide { ieof: false };
                ServerEvent::PreviewEnd { ieof: false }
            }
            Event::End(last) => {
                self.request_complete = true;
                if self.state == ServerState::Preview {
                    self.state = ServerState::Decide { ieof: true };
                    ServerEvent::PreviewEnd { ieof: true }
                } else {
                    self.state = ServerState::Answer;
                    ServerEvent::End(last)
                }
            }
        }))
    }

    /// Answers a preview with `ICAP/1.0 100 Continue`: the client sends the rest of the body.
    /// Refused after a preview that ended with `ieof` (RFC 3507 4.5) and outside a preview.
    pub fn send_continue(&mut self) -> Result<()> {
        match self.state {
            ServerState::Decide { ieof: false } => {
                self.dec.continue_after_preview()?;
                self.out.response_head(&Response::continue_100());
                self.state = ServerState::Body;
                Ok(())
            }
            ServerState::Decide { ieof: true } => Err(state_error(
                "100 Continue after a preview that ended with ieof (RFC 3507 4.5)",
            )),
            _ => Err(state_error("100 Continue is only an answer to a preview")),
        }
    }

    /// Queues a final response (200, 204, 206 or an error). The rules: 204 only when the
    /// request allowed it or in answer to a preview (RFC 3507 4.6); 206 only with `Allow:
    /// 206`; the Encapsulated sections must suit the request's method. An answer before the
    /// request was read to its end (an early response), an error status, or `Connection:
    /// close` from the client closes the connection afterwards, and `Connection: close` is
    /// added to the response so the client knows. After a decoder failure only an error
    /// status may be sent. When the response has a body, send it with [`Self::send_data`]
    /// and end it with [`Self::end_response`] or, for a 206, [`Self::end_use_original_body`].
    pub fn respond(&mut self, mut res: Response) -> Result<()> {
        let status = res.status;
        if status < 200 {
            return Err(state_error("send 100 Continue with send_continue"));
        }
        let unread = match self.state {
            ServerState::Head | ServerState::Failed if status >= 400 => None,
            ServerState::Head | ServerState::Failed => {
                return Err(state_error(
                    "no request has been read: only an error status can be sent",
                ))
            }
            ServerState::Responding | ServerState::Done => {
                return Err(state_error("the request has already been answered"))
            }
            ServerState::Decide { .. } | ServerState::Answer => Some(false),
            ServerState::Preview | ServerState::Body => Some(true),
        };
        let in_preview = matches!(
            self.state,
            ServerState::Decide { .. } | ServerState::Preview
        );
        if status == 204 && !self.allow_204 && !in_preview {
            return Err(state_error(
                "204 outside a preview to a request without Allow: 204 (RFC 3507 4.6)",
            ));
        }
        if status == 206 && !self.allow_206 {
            return Err(state_error("206 to a request without Allow: 206"));
        }
        if !matches!(status, 100 | 204) {
            if let Some(m) = &self.method {
                res.encapsulated().check_response(Some(m))?;
            }
        }
        if self.state == (ServerState::Decide { ieof: false }) {
            self.dec.finish_after_preview()?;
            self.request_complete = true;
        }
        let reason = match unread {
            None if self.state == ServerState::Failed => Some(CloseReason::DecodeError),
            None => Some(CloseReason::ErrorStatus(status)),
            Some(true) => Some(CloseReason::UnfinishedRequest),
            Some(false) if self.client_close => Some(CloseReason::ClientAsked),
            Some(false) if says_close(&res.headers) => Some(CloseReason::ServerAsked),
            Some(false) if status >= 400 => Some(CloseReason::ErrorStatus(status)),
            Some(false) => None,
        };
        if reason.is_some() && !says_close(&res.headers) {
            res.headers.insert("Connection", "close");
        }
        // A kept connection is only clean once the response body has gone out in full.
        self.reuse = match (reason, res.body.is_some()) {
            (Some(r), _) => Reuse::Close(r),
            (None, true) => Reuse::Pending,
            (None, false) => Reuse::Keep,
        };
        self.status = Some(status);
        self.out.response_head(&res);
        self.state = if res.body.is_some() {
            ServerState::Responding
        } else {
            ServerState::Done
        };
        Ok(())
    }

    /// Sends a piece of the response body.
    pub fn send_data(&mut self, data: Bytes) -> Result<()> {
        if self.state != ServerState::Responding {
            return Err(state_error("no response body is being sent"));
        }
        self.out.data(data);
        Ok(())
    }

    /// Ends the response body with `0`.
    pub fn end_response(&mut self) -> Result<()> {
        if self.state != ServerState::Responding || self.status == Some(206) {
            return Err(state_error(
                "end_response ends a response body (a 206 ends with end_use_original_body)",
            ));
        }
        self.out.end(false);
        self.finish();
        Ok(())
    }

    /// Ends a 206 body with `0; use-original-body=offset`: the client takes the rest from
    /// its original body, from `offset` on.
    pub fn end_use_original_body(&mut self, offset: u64) -> Result<()> {
        if self.state != ServerState::Responding || self.status != Some(206) {
            return Err(state_error("use-original-body ends only a 206 body"));
        }
        self.out.end_use_original_body(offset);
        self.finish();
        Ok(())
    }

    fn finish(&mut self) {
        self.state = ServerState::Done;
        if self.reuse == Reuse::Pending {
            self.reuse = Reuse::Keep;
        }
    }

    /// Call when the client closed the connection. `Ok(true)` when it closed between
    /// requests (a clean end, no transaction), `Ok(false)` when the answer had been sent;
    /// an [`ErrorKind::UnexpectedEof`] error when a request was cut short.
    pub fn on_eof(&mut self) -> Result<bool> {
        match self.state {
            ServerState::Head if self.dec.decode_eof().is_ok() => {
                self.reuse = Reuse::Close(CloseReason::Eof);
                self.state = ServerState::Done;
                Ok(true)
            }
            ServerState::Done | ServerState::Responding => {
                self.reuse = Reuse::Close(CloseReason::Eof);
                Ok(false)
            }
            _ => {
                let at = self.dec.position();
                let e = Error::new(
                    ErrorKind::UnexpectedEof,
                    at,
                    "the client closed the connection in the middle of a request",
                );
                Err(self.fail(CloseReason::Eof, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uri::IcapUri;

    fn req(preview: Option<u64>) -> Request {
        let mut b = Request::reqmod(&IcapUri::parse("icap://h/r").unwrap())
            .http_request_parts("POST", "/", [("Host", "x")])
            .with_body();
        if let Some(p) = preview {
            b = b.preview(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn client_start_states() {
        let start = |p, body| {
            ClientTransaction::new(&req(p), body, ResponseDecoder::default())
                .unwrap()
                .state()
        };
        assert_eq!(start(Some(5), RequestBody::Unknown), ClientState::Preview);
        assert_eq!(
            start(Some(5), RequestBody::Known(0)),
            ClientState::AwaitResponse
        );
        assert_eq!(
            start(Some(0), RequestBody::Known(3)),
            ClientState::AwaitContinue
        );
        assert_eq!(start(None, RequestBody::Known(3)), ClientState::Body);
        assert_eq!(
            start(None, RequestBody::Known(0)),
            ClientState::AwaitResponse
        );
    }

    #[test]
    fn failed_decoder_is_refused_or_failed() {
        let mut dec = ResponseDecoder::default();
        dec.feed(b"garbage\r\n\r\n");
        assert!(dec.decode().is_err());
        let e = ClientTransaction::new(&req(None), RequestBody::Unknown, dec).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
        let mut dec = RequestDecoder::default();
        dec.feed(b"garbage\r\n\r\n");
        assert!(dec.decode().is_err());
        let mut tx = ServerTransaction::new(dec);
        assert_eq!(tx.state(), ServerState::Failed);
        assert_eq!(tx.poll_event().unwrap_err().kind(), ErrorKind::InvalidState);
    }

    #[test]
    fn pipelined_next_response_stays_in_the_decoder() {
        let allow = Request::reqmod(&IcapUri::parse("icap://h/r").unwrap())
            .http_request_parts("GET", "/", [("Host", "x")])
            .allow_204()
            .build()
            .unwrap();
        let mut tx =
            ClientTransaction::new(&allow, RequestBody::None, ResponseDecoder::default()).unwrap();
        let no_content = b"ICAP/1.0 204 No Content\r\nISTag: \"t\"\r\n\r\n";
        tx.feed(no_content);
        assert!(matches!(
            tx.poll_event().unwrap(),
            Some(ClientEvent::Unmodified(_))
        ));
        // The 204 is not over until its End; a second head before it cannot be accepted.
        tx.feed(no_content);
        assert!(matches!(
            tx.poll_event().unwrap(),
            Some(ClientEvent::End(_))
        ));
        // After Done the next response belongs to the next transaction.
        assert_eq!(tx.poll_event().unwrap(), None);
        assert!(!tx.into_decoder().is_idle());
    }
}
