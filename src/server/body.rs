//! [`Body`]: the request body a service owns, and [`BodyError`].
//!
//! The connection task decodes the body and hands it over piece by piece through a queue;
//! the body tells the connection task, through a second queue (see `link`), what it has taken (which
//! paces reading: the connection reads ahead at most a window of bytes) and when it wants
//! the body past a preview (the connection then sends `100 Continue`, lazily, as hyper does
//! for `Expect: 100-continue`). The body is `'static`: a service may move it, spawn it or
//! wrap it; the rules of the protocol stay with the connection task.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

pub(crate) use link::{link, Receiver, Sender};

mod link;

use crate::proto::error::{Error, ErrorKind};

/// What the connection task hands to a [`Body`].
#[derive(Debug)]
pub(crate) enum Piece {
    Data(Bytes),
    /// The preview is over and the client waits for `100 Continue` before sending more.
    PreviewEnd,
    /// The body is complete.
    End,
    Failed(BodyError),
}

/// What a [`Body`] asks of the connection task.
#[derive(Debug)]
pub(crate) enum Control {
    /// The service has taken this many bytes in all (and looked at every piece but the one
    /// it asks for now).
    Seen(u64),
    /// The service reads past the preview: send `100 Continue`.
    Continue,
    /// Start a streaming echo (see [`Body::start_echo`]).
    StartEcho {
        holdback: usize,
        done: oneshot::Sender<Result<(), BodyError>>,
    },
}

/// Why reading a body failed. The server answers such a request itself (400 for a malformed
/// body, 408 for a stalled client, nothing when the connection is gone), whatever the service
/// returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BodyError {
    /// The client sent nothing for [`ServerConfig::read_timeout`], or the body took longer
    /// than [`ServerConfig::body_timeout`] or fell below [`ServerConfig::min_rate`].
    ///
    /// [`ServerConfig::read_timeout`]: super::ServerConfig::read_timeout
    /// [`ServerConfig::body_timeout`]: super::ServerConfig::body_timeout
    /// [`ServerConfig::min_rate`]: super::ServerConfig::min_rate
    Timeout,
    /// The client closed the connection in the middle of the body.
    Eof,
    /// The body was malformed, or the body was used against its rules (see the message).
    Protocol(Error),
    /// The connection failed.
    Io(Arc<io::Error>),
    /// The server no longer serves this body: the transaction is over (the service already
    /// answered, or the connection closed).
    Closed,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Timeout => f.write_str("the client stalled"),
            BodyError::Eof => f.write_str("the client closed the connection inside the body"),
            BodyError::Protocol(e) => write!(f, "malformed body: {e}"),
            BodyError::Io(e) => write!(f, "connection error: {e}"),
            BodyError::Closed => f.write_str("the transaction of this body is over"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Protocol(e) => Some(e),
            BodyError::Io(e) => Some(&**e),
            _ => None,
        }
    }
}

impl BodyError {
    pub(crate) fn misuse(msg: &'static str) -> BodyError {
        BodyError::Protocol(Error::new(ErrorKind::InvalidState, 0, msg))
    }
}

/// The encapsulated body of a REQMOD or RESPMOD, owned by the service.
///
/// Read it with [`Body::data`] (or as an [`http_body::Body`]): the pieces come as the client
/// sends them, the preview first. Reading past the end of a preview makes the server send
/// `100 Continue`; a service that answers without reading further gets its answer sent in the
/// preview (where 204 is allowed even without `Allow: 204`). [`Body::preview`] looks at the
/// preview without asking for more, and [`Body::start_echo`] starts a streaming 200 echo.
///
/// A request without a body has an empty one (its first [`Body::data`] is `Ok(None)`).
pub struct Body {
    pieces: Option<Receiver<Piece>>,
    control: Option<Sender<Control>>,
    /// Preview pieces looked at by [`Body::preview`], handed out again first.
    replay: VecDeque<Bytes>,
    /// A marker met by [`Body::preview`] after the replayed pieces.
    marker: Option<Piece>,
    previewed: bool,
    done: bool,
    failed: Option<BodyError>,
    read: u64,
    reported: u64,
    echoing: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("read", &self.read)
            .field("done", &self.done)
            .finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl Body {
    pub(crate) fn new(
        pieces: Option<Receiver<Piece>>,
        control: Sender<Control>,
        previewed: bool,
    ) -> Self {
        Body {
            done: pieces.is_none(),
            pieces,
            control: Some(control),
            replay: VecDeque::new(),
            marker: None,
            previewed,
            failed: None,
            read: 0,
            reported: 0,
            echoing: false,
        }
    }

    /// A body with no bytes.
    pub fn empty() -> Self {
        Body {
            pieces: None,
            control: None,
            replay: VecDeque::new(),
            marker: None,
            previewed: false,
            done: true,
            failed: None,
            read: 0,
            reported: 0,
            echoing: false,
        }
    }

    /// A body of these bytes, in one piece: for testing a service without a server.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let (tx, rx, _, _) = link();
        let _ = tx.send(Piece::Data(bytes.into()));
        let _ = tx.send(Piece::End);
        let mut b = Body::empty();
        b.pieces = Some(rx);
        b.done = false;
        b
    }

    /// Bytes of body handed to the service so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// True once the whole body has been handed out (or there was none).
    pub fn is_end(&self) -> bool {
        self.done && self.replay.is_empty()
    }

    fn tell(&self, c: Control) {
        if let Some(tx) = &self.control {
            // The connection task may be gone; then the next read says so.
            let _ = tx.send(c);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.failed = Some(e.clone());
        Poll::Ready(Some(Err(e)))
    }

    /// The next piece of the body, or `None` at its end (a poll version of [`Body::data`]).
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if let Some(e) = &self.failed {
            return Poll::Ready(Some(Err(e.clone())));
        }
        if self.read > self.reported {
            // Everything handed out so far has been looked at: the connection may read on,
            // and a streaming echo may pass it on.
            self.reported = self.read;
            self.tell(Control::Seen(self.read));
        }
        if let Some(b) = self.replay.pop_front() {
            self.read += b.len() as u64;
            return Poll::Ready(Some(Ok(b)));
        }
        match self.marker.take() {
            Some(Piece::PreviewEnd) => self.tell(Control::Continue),
            Some(Piece::End) => self.done = true,
            Some(Piece::Failed(e)) => return self.fail(e),
            _ => {}
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let Some(rx) = &mut self.pieces else {
                self.done = true;
                return Poll::Ready(None);
            };
            match ready!(rx.poll_recv(cx)) {
                Some(Piece::Data(b)) => {
                    self.read += b.len() as u64;
                    return Poll::Ready(Some(Ok(b)));
                }
                Some(Piece::PreviewEnd) => self.tell(Control::Continue),
                Some(Piece::End) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Some(Piece::Failed(e)) => return self.fail(e),
                None => return self.fail(BodyError::Closed),
            }
        }
    }

    /// The next piece of the body, or `None` at its end. The first call past a preview makes
    /// the server send `100 Continue`. After an error the server answers 400 or 408 (or just
    /// closes), whatever the service returns.
    pub async fn data(&mut self) -> Result<Option<Bytes>, BodyError> {
        std::future::poll_fn(|cx| self.poll_data(cx))
            .await
            .transpose()
    }

    /// The preview, whole, without asking the client for more: `None` when the request
    /// came without one. Its pieces stay in the body: [`Body::data`] hands them out first.
    /// A service that decides on the preview alone answers without reading on, and the
    /// client sends nothing more. Must be called before [`Body::data`].
    pub async fn preview(&mut self) -> Result<Option<Bytes>, BodyError> {
        if !self.previewed {
            return Ok(None);
        }
        if self.read > 0 {
            return Err(BodyError::misuse(
                "Body::preview must come before the body is read",
            ));
        }
        while self.marker.is_none() && !self.done {
            let Some(rx) = &mut self.pieces else { break };
            match rx.recv().await {
                Some(Piece::Data(b)) => self.replay.push_back(b),
                Some(m) => self.marker = Some(m),
                None => self.marker = Some(Piece::Failed(BodyError::Closed)),
            }
        }
        if let Some(Piece::Failed(e)) = &self.marker {
            return Err(e.clone());
        }
        let mut all = BytesMut::new();
        for b in &self.replay {
            all.extend_from_slice(b);
        }
        Ok(Some(all.freeze()))
    }

    /// Starts answering now with a 200 that echoes the client's message, while the body is
    /// still being read: the pieces [`Body::data`] hands out are sent back as the service
    /// moves past them. For scanners behind clients that wait for the answer before sending
    /// more (squid keeps the whole body, 64 KiB at most, until the final answer when a
    /// preview was offered): scan each piece, then let it through.
    ///
    /// The answer is then fixed: if the service returns [`Reply::unmodified`] the rest of the
    /// body is forwarded and the echo ends normally; any other reply (a late finding), or an
    /// error, closes the connection without the last chunk, so the client sees a failed
    /// answer, never a complete one. Bytes are only echoed once the service has asked for
    /// the piece after theirs, and the last `holdback` bytes it saw are kept back too: a
    /// scanner that confirms a match only some bytes after it ends (a card number needs the
    /// byte after its last digit) sets `holdback` to that distance, so the bytes of a
    /// finding are not passed on.
    ///
    /// Must be called before [`Body::data`] handed out any byte; errors otherwise, and for
    /// requests without a body.
    ///
    /// [`Reply::unmodified`]: super::Reply::unmodified
    pub async fn start_echo(&mut self, holdback: usize) -> Result<(), BodyError> {
        if self.echoing {
            return Ok(());
        }
        if self.pieces.is_none() || self.control.is_none() {
            return Err(BodyError::misuse(
                "start_echo needs a REQMOD or RESPMOD with a body",
            ));
        }
        if self.read > 0 {
            return Err(BodyError::misuse(
                "start_echo must come before the body is read",
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.tell(Control::StartEcho { holdback, done: tx });
        rx.await.unwrap_or(Err(BodyError::Closed))?;
        self.echoing = true;
        Ok(())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.is_end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_from_bytes_reads_back_and_ends() {
        let mut b = Body::from_bytes("hello");
        assert_eq!(b.data().await.unwrap().unwrap(), "hello");
        assert_eq!(b.data().await.unwrap(), None);
        assert!(b.is_end());
        assert_eq!(b.bytes_read(), 5);
        let mut e = Body::empty();
        assert_eq!(e.data().await.unwrap(), None);
        assert!(e.start_echo(0).await.is_err());
    }

    #[tokio::test]
    async fn the_preview_is_replayed_and_continue_is_asked_lazily() {
        let (tx, rx, ctx, mut crx) = link();
        let mut b = Body::new(Some(rx), ctx, true);
        tx.send(Piece::Data(Bytes::from_static(b"ab"))).unwrap();
        tx.send(Piece::Data(Bytes::from_static(b"cd"))).unwrap();
        tx.send(Piece::PreviewEnd).unwrap();
        assert_eq!(b.preview().await.unwrap().unwrap(), "abcd");
        assert!(
            crx.try_recv().is_none(),
            "looking at the preview asks nothing"
        );
        assert_eq!(b.data().await.unwrap().unwrap(), "ab");
        assert_eq!(b.data().await.unwrap().unwrap(), "cd");
        tx.send(Piece::Data(Bytes::from_static(b"ef"))).unwrap();
        tx.send(Piece::End).unwrap();
        assert_eq!(b.data().await.unwrap().unwrap(), "ef");
        let got: Vec<String> = std::iter::from_fn(|| crx.try_recv())
            .map(|c| format!("{c:?}"))
            .collect();
        assert_eq!(got, ["Seen(2)", "Seen(4)", "Continue"]);
        assert_eq!(b.data().await.unwrap(), None);
        // The connection task gone in the middle of a body: an error, the same each time.
        let (tx, rx, ctx, _crx) = link();
        let mut b = Body::new(Some(rx), ctx, false);
        drop(tx);
        assert!(matches!(b.data().await, Err(BodyError::Closed)));
        assert!(matches!(b.data().await, Err(BodyError::Closed)));
    }
}
