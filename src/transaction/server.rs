//! The server side of a transaction: read one request, send its answer.

use bytes::Bytes;

use crate::proto::chunked::LastChunk;
use crate::proto::decode::{RequestDecoder, RequestEvent};
use crate::proto::encode::Encoder;
use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::head::Method;
use crate::proto::message::{Request, Response};

use super::{says_close, state_error, CloseReason, Reuse};

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
///
/// ```
/// use icap::{ServerEvent, ServerTransaction, Reuse};
/// use icap::{RequestDecoder, Response};
///
/// let mut tx = ServerTransaction::new(RequestDecoder::default());
/// tx.feed(b"REQMOD icap://dlp.example/reqmod ICAP/1.0\r\nHost: dlp.example\r\nAllow: 204\r\n\
///           Preview: 0\r\nEncapsulated: req-hdr=0, req-body=38\r\n\r\n\
///           POST /f HTTP/1.1\r\nHost: up.example\r\n\r\n0\r\n\r\n");
/// assert!(matches!(tx.poll_event()?, Some(ServerEvent::Request(_))));
/// assert!(matches!(tx.poll_event()?, Some(ServerEvent::PreviewEnd { ieof: false })));
/// // Decide on the (empty) preview: unmodified, so 204, allowed in a preview.
/// tx.respond(Response::no_content("dlp-1").build()?)?;
/// let wire = tx.outgoing().to_bytes();
/// assert!(wire.starts_with(b"ICAP/1.0 204 "));
/// assert_eq!(tx.reuse(), Reuse::Keep);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
