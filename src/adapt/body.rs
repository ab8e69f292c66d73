//! The bodies of the layer: [`Tee`], which feeds the original to the ICAP client while
//! holding a bounded copy, and [`AdaptBody`], what the inner service and the caller get
//! (the original, its replay, an adapted body, a page).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::client::AnswerBody;
use crate::BoxError;

/// What the client leaves of the original when it lets go of it: the held copy (when it
/// still starts at byte 0), how far it read, and the unread rest.
pub(crate) struct Returned<B> {
    held: Option<VecDeque<Bytes>>,
    read: u64,
    /// Taken from the body but not yet handed to the client: it comes before `rest`.
    pending: Bytes,
    rest: Option<Pin<Box<B>>>,
    failed: bool,
}

impl<B> Returned<B> {
    /// The original from byte `offset`, when what was held and what is left cover it.
    pub(crate) fn replay_from(self, offset: u64) -> Option<AdaptBody<B>> {
        if self.failed {
            return None;
        }
        let (mut held, skip) = match self.held {
            Some(h) => (h, offset),
            None if offset >= self.read => (VecDeque::new(), offset - self.read),
            None => return None,
        };
        if !self.pending.is_empty() {
            held.push_back(self.pending);
        }
        Some(AdaptBody {
            kind: Kind::Replay {
                held,
                rest: self.rest,
                skip,
            },
        })
    }
}

/// The original on its way to the ICAP client. Holds what passes up to `max` bytes; past
/// that the copy is dropped (only an answer asking for bytes beyond it then fails). When
/// dropped (the transaction ended or failed) it sends the unread rest back.
pub(crate) struct Tee<B> {
    body: Option<Pin<Box<B>>>,
    held: Option<VecDeque<Bytes>>,
    held_len: usize,
    max: usize,
    read: u64,
    /// The unsent rest of a frame larger than [`PIECE`].
    pending: Bytes,
    failed: bool,
    back: Option<oneshot::Sender<Returned<B>>>,
}

/// Most bytes handed to the client at once: a body made of one huge frame (a `Full` of
/// megabytes) is cut so that what the client takes, and so what must be held, follows what
/// it sends rather than the frame size.
const PIECE: usize = 64 * 1024;

impl<B> Tee<B> {
    pub(crate) fn new(body: B, max: usize, back: oneshot::Sender<Returned<B>>) -> Self {
        Tee {
            body: Some(Box::pin(body)),
            held: Some(VecDeque::new()),
            held_len: 0,
            max,
            read: 0,
            pending: Bytes::new(),
            failed: false,
            back: Some(back),
        }
    }
}

impl<B> Tee<B> {
    /// Counts `d` as read and keeps a copy while the held bound allows.
    fn hold(&mut self, d: Bytes) -> Bytes {
        self.read += d.len() as u64;
        if let Some(h) = self.held.as_mut() {
            if self.held_len + d.len() <= self.max {
                self.held_len += d.len();
                h.push_back(d.clone());
            } else {
                self.held = None;
            }
        }
        d
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        if let Some(tx) = self.back.take() {
            let _ = tx.send(Returned {
                held: self.held.take(),
                read: self.read,
                pending: std::mem::take(&mut self.pending),
                rest: self.body.take(),
                failed: self.failed,
            });
        }
    }
}

impl<B> Body for Tee<B>
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
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(PIECE);
                let d = this.pending.split_to(n);
                return Poll::Ready(Some(Ok(Frame::data(this.hold(d)))));
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(body.as_mut().poll_frame(cx)) {
                None => {
                    this.body = None;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.failed = true;
                    this.body = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(f)) => {
                    // Trailers are not sent to ICAP.
                    let Ok(mut d) = f.into_data() else { continue };
                    this.pending = d.copy_to_bytes(d.remaining());
                    continue;
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or(SizeHint::with_exact(0), |b| b.size_hint())
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

/// The body the layer hands on: the original untouched, the original replayed after a 204
/// (held bytes, then the rest), an adapted body from the ICAP server (followed by the
/// original from an offset after a 206), or a page of its own.
pub struct AdaptBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Empty,
    Full(Option<Bytes>),
    Original(Pin<Box<B>>),
    Replay {
        held: VecDeque<Bytes>,
        rest: Option<Pin<Box<B>>>,
        skip: u64,
    },
    Answer {
        answer: AnswerBody,
        original: Option<oneshot::Receiver<Returned<B>>>,
    },
    /// A 206 whose answer ended: waiting for the original to continue from `offset`.
    Splice {
        original: oneshot::Receiver<Returned<B>>,
        offset: u64,
    },
}

impl<B> fmt::Debug for AdaptBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Original(_) => "original",
            Kind::Replay { .. } => "replay",
            Kind::Answer { .. } => "answer",
            Kind::Splice { .. } => "splice",
        };
        f.debug_tuple("AdaptBody").field(&k).finish()
    }
}

impl<B> AdaptBody<B> {
    /// A body with no bytes.
    pub fn empty() -> Self {
        AdaptBody { kind: Kind::Empty }
    }

    /// A body of these bytes.
    pub fn full(b: Bytes) -> Self {
        AdaptBody {
            kind: Kind::Full(Some(b)),
        }
    }

    /// The original body, passed on untouched.
    pub fn original(b: B) -> Self {
        AdaptBody {
            kind: Kind::Original(Box::pin(b)),
        }
    }

    pub(crate) fn answer(
        answer: AnswerBody,
        original: Option<oneshot::Receiver<Returned<B>>>,
    ) -> Self {
        AdaptBody {
            kind: Kind::Answer { answer, original },
        }
    }
}

fn short() -> BoxError {
    "the ICAP server asked for original bytes no longer held (raise max_hold)".into()
}

impl<B> Body for AdaptBody<B>
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
        let this = self.get_mut();
        loop {
            match &mut this.kind {
                Kind::Empty => return Poll::Ready(None),
                Kind::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                Kind::Original(body) => {
                    return Poll::Ready(ready!(body.as_mut().poll_frame(cx)).map(|r| {
                        r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                            .map_err(Into::into)
                    }))
                }
                Kind::Replay { held, rest, skip } => {
                    if let Some(mut d) = held.pop_front() {
                        if *skip > 0 {
                            let n = (*skip).min(d.len() as u64) as usize;
                            d.advance(n);
                            *skip -= n as u64;
                        }
                        if !d.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(d))));
                        }
                        continue;
                    }
                    let Some(body) = rest.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match ready!(body.as_mut().poll_frame(cx)) {
                        None => {
                            *rest = None;
                            return Poll::Ready(None);
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        Some(Ok(f)) => match f.into_data() {
                            Ok(mut d) => {
                                let mut d = d.copy_to_bytes(d.remaining());
                                if *skip > 0 {
                                    let n = (*skip).min(d.len() as u64) as usize;
                                    d.advance(n);
                                    *skip -= n as u64;
                                }
                                if !d.is_empty() {
                                    return Poll::Ready(Some(Ok(Frame::data(d))));
                                }
                            }
                            Err(f) => {
                                if let Ok(t) = f.into_trailers() {
                                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                                }
                            }
                        },
                    }
                }
                Kind::Answer { answer, original } => {
                    match ready!(Pin::new(&mut *answer).poll_frame(cx)) {
                        Some(Ok(f)) => match f.into_data() {
                            Ok(d) if !d.is_empty() => return Poll::Ready(Some(Ok(Frame::data(d)))),
                            _ => continue,
                        },
                        Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                        None => match (original.take(), answer.use_original_body()) {
                            (Some(original), Some(offset)) => {
                                this.kind = Kind::Splice { original, offset };
                            }
                            _ => {
                                this.kind = Kind::Empty;
                                return Poll::Ready(None);
                            }
                        },
                    }
                }
                Kind::Splice { original, offset } => {
                    let offset = *offset;
                    let r = ready!(Pin::new(original).poll(cx));
                    match r.ok().and_then(|r| r.replay_from(offset)) {
                        Some(b) => this.kind = b.kind,
                        None => {
                            this.kind = Kind::Empty;
                            return Poll::Ready(Some(Err(short())));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Original(b) => b.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Original(b) => b.size_hint(),
            Kind::Replay {
                held,
                rest,
                skip: 0,
            } => {
                let h: u64 = held.iter().map(|b| b.len() as u64).sum();
                match rest {
                    None => SizeHint::with_exact(h),
                    Some(r) => {
                        let rh = r.size_hint();
                        let mut s = SizeHint::new();
                        s.set_lower(h + rh.lower());
                        if let Some(u) = rh.upper() {
                            s.set_upper(h + u);
                        }
                        s
                    }
                }
            }
            _ => SizeHint::default(),
        }
    }
}
