//! The kept-alive connections to one server, waiting for reuse: newest first (the one least
//! likely to have been closed by the server's idle timeout), stale ones dropped on the way.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Idle connections of one server, with the time each was put back.
pub(crate) struct IdlePool<C> {
    conns: Mutex<Vec<(C, Instant)>>,
}

impl<C> IdlePool<C> {
    pub(crate) fn new() -> Self {
        IdlePool {
            conns: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(C, Instant)>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest connection idle for less than `max_idle` that `usable` accepts; the
    /// others on the way are dropped (outside the lock: closing a TLS stream is not free).
    pub(crate) fn take(&self, max_idle: Duration, usable: impl Fn(&C) -> bool) -> Option<C> {
        loop {
            let (c, since) = self.lock().pop()?;
            if since.elapsed() < max_idle && usable(&c) {
                return Some(c);
            }
        }
    }

    /// Keeps `c` for reuse unless `max` are kept already (then it is dropped and false
    /// returned).
    pub(crate) fn put(&self, c: C, max: usize) -> bool {
        let mut conns = self.lock();
        if conns.len() >= max {
            return false;
        }
        conns.push((c, Instant::now()));
        true
    }

    /// Drops every idle connection: after a server failed, its old connections are not to
    /// be trusted.
    pub(crate) fn clear(&self) {
        let gone = std::mem::take(&mut *self.lock());
        drop(gone);
    }

    // The client without metrics has no use for the count.
    #[cfg_attr(not(any(feature = "gateway", feature = "metrics")), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_and_stale_or_unusable_ones_dropped() {
        let p = IdlePool::new();
        assert!(p.put(1, 8));
        assert!(p.put(2, 8));
        assert!(p.put(3, 8));
        assert_eq!(p.take(Duration::from_secs(60), |_| true), Some(3));
        // 2 is unusable and dropped on the way to 1.
        assert_eq!(p.take(Duration::from_secs(60), |&c| c != 2), Some(1));
        assert_eq!(p.len(), 0);
        assert_eq!(p.take(Duration::from_secs(60), |_| true), None);
    }

    #[test]
    fn connections_idle_too_long_are_not_reused() {
        let p = IdlePool::new();
        p.put("old", 8);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(p.take(Duration::from_millis(10), |_| true), None);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn at_most_max_are_kept_and_clear_empties() {
        let p = IdlePool::new();
        assert!(p.put(1, 2));
        assert!(p.put(2, 2));
        assert!(!p.put(3, 2));
        assert_eq!(p.len(), 2);
        p.clear();
        assert_eq!(p.len(), 0);
    }
}
