//! Listening under load, shared by the servers among the examples (dlp-server, icap-gateway,
//! icap-proxy): a listen backlog deep enough for a burst, the open-files limit raised to
//! what the system allows, and an accept loop that, when full, makes room by closing a
//! connection idle between requests for longer than a grace period (as the library's server
//! does), and otherwise leaves newcomers in the backlog for a while (as a pre-forked server
//! does) before it accepts one to refuse it.
#![allow(dead_code)] // each example uses what it needs

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The listen backlog asked for: connections waiting while the server is full or busy
/// accepting. The kernel caps it (`net.core.somaxconn`, 4096 on current Linux).
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of [`BACKLOG`] (the usual 128 overflows under a burst,
/// and the kernel then completes the excess only after a SYN retransmission, seconds later).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Raises the open-files limit to its hard limit (each connection is a descriptor), and says
/// on stderr, prefixed by `name`, when the limit stays below `wanted` descriptors.
pub fn raise_open_files(name: &str, wanted: u64) {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut l = getrlimit(Resource::Nofile);
        if let (Some(cur), max) = (l.current, l.maximum) {
            if max.is_none_or(|m| m > cur) {
                l.current = max;
                if let Err(e) = setrlimit(Resource::Nofile, l) {
                    eprintln!("{name}: cannot raise the open-files limit ({cur}): {e}");
                }
            }
        }
        let now = getrlimit(Resource::Nofile).current;
        if let Some(n) = now.filter(|&n| n < wanted) {
            eprintln!(
                "{name}: open-files limit {n} (hard limit reached) is below the {wanted} \
                 connections allowed: beyond it connections wait in the listen backlog; raise \
                 it with `ulimit -n` or LimitNOFILE="
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (name, wanted);
}

/// What [`Gate::accept`] gives.
pub enum Accepted {
    /// Serve it, holding the slot until the connection ends.
    Serve(TcpStream, SocketAddr, Slot),
    /// The server has been full for the queue timeout: answer it a refusal it can read.
    Refuse(TcpStream, SocketAddr),
}

/// A served connection's place: its permit, and what the gate knows of its activity.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// Mark it busy and idle as requests come and go; the gate may ask it to close while
    /// idle.
    pub activity: Arc<Activity>,
}

/// Whether a connection is between requests, since when, and whether the gate asked it to
/// close to make room.
pub struct Activity {
    /// `Some` while between requests (from accept until the first byte of a request, and
    /// from the end of each transaction to the next).
    idle_since: Mutex<Option<Instant>>,
    evicted: AtomicBool,
    /// Woken when evicted: the task of the connection, parked on a read.
    waker: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            idle_since: Mutex::new(Some(Instant::now())),
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    /// A request has begun.
    pub fn busy(&self) {
        *self.idle_since.lock().expect("not poisoned") = None;
    }

    /// The last request is answered: idle until the next begins.
    pub fn idle(&self) {
        let mut since = self.idle_since.lock().expect("not poisoned");
        if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// How long it has been idle (`None`: busy).
    fn idle_for(&self) -> Option<Duration> {
        self.idle_since
            .lock()
            .expect("not poisoned")
            .map(|t| t.elapsed())
    }

    /// True once the gate asked this connection to close.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Wakes the connection's task (see [`Activity::register`]) with the request to close.
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().expect("not poisoned").take() {
            w.wake();
        }
    }

    /// Asks to be woken when evicted; returns true when it already is.
    pub fn register(&self, cx: &Context<'_>) -> bool {
        let mut w = self.waker.lock().expect("not poisoned");
        if self.is_evicted() {
            return true;
        }
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        false
    }

    /// Resolves once the gate asked this connection to close.
    pub async fn evicted(&self) {
        std::future::poll_fn(|cx| {
            if self.register(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// At most `max` connections served at once. When full, the connection idle the longest,
/// if idle for at least `grace`, is asked to close to make room; failing that newcomers wait
/// in the listen backlog, and only once the server has been full for `queue_timeout` is
/// one accepted to be refused.
pub struct Gate {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    grace: Duration,
    full_since: Option<Instant>,
    served: Vec<Weak<Activity>>,
}

/// How often a full gate looks again for a connection idle past the grace period.
const EVICT_EVERY: Duration = Duration::from_millis(100);

impl Gate {
    pub fn new(max: usize, queue_timeout: Duration, grace: Duration) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max)),
            queue_timeout,
            grace,
            full_since: None,
            served: Vec::new(),
        }
    }

    /// The next connection, once there is room for it or the server has been full for the
    /// queue timeout.
    pub async fn accept(&mut self, listener: &TcpListener) -> io::Result<Accepted> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let since = *self.full_since.get_or_insert_with(Instant::now);
                let deadline = since + self.queue_timeout;
                loop {
                    self.evict_one();
                    let until = deadline.min(Instant::now() + EVICT_EVERY);
                    match tokio::time::timeout_at(until, self.permits.clone().acquire_owned()).await
                    {
                        Ok(p) => break p.ok(),
                        Err(_) if Instant::now() >= deadline => break None,
                        Err(_) => {}
                    }
                }
            }
        };
        let (tcp, peer) = listener.accept().await?;
        // A slot may have freed while accepting.
        let permit = permit.or_else(|| self.permits.clone().try_acquire_owned().ok());
        Ok(match permit {
            Some(p) => {
                self.full_since = None;
                let activity = Arc::new(Activity::new());
                self.served.retain(|w| w.strong_count() > 0);
                self.served.push(Arc::downgrade(&activity));
                Accepted::Serve(
                    tcp,
                    peer,
                    Slot {
                        _permit: p,
                        activity,
                    },
                )
            }
            None => Accepted::Refuse(tcp, peer),
        })
    }

    /// Asks the connection idle the longest to close, if it has been idle for the grace
    /// period and none is closing already.
    fn evict_one(&mut self) {
        self.served.retain(|w| w.strong_count() > 0);
        let mut oldest: Option<(Duration, Arc<Activity>)> = None;
        for a in self.served.iter().filter_map(Weak::upgrade) {
            if a.is_evicted() {
                // Still closing: its place comes back soon.
                return;
            }
            if let Some(idle) = a.idle_for().filter(|d| *d >= self.grace) {
                if oldest.as_ref().is_none_or(|(d, _)| idle > *d) {
                    oldest = Some((idle, a));
                }
            }
        }
        if let Some((_, a)) = oldest {
            a.evict();
        }
    }
}

/// A connection's stream that reads as closed once the gate evicted it while idle (so that
/// a server loop which reads the next request ends as if the client had gone), and marks it
/// busy as soon as request bytes arrive.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let idle = self.activity.idle_for().is_some();
        if idle && self.activity.register(cx) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.busy();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Writes `answer` to a refused connection, reads (and drops) what the client sends for up
/// to `linger` so that it is not reset while still writing its request, and closes it.
pub async fn refuse<S>(mut s: S, answer: &[u8], linger: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + linger;
    let write = async {
        s.write_all(answer).await?;
        s.flush().await
    };
    if !matches!(tokio::time::timeout_at(deadline, write).await, Ok(Ok(()))) {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while drained < 4 * 1024 * 1024 {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    let _ = tokio::time::timeout_at(deadline, s.shutdown()).await;
}
