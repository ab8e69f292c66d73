//! Bodies both ways: [`BodySource`], what a request carries (memory, a file, any
//! `AsyncRead`, any `http_body::Body`), and [`AnswerBody`], the answer's body as an owned
//! `http_body::Body` a caller can forward without buffering it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::client::ClientError;

/// Bytes read from a reader or file source in one go (and so the largest chunk sent).
pub(crate) const READ_SIZE: usize = 64 * 1024;

use crate::BoxError;

type BoxBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// The body of a request. Memory and files can be sent again, so a failed attempt is
/// retried on another server; a reader or a stream is read once, so it is not.
#[non_exhaustive]
pub enum BodySource {
    /// No body (`null-body`).
    None,
    /// A body in memory, sent as it is (not copied).
    Bytes(Bytes),
    /// A file, opened (again) for each attempt and streamed.
    File(PathBuf),
    /// A reader with an optional known length; see [`BodySource::reader`].
    Reader(
        Mutex<Option<Box<dyn AsyncRead + Send + Unpin>>>,
        Option<u64>,
    ),
    /// An `http_body::Body` with an optional known length; see [`BodySource::stream`].
    Stream(Mutex<Option<BoxBody>>, Option<u64>),
}

impl fmt::Debug for BodySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodySource::None => f.write_str("None"),
            BodySource::Bytes(b) => write!(f, "Bytes({})", b.len()),
            BodySource::File(p) => write!(f, "File({})", p.display()),
            BodySource::Reader(_, n) => write!(f, "Reader({n:?})"),
            BodySource::Stream(_, n) => write!(f, "Stream({n:?})"),
        }
    }
}

impl From<Bytes> for BodySource {
    fn from(b: Bytes) -> Self {
        BodySource::Bytes(b)
    }
}

impl From<Vec<u8>> for BodySource {
    fn from(v: Vec<u8>) -> Self {
        BodySource::Bytes(v.into())
    }
}

impl From<&'static [u8]> for BodySource {
    fn from(s: &'static [u8]) -> Self {
        BodySource::Bytes(Bytes::from_static(s))
    }
}

impl From<&'static str> for BodySource {
    fn from(s: &'static str) -> Self {
        BodySource::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl BodySource {
    /// A file, streamed from disk (opened again for a retry).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        BodySource::File(path.into())
    }

    /// A one-shot reader of known or unknown length (unknown: sent chunked to the end).
    pub fn reader(r: impl AsyncRead + Send + Unpin + 'static, len: Option<u64>) -> Self {
        BodySource::Reader(Mutex::new(Some(Box::new(r))), len)
    }

    /// A one-shot `http_body::Body` (a hyper or axum body, an [`AnswerBody`] being
    /// forwarded ...). Its length is its exact size hint when it has one. Trailers are
    /// dropped; an error of the body fails the call with [`ClientError::Body`].
    pub fn stream<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let len = body.size_hint().exact();
        BodySource::Stream(Mutex::new(Some(Box::pin(IntoBytes(Box::pin(body))))), len)
    }

    pub(crate) fn is_none(&self) -> bool {
        matches!(self, BodySource::None)
    }

    pub(crate) async fn len(&self) -> io::Result<Option<u64>> {
        Ok(match self {
            BodySource::None => Some(0),
            BodySource::Bytes(b) => Some(b.len() as u64),
            BodySource::File(p) => Some(tokio::fs::metadata(p).await?.len()),
            BodySource::Reader(_, n) | BodySource::Stream(_, n) => *n,
        })
    }

    /// The bytes to send for one attempt.
    pub(crate) async fn open(&self) -> io::Result<Option<Source>> {
        let used = || io::Error::other("a one-shot body was already sent and cannot be read again");
        Ok(match self {
            BodySource::None => None,
            BodySource::Bytes(b) => Some(Source::Whole(Some(b.clone()))),
            BodySource::File(p) => Some(Source::Read(Box::new(tokio::fs::File::open(p).await?))),
            BodySource::Reader(r, _) => Some(Source::Read(
                r.lock().expect("not poisoned").take().ok_or_else(used)?,
            )),
            BodySource::Stream(b, _) => Some(Source::Body(
                b.lock().expect("not poisoned").take().ok_or_else(used)?,
            )),
        })
    }

    pub(crate) fn retryable(&self) -> bool {
        !matches!(self, BodySource::Reader(..) | BodySource::Stream(..))
    }
}

/// Any body with `Buf` data, as `Bytes` frames (`copy_to_bytes` does not copy `Bytes`).
/// The body is boxed so that this adapter is `Unpin` without a pin projection.
struct IntoBytes<B>(Pin<Box<B>>);

impl<B> Body for IntoBytes<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().0.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(f))) => {
                Poll::Ready(Some(Ok(f.map_data(|mut d| d.copy_to_bytes(d.remaining())))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// One attempt's reader over a [`BodySource`].
pub(crate) enum Source {
    /// Memory: handed over whole, once.
    Whole(Option<Bytes>),
    Read(Box<dyn AsyncRead + Send + Unpin>),
    Body(BoxBody),
}

impl Source {
    /// The next piece of body, `None` at its end.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Source::Whole(b) => Ok(b.take().filter(|b| !b.is_empty())),
            Source::Read(r) => {
                let mut chunk = BytesMut::with_capacity(READ_SIZE);
                let n = r.read_buf(&mut chunk).await?;
                Ok((n > 0).then(|| chunk.freeze()))
            }
            Source::Body(b) => loop {
                match std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            if !d.is_empty() {
                                return Ok(Some(d));
                            }
                        }
                    }
                }
            },
        }
    }
}

/// What the connection's driver hands to an [`AnswerBody`].
pub(crate) enum Piece {
    Data(Bytes),
    /// The end; for a 206, where the original body continues.
    End(Option<u64>),
}

/// Frames the driver may run ahead of a slow reader: the backpressure bound of a stream.
pub(crate) const AHEAD: usize = 4;

pub(crate) type PieceSender = mpsc::Sender<Result<Piece, ClientError>>;

/// The body of an answer, streamed from the connection as it arrives: an owned
/// `http_body::Body` of `Bytes` frames, to forward (to hyper, axum, a file) without holding
/// it in memory. The connection goes back to the pool once the body has been read to its
/// end; dropping the body early closes it instead.
///
/// Errors after the head arrived (the server reset, the deadline passed, the answer grew
/// past [`ClientConfig::max_answer`](super::ClientConfig::max_answer)) come out of
/// `poll_frame` as [`ClientError`]s; they are not retried on another server, since part of
/// the answer may already have been used.
pub struct AnswerBody {
    state: State,
}

enum State {
    Empty,
    /// The pieces, and the server they come from (for errors).
    Streaming(mpsc::Receiver<Result<Piece, ClientError>>, String),
    Done(Option<u64>),
}

impl fmt::Debug for AnswerBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.state {
            State::Empty => "empty",
            State::Streaming(..) => "streaming",
            State::Done(_) => "done",
        };
        f.debug_tuple("AnswerBody").field(&s).finish()
    }
}

impl AnswerBody {
    /// A body with no bytes (204, OPTIONS, error answers).
    pub fn empty() -> Self {
        AnswerBody {
            state: State::Empty,
        }
    }

    pub(crate) fn streaming(
        rx: mpsc::Receiver<Result<Piece, ClientError>>,
        server: String,
    ) -> Self {
        AnswerBody {
            state: State::Streaming(rx, server),
        }
    }

    /// The next piece of the body, `None` at its end (the same as `poll_frame`, for callers
    /// without `http-body-util`).
    pub async fn data(&mut self) -> Option<Result<Bytes, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx))
            .await
            .map(|r| r.map(|f| f.into_data().unwrap_or_default()))
    }

    /// Reads the whole body into memory (the answer size is already capped by
    /// [`ClientConfig::max_answer`](super::ClientConfig::max_answer)).
    pub async fn to_bytes(mut self) -> Result<Bytes, ClientError> {
        let mut all = BytesMut::new();
        while let Some(d) = self.data().await {
            all.extend_from_slice(&d?);
        }
        Ok(all.freeze())
    }

    /// For a 206 read to its end: the offset in the original body from which the client is
    /// to continue with the original bytes (`use-original-body`).
    pub fn use_original_body(&self) -> Option<u64> {
        match self.state {
            State::Done(n) => n,
            _ => None,
        }
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = self.get_mut();
        let State::Streaming(rx, server) = &mut this.state else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Piece::Data(d)))) => Poll::Ready(Some(Ok(Frame::data(d)))),
            Poll::Ready(Some(Ok(Piece::End(n)))) => {
                this.state = State::Done(n);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.state = State::Done(None);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let e = ClientError::Io {
                    server: std::mem::take(server),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection's driver stopped before the answer's end",
                    ),
                };
                this.state = State::Done(None);
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !matches!(self.state, State::Streaming(..))
    }
}
