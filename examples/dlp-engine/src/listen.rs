//! Listening under load, shared by the servers among the examples (dlp-server, icap-gateway,
//! icap-proxy): a listen backlog deep enough for a burst, the open-files limit raised to
//! what the system allows, and an accept loop that, when full, leaves newcomers in the
//! backlog for a while (as a pre-forked server does) before it accepts one to refuse it.
#![allow(dead_code)] // each example uses what it needs

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// Serve it, holding the permit until the connection ends.
    Serve(TcpStream, SocketAddr, OwnedSemaphorePermit),
    /// The server has been full for the queue timeout: answer it a refusal it can read.
    Refuse(TcpStream, SocketAddr),
}

/// At most `max` connections served at once; when full, newcomers wait in the listen
/// backlog, and only once the server has been full for `queue_timeout` is one accepted to be
/// refused.
pub struct Gate {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    full_since: Option<Instant>,
}

impl Gate {
    pub fn new(max: usize, queue_timeout: Duration) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max)),
            queue_timeout,
            full_since: None,
        }
    }

    /// The next connection, once there is room for it or the server has been full for the
    /// queue timeout.
    pub async fn accept(&mut self, listener: &TcpListener) -> io::Result<Accepted> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let since = *self.full_since.get_or_insert_with(Instant::now);
                let left = self.queue_timeout.saturating_sub(since.elapsed());
                tokio::time::timeout(left, self.permits.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        let (tcp, peer) = listener.accept().await?;
        // A slot may have freed while accepting.
        let permit = permit.or_else(|| self.permits.clone().try_acquire_owned().ok());
        Ok(match permit {
            Some(p) => {
                self.full_since = None;
                Accepted::Serve(tcp, peer, p)
            }
            None => Accepted::Refuse(tcp, peer),
        })
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
