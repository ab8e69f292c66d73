//! The rules of one ICAP transaction, as two small state machines without I/O.
//!
//! [`ClientTransaction`] sends one request and reads its answer; [`ServerTransaction`] reads
//! one request and sends the answer. Each drives the codec (an [`Encoder`] for what goes out,
//! a [`Decoder`](crate::Decoder) for what comes in) and owns what the codec does not know:
//! the preview stop-and-wait and `ieof` (RFC 3507 4.5), when 100, 204 and 206 are allowed
//! (4.5, 4.6), what a final response that comes while the request is still being sent
//! means, and whether the connection can carry another transaction afterwards ([`Reuse`]).
//! Sockets, timers and keeping the original message belong to the caller: feed received
//! bytes in, poll events out, and write [`ClientTransaction::outgoing`] /
//! [`ServerTransaction::outgoing`] to the peer.
//!
//! Each side of a transaction is two small enums, one per direction, because the two
//! messages overlap: a server may answer (and stream its answer) while the request is still
//! arriving, as c-icap's echo service does. [`ClientState`] and [`ServerState`] summarise
//! them. Illegal steps (a 100 after `ieof`, a 204 the client did not allow, body bytes
//! after the request was stopped) are errors, never panics; after a protocol or decoding
//! error the machine is failed and its connection must be closed.

use bytes::Bytes;

use crate::chunked::LastChunk;
use crate::decode::{RequestDecoder, RequestEvent, ResponseDecoder, ResponseEvent};
use crate::encode::Encoder;
use crate::error::{Error, ErrorKind, Result};
use crate::head::Method;
use crate::headers::Headers;
use crate::message::{Request, Response};

/// Whether a connection may carry another transaction once this one is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reuse {
    /// Not decided yet: the request or the response is not complete.
    Pending,
    /// Both messages are complete and the connection is clean: it may carry the next
    /// transaction.
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
    /// The request was stopped before its end (the server answered early and will not read
    /// more, or the caller gave up), so the two sides no longer agree on where the next
    /// message starts.
    UnfinishedRequest,
    /// The peer closed the connection.
    Eof,
    /// The decoder failed: the stream cannot be trusted.
    DecodeError,
    /// The peer broke a transaction rule (for example a 100 after `ieof`).
    ProtocolViolation,
}

fn state_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidState, 0, msg)
}

fn says_close(h: &Headers) -> bool {
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

/// Where a [`ServerTransaction`] stands, seen from the application.
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
    /// A final response head is queued; its body is going out (the request may still be
    /// arriving after an early answer: keep polling).
    Responding,
    /// The response is complete (after an early answer the request may still be arriving).
    Done,
    /// An error ended the transaction; answer with an error status if possible, then close.
    Failed,
}

/// The request direction of a server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SRecv {
    Head,
    Preview,
    Decide { ieof: bool },
    Body,
    Done,
}

/// The response direction of a server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SSend {
    None,
    Body,
    Done,
}

/// What a [`ServerTransaction`] received.
// One head per transaction moves through this enum, like the codec's `RequestEvent`; boxing it would
// cost an allocation per request to save stack space for the small `Data` events.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The request is complete (not previewed, after 100 Continue, or a preview the
    /// application had already answered): respond if not done yet.
    End(LastChunk),
}

/// The server side of one transaction: reads a request and its preview, lets the
/// application decide, and checks that the answer is allowed.
///
/// The application may answer before the request has been read to its end (an early
/// answer, e.g. a block page decided on the first bytes) and may stream its answer while
/// still reading, as c-icap's echo service does. If it reads the request to its end
/// ([`ServerEvent::End`]) the connection stays reusable; if it will not, it calls
/// [`Self::abandon_request`] (before responding, so that `Connection: close` goes into the
/// answer) and the connection is closed.
#[derive(Debug)]
pub struct ServerTransaction {
    recv: SRecv,
    send: SSend,
    failed: bool,
    close: Option<CloseReason>,
    dec: RequestDecoder,
    out: Encoder,
    method: Option<Method>,
    allow_204: bool,
    allow_206: bool,
    client_close: bool,
    status: Option<u16>,
    /// A request without a body was read: the decoder still holds its `End`, which
    /// [`Self::poll_event`] hands out (or [`Self::into_decoder`] drops).
    end_pending: bool,
}

impl ServerTransaction {
    /// Starts reading one request with `decoder` (a fresh one, or the one of the previous
    /// transaction on this connection, from [`Self::into_decoder`]).
    pub fn new(decoder: RequestDecoder) -> Self {
        let failed = decoder.is_failed();
        ServerTransaction {
            recv: SRecv::Head,
            send: SSend::None,
            failed,
            close: failed.then_some(CloseReason::DecodeError),
            dec: decoder,
            out: Encoder::new(),
            method: None,
            allow_204: false,
            allow_206: false,
            client_close: false,
            status: None,
            end_pending: false,
        }
    }

    /// Where the transaction stands.
    pub fn state(&self) -> ServerState {
        match (self.failed, self.send, self.recv) {
            (true, SSend::None, _) => ServerState::Failed,
            (_, SSend::Done, _) => ServerState::Done,
            (_, SSend::Body, _) => ServerState::Responding,
            (_, SSend::None, SRecv::Head) => ServerState::Head,
            (_, SSend::None, SRecv::Preview) => ServerState::Preview,
            (_, SSend::None, SRecv::Decide { ieof }) => ServerState::Decide { ieof },
            (_, SSend::None, SRecv::Body) => ServerState::Body,
            (_, SSend::None, SRecv::Done) => ServerState::Answer,
        }
    }

    /// True while request body bytes may still arrive (preview or body), also after an early
    /// answer began, when [`Self::state`] already says `Responding`.
    pub fn receiving(&self) -> bool {
        matches!(self.recv, SRecv::Preview | SRecv::Body)
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

    /// Whether the connection can carry another transaction: [`Reuse::Keep`] once the
    /// request has been read and the response sent, both in full.
    pub fn reuse(&self) -> Reuse {
        match self.close {
            Some(r) => Reuse::Close(r),
            None if self.recv == SRecv::Done && self.send == SSend::Done => Reuse::Keep,
            None => Reuse::Pending,
        }
    }

    /// The decoder back, for the next request on a kept connection (pipelined bytes stay in
    /// it).
    pub fn into_decoder(mut self) -> RequestDecoder {
        self.take_pending_end();
        self.dec
    }

    /// Takes the `End` the decoder gives right after the head of a request without a body
    /// (no bytes needed): the next transaction must start at a head.
    fn take_pending_end(&mut self) -> bool {
        if !std::mem::take(&mut self.end_pending) {
            return false;
        }
        let end = self.dec.decode();
        debug_assert!(matches!(end, Ok(Some(RequestEvent::End(_)))), "{end:?}");
        true
    }

    fn fail(&mut self, reason: CloseReason, e: Error) -> Error {
        self.failed = true;
        self.close.get_or_insert(reason);
        e
    }

    /// Decodes what the client sent; `Ok(None)` means more bytes are needed, or the
    /// application must act (answer a preview or the request), or the request is over (what
    /// follows belongs to the next transaction). A decoder error (a malformed request, a
    /// preview longer than announced) fails the transaction; [`Self::respond`] can still
    /// send an error status before closing.
    pub fn poll_event(&mut self) -> Result<Option<ServerEvent>> {
        if self.failed {
            return Err(state_error("the transaction has failed"));
        }
        if self.take_pending_end() {
            return Ok(Some(ServerEvent::End(LastChunk::default())));
        }
        let reading = match self.recv {
            SRecv::Head => self.send == SSend::None,
            SRecv::Preview | SRecv::Body => self.close != Some(CloseReason::UnfinishedRequest),
            SRecv::Decide { .. } | SRecv::Done => false,
        };
        if !reading {
            return Ok(None);
        }
        let ev = match self.dec.decode() {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(CloseReason::DecodeError, e)),
        };
        let answered = self.send != SSend::None;
        Ok(Some(match ev {
            RequestEvent::Head(req) => {
                self.allow_204 = req.allows_204();
                self.allow_206 = req.allows_206();
                self.client_close = says_close(&req.headers);
                let previewed = matches!(req.method, Method::Reqmod | Method::Respmod)
                    && req.preview().is_some()
                    && req.body.is_some();
                self.method = Some(req.method.clone());
                // A request without a body is read in full with its head: nothing is left
                // to receive, so answering it leaves the connection clean.
                self.recv = if req.body.is_none() {
                    self.end_pending = true;
                    SRecv::Done
                } else if previewed {
                    SRecv::Preview
                } else {
                    SRecv::Body
                };
                ServerEvent::Request(req)
            }
            RequestEvent::Data(d) => ServerEvent::Data(d),
            RequestEvent::PreviewEnd if answered => {
                // Already answered: the client sends nothing more for this request.
                self.dec.finish_after_preview()?;
                self.recv = SRecv::Done;
                ServerEvent::End(LastChunk::default())
            }
            RequestEvent::PreviewEnd => {
                self.recv = SRecv::Decide { ieof: false };
                ServerEvent::PreviewEnd { ieof: false }
            }
            RequestEvent::End(_) if self.recv == SRecv::Preview && !answered => {
                self.recv = SRecv::Decide { ieof: true };
                ServerEvent::PreviewEnd { ieof: true }
            }
            RequestEvent::End(last) => {
                self.recv = SRecv::Done;
                ServerEvent::End(last)
            }
        }))
    }

    /// Answers a preview with `ICAP/1.0 100 Continue`: the client sends the rest of the body.
    /// Refused after a preview that ended with `ieof` (RFC 3507 4.5) and outside a preview.
    pub fn send_continue(&mut self) -> Result<()> {
        match (self.recv, self.send) {
            (SRecv::Decide { ieof: false }, SSend::None) => {
                self.dec.continue_after_preview()?;
                self.out.response_head(&Response::continue_100())?;
                self.recv = SRecv::Body;
                Ok(())
            }
            (SRecv::Decide { ieof: true }, _) => Err(state_error(
                "100 Continue after a preview that ended with ieof (RFC 3507 4.5)",
            )),
            _ => Err(state_error("100 Continue is only an answer to a preview")),
        }
    }

    /// Gives up reading the rest of the request (after deciding on its first bytes): the
    /// connection will be closed after the answer, and a later [`Self::respond`] says
    /// `Connection: close`.
    pub fn abandon_request(&mut self) {
        if self.recv != SRecv::Done {
            self.close.get_or_insert(CloseReason::UnfinishedRequest);
        }
    }

    /// Queues a final response (200, 204, 206 or an error). The rules: 204 only when the
    /// request allowed it or in answer to a preview (RFC 3507 4.6); 206 only with `Allow:
    /// 206`; the Encapsulated sections must suit the request's method. An error status,
    /// `Connection: close` from the client, a decoder failure or an abandoned request close
    /// the connection afterwards, and `Connection: close` is added to the response so the
    /// client knows. After a decoder failure only an error status may be sent. When the
    /// response has a body, send it with [`Self::send_data`] and end it with
    /// [`Self::end_response`] or, for a 206, [`Self::end_use_original_body`].
    pub fn respond(&mut self, mut res: Response) -> Result<()> {
        let status = res.status;
        if status < 200 {
            return Err(state_error("send 100 Continue with send_continue"));
        }
        if self.send != SSend::None {
            return Err(state_error("the request has already been answered"));
        }
        let no_request = self.failed || self.recv == SRecv::Head;
        if no_request && status < 400 {
            return Err(state_error(
                "no request has been read: only an error status can be sent",
            ));
        }
        let in_preview = matches!(self.recv, SRecv::Decide { .. } | SRecv::Preview);
        if status == 204 && !self.allow_204 && !in_preview {
            return Err(state_error(
                "204 outside a preview to a request without Allow: 204 (RFC 3507 4.6)",
            ));
        }
        if status == 206 && !self.allow_206 {
            return Err(state_error("206 to a request without Allow: 206"));
        }
        if status != 204 {
            if let Some(m) = self.method.as_ref().filter(|_| !no_request) {
                res.encapsulated().check_response(Some(m))?;
            }
        }
        match self.recv {
            SRecv::Decide { ieof: false } => {
                self.dec.finish_after_preview()?;
                self.recv = SRecv::Done;
            }
            SRecv::Decide { ieof: true } => self.recv = SRecv::Done,
            _ => {}
        }
        if self.close.is_none() {
            self.close = if self.client_close {
                Some(CloseReason::ClientAsked)
            } else if says_close(&res.headers) {
                Some(CloseReason::ServerAsked)
            } else if status >= 400 {
                Some(CloseReason::ErrorStatus(status))
            } else {
                None
            };
        }
        if self.close.is_some() && !says_close(&res.headers) {
            res.headers.insert("Connection", "close");
        }
        self.status = Some(status);
        self.out.response_head(&res)?;
        self.send = if res.body.is_some() {
            SSend::Body
        } else {
            SSend::Done
        };
        Ok(())
    }

    /// Sends a piece of the response body.
    pub fn send_data(&mut self, data: Bytes) -> Result<()> {
        if self.send != SSend::Body {
            return Err(state_error("no response body is being sent"));
        }
        self.out.data(data)?;
        Ok(())
    }

    /// Ends the response body with `0`.
    pub fn end_response(&mut self) -> Result<()> {
        if self.send != SSend::Body || self.status == Some(206) {
            return Err(state_error(
                "end_response ends a response body (a 206 ends with end_use_original_body)",
            ));
        }
        self.out.end(false)?;
        self.send = SSend::Done;
        Ok(())
    }

    /// Ends a 206 body with `0; use-original-body=offset`: the client takes the rest from
    /// its original body, from `offset` on.
    pub fn end_use_original_body(&mut self, offset: u64) -> Result<()> {
        if self.send != SSend::Body || self.status != Some(206) {
            return Err(state_error("use-original-body ends only a 206 body"));
        }
        self.out.end_use_original_body(offset)?;
        self.send = SSend::Done;
        Ok(())
    }

    /// Call when the client closed the connection. `Ok(true)` when it closed between
    /// requests (a clean end, no transaction), `Ok(false)` when an answer had been given;
    /// an [`ErrorKind::UnexpectedEof`] error when a request was cut short before any answer.
    pub fn on_eof(&mut self) -> Result<bool> {
        if self.send != SSend::None {
            self.close.get_or_insert(CloseReason::Eof);
            return Ok(false);
        }
        if self.recv == SRecv::Head && !self.failed && self.dec.decode_eof().is_ok() {
            self.close.get_or_insert(CloseReason::Eof);
            return Ok(true);
        }
        let at = self.dec.position();
        let e = Error::new(
            ErrorKind::UnexpectedEof,
            at,
            "the client closed the connection in the middle of a request",
        );
        Err(self.fail(CloseReason::Eof, e))
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
