//! The two queues between a connection task and the [`Body`](super::Body) of its transaction:
//! body pieces one way, [`Control`] messages the other, in one shared allocation made per
//! exchange. Unbounded (the connection task paces what it hands over), with one waiting
//! receiver per queue, and a side that is gone seen by the other: a receiver gets `None` once
//! its sender is dropped and the queue is empty, a sender's values are refused once its
//! receiver is dropped.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::{Control, Piece};

/// One direction.
pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue {
            items: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }
    }
}

/// Both directions of one exchange.
pub(crate) struct Link {
    pieces: Queue<Piece>,
    control: Queue<Control>,
}

/// What travels on a link, and in which of its queues.
pub(crate) trait Message: Sized {
    fn queue(link: &mut Link) -> &mut Queue<Self>;
}

impl Message for Piece {
    fn queue(link: &mut Link) -> &mut Queue<Self> {
        &mut link.pieces
    }
}

impl Message for Control {
    fn queue(link: &mut Link) -> &mut Queue<Self> {
        &mut link.control
    }
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    // Nothing here panics while holding the lock; a poisoned one is still consistent.
    link.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending end of one queue.
pub(crate) struct Sender<T: Message> {
    link: Arc<Mutex<Link>>,
    _t: PhantomData<fn(T)>,
}

/// The receiving end of one queue.
pub(crate) struct Receiver<T: Message> {
    link: Arc<Mutex<Link>>,
    _t: PhantomData<fn() -> T>,
}

/// A new link: pieces' sender and receiver, control's sender and receiver.
pub(crate) fn link() -> (
    Sender<Piece>,
    Receiver<Piece>,
    Sender<Control>,
    Receiver<Control>,
) {
    let link = Arc::new(Mutex::new(Link {
        pieces: Queue::new(),
        control: Queue::new(),
    }));
    (
        Sender {
            link: link.clone(),
            _t: PhantomData,
        },
        Receiver {
            link: link.clone(),
            _t: PhantomData,
        },
        Sender {
            link: link.clone(),
            _t: PhantomData,
        },
        Receiver {
            link,
            _t: PhantomData,
        },
    )
}

impl<T: Message> Sender<T> {
    /// Queues `v`; gives it back when the receiver is gone.
    pub(crate) fn send(&self, v: T) -> Result<(), T> {
        let waker = {
            let mut link = lock(&self.link);
            let q = T::queue(&mut link);
            if q.receiver_gone {
                return Err(v);
            }
            q.items.push_back(v);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T: Message> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut link = lock(&self.link);
            let q = T::queue(&mut link);
            q.sender_gone = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T: Message> Receiver<T> {
    /// The next value; `None` once the sender is gone and nothing is left.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut link = lock(&self.link);
        let q = T::queue(&mut link);
        if let Some(v) = q.items.pop_front() {
            return Poll::Ready(Some(v));
        }
        if q.sender_gone {
            return Poll::Ready(None);
        }
        match &mut q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// [`Receiver::poll_recv`] as a future.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next value if one is queued (for tests).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        T::queue(&mut lock(&self.link)).items.pop_front()
    }
}

impl<T: Message> Drop for Receiver<T> {
    fn drop(&mut self) {
        let left = {
            let mut link = lock(&self.link);
            let q = T::queue(&mut link);
            q.receiver_gone = true;
            q.waker = None;
            std::mem::take(&mut q.items)
        };
        // Dropped outside the lock: a piece may hold the last reference to a read buffer.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn values_come_in_order_then_none_once_the_sender_is_gone() {
        let (tx, mut rx, ctx, crx) = link();
        tx.send(Piece::Data(Bytes::from_static(b"a"))).unwrap();
        tx.send(Piece::End).unwrap();
        drop(tx);
        assert!(matches!(rx.recv().await, Some(Piece::Data(b)) if b == "a"));
        assert!(matches!(rx.recv().await, Some(Piece::End)));
        assert!(rx.recv().await.is_none());
        // The other direction is its own: its receiver gone, its values are refused.
        drop(crx);
        assert!(matches!(
            ctx.send(Control::Continue),
            Err(Control::Continue)
        ));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_value_and_by_the_sender_leaving() {
        let (tx, mut rx, _ctx, _crx) = link();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        tx.send(Piece::PreviewEnd).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        let (first, second) = waiting.await.unwrap();
        assert!(matches!(first, Some(Piece::PreviewEnd)));
        assert!(second.is_none());
    }
}
