//! Connection slots: the connections being served, counted in total and per client address,
//! what each is doing (waiting for its first request, idle between requests, reading a
//! handshake, head or body, or being served), which of them make room when the server is
//! full, and the refusals being answered.
//!
//! When the server is full, a newcomer is left in the listen backlog (as a pre-forked server
//! such as c-icap leaves it) until a slot frees or one can be taken back: first from a
//! connection behind the minimum rate (a slow head or body, a stalled TLS handshake), the
//! one furthest behind; then from one idle for longer than the grace (between requests, or
//! since it was accepted without sending anything). A connection within its grace is never
//! closed to make room. Only when nothing frees for [`ServerConfig::queue_timeout`] is a
//! newcomer accepted to read a 503.
//!
//! [`ServerConfig::queue_timeout`]: super::ServerConfig::queue_timeout

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::ServerConfig;

/// The key connections are counted under for [`ServerConfig::max_connections_per_ip`]: the
/// address, or its /64 for IPv6 (one host usually holds a whole /64).
pub(crate) fn peer_key(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = !0u128 << 64;
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
        v4 => v4,
    }
}

/// A connection reading this far behind the minimum rate (time waited beyond what its bytes
/// earned) may be closed to make room: well past the jitter of a client keeping up.
const BEHIND: Duration = Duration::from_secs(1);

/// How often a full server looks again for a connection that has fallen behind or out of
/// its grace while it waits for a slot to free.
const RECHECK: Duration = Duration::from_millis(100);

/// What a connection does, as its task last said.
const NEW: u8 = 0;
const IDLE: u8 = 1;
const READING: u8 = 2;
const BUSY: u8 = 3;

/// The part of [`ServerConfig`] that decides admissions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) max: usize,
    pub(crate) per_ip: usize,
    pub(crate) grace: Duration,
    pub(crate) queue_timeout: Duration,
    /// The minimum rate in bytes per second, when one is set.
    pub(crate) rate: Option<u64>,
}

impl Policy {
    pub(crate) fn new(cfg: &ServerConfig) -> Self {
        Policy {
            max: cfg.max_connections,
            per_ip: cfg.max_connections_per_ip,
            grace: cfg.eviction_grace,
            queue_timeout: cfg.queue_timeout,
            rate: cfg.min_rate.map(|r| r.bytes_per_sec).filter(|&r| r > 0),
        }
    }
}

/// What a connection's task tells the slots, through atomics: it is written at every state
/// change and read only when room is needed.
struct Progress {
    ip: IpAddr,
    notify: Notify,
    state: AtomicU8,
    /// When the current state began, in ms since [`Slots::epoch`].
    since: AtomicU64,
    /// While reading: ms spent waiting for the client before the read under way.
    waited: AtomicU64,
    /// While reading: bytes received in this head, body or handshake.
    bytes: AtomicU64,
    /// While reading: when the read under way began (ms since the epoch, plus one), 0 when
    /// none is.
    reading_since: AtomicU64,
}

/// The connections being served and the refusals being answered.
pub(crate) struct Slots {
    inner: std::sync::Mutex<SlotsInner>,
    /// Signalled when a slot frees.
    freed: Notify,
    epoch: Instant,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            inner: Default::default(),
            freed: Notify::new(),
            epoch: Instant::now(),
        }
    }
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    live: HashMap<u64, Arc<Progress>>,
    per_ip: HashMap<IpAddr, usize>,
    refusing: usize,
    /// Since when every slot is taken (and none could be taken back).
    full_since: Option<Instant>,
}

pub(crate) enum Admission {
    /// Served; `evicted` when a connection was closed to make room.
    Admitted {
        slot: Slot,
        evicted: bool,
    },
    Refused,
}

/// What [`Slots::try_admit`] found.
enum Try {
    Done(Admission),
    /// Every slot is taken and none may be taken back yet.
    Full,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        // A panic while holding the lock leaves consistent maps (every update is a single
        // step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The connection to close to make room (of `ip` when given), if one may go: the one
    /// furthest behind the minimum rate, else the one idle longest beyond the grace.
    fn victim(&self, s: &SlotsInner, ip: Option<IpAddr>, policy: &Policy) -> Option<u64> {
        let now = self.now_ms();
        let grace = policy.grace.as_millis() as u64;
        let behind = BEHIND.as_millis() as u64;
        let mut slowest: Option<(u64, u64)> = None;
        let mut oldest: Option<(u64, u64)> = None;
        for (&id, p) in &s.live {
            if ip.is_some_and(|ip| p.ip != ip) {
                continue;
            }
            let since = p.since.load(Ordering::Relaxed);
            match p.state.load(Ordering::Relaxed) {
                NEW | IDLE => {
                    let idle = now.saturating_sub(since);
                    if idle >= grace && oldest.is_none_or(|(t, _)| idle > t) {
                        oldest = Some((idle, id));
                    }
                }
                READING => {
                    let Some(rate) = policy.rate else { continue };
                    let mut waited = p.waited.load(Ordering::Relaxed);
                    let reading = p.reading_since.load(Ordering::Relaxed);
                    if reading > 0 {
                        waited += now.saturating_sub(reading - 1);
                    }
                    let earned = p.bytes.load(Ordering::Relaxed).saturating_mul(1000) / rate;
                    let deficit = waited.saturating_sub(earned);
                    if deficit > behind && slowest.is_none_or(|(d, _)| deficit > d) {
                        slowest = Some((deficit, id));
                    }
                }
                _ => {}
            }
        }
        slowest.or(oldest).map(|(_, id)| id)
    }

    fn remove(&self, s: &mut SlotsInner, id: u64, max: Option<usize>) -> Option<Arc<Progress>> {
        let p = s.live.remove(&id)?;
        if let Some(n) = s.per_ip.get_mut(&p.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&p.ip);
            }
        }
        if max.is_none_or(|m| s.live.len() < m) {
            s.full_since = None;
        }
        self.freed.notify_waiters();
        Some(p)
    }

    /// Closes the connection [`Slots::victim`] names; false when none may go.
    fn evict(&self, s: &mut SlotsInner, ip: Option<IpAddr>, policy: &Policy) -> bool {
        match self.victim(s, ip, policy) {
            Some(id) => {
                if let Some(p) = self.remove(s, id, None) {
                    p.notify.notify_one();
                }
                true
            }
            None => false,
        }
    }

    /// Completes when a newcomer can be admitted (a slot is free or can be taken back), or
    /// when the server has been full for [`Policy::queue_timeout`]: until then, connections
    /// wait in the listen backlog.
    pub(crate) async fn room(&self, policy: &Policy) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                if s.live.len() < policy.max || self.victim(&s, None, policy).is_some() {
                    return;
                }
                let since = *s.full_since.get_or_insert_with(Instant::now);
                let left = policy.queue_timeout.saturating_sub(since.elapsed());
                if left.is_zero() {
                    return;
                }
                left.min(RECHECK)
            };
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A slot for a newcomer from `peer` (accepted), taken back from another connection if
    /// need be. When the server is full the newcomer waits, as it would have in the backlog,
    /// for at most what is left of [`Policy::queue_timeout`]; over the per-address limit it
    /// is refused at once (its address must not hold up the others).
    pub(crate) async fn admit(self: &Arc<Self>, peer: SocketAddr, policy: &Policy) -> Admission {
        loop {
            match self.try_admit(peer, policy) {
                Try::Done(a) => return a,
                Try::Full => {
                    let expired = self
                        .lock()
                        .full_since
                        .is_some_and(|t| t.elapsed() >= policy.queue_timeout);
                    if expired {
                        return Admission::Refused;
                    }
                    self.room(policy).await;
                }
            }
        }
    }

    fn try_admit(self: &Arc<Self>, peer: SocketAddr, policy: &Policy) -> Try {
        let ip = peer_key(peer);
        let mut s = self.lock();
        let mut evicted = false;
        if s.per_ip.get(&ip).copied().unwrap_or(0) >= policy.per_ip {
            if !self.evict(&mut s, Some(ip), policy) {
                return Try::Done(Admission::Refused);
            }
            evicted = true;
        }
        if s.live.len() >= policy.max {
            if !self.evict(&mut s, None, policy) {
                s.full_since.get_or_insert_with(Instant::now);
                return Try::Full;
            }
            evicted = true;
        }
        let id = s.next_id;
        s.next_id += 1;
        let progress = Arc::new(Progress {
            ip,
            notify: Notify::new(),
            state: AtomicU8::new(NEW),
            since: AtomicU64::new(self.now_ms()),
            waited: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reading_since: AtomicU64::new(0),
        });
        s.live.insert(id, progress.clone());
        *s.per_ip.entry(ip).or_insert(0) += 1;
        if s.live.len() >= policy.max {
            s.full_since.get_or_insert_with(Instant::now);
        }
        Try::Done(Admission::Admitted {
            slot: Slot {
                slots: self.clone(),
                id,
                progress,
                max: policy.max,
            },
            evicted,
        })
    }

    /// A place among the refusals being answered, if one is free.
    pub(crate) fn refusing(self: &Arc<Self>, max: usize) -> Option<Refusing> {
        let mut s = self.lock();
        if s.refusing >= max {
            return None;
        }
        s.refusing += 1;
        Some(Refusing(self.clone()))
    }
}

/// A connection's place in [`Slots`], given back when dropped.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    progress: Arc<Progress>,
    max: usize,
}

impl Slot {
    /// Whether the connection still holds its place (it was not closed to make room).
    fn live(&self) -> bool {
        self.slots.lock().live.contains_key(&self.id)
    }

    fn set(&self, state: u8) {
        let p = &self.progress;
        p.since.store(self.slots.now_ms(), Ordering::Relaxed);
        p.reading_since.store(0, Ordering::Relaxed);
        p.state.store(state, Ordering::Relaxed);
    }

    /// Marks the connection idle (waiting for its next request); false when it was already
    /// closed to make room.
    pub(crate) fn idle(&self) -> bool {
        // Before its first request a connection keeps the time it was accepted: its grace
        // runs from there.
        if self.progress.state.load(Ordering::Relaxed) != NEW {
            self.set(IDLE);
        }
        self.live()
    }

    /// Marks the connection busy (its request is being served, not read); false when it
    /// was closed to make room.
    pub(crate) fn busy(&self) -> bool {
        self.set(BUSY);
        self.live()
    }

    /// Marks a read of a handshake, head or body (which may be taken back when it falls
    /// behind the minimum rate): `waited` so far on this client, `bytes` received, and
    /// whether a read is under way now.
    pub(crate) fn reading(&self, waited: Duration, bytes: u64, now: bool) {
        let p = &self.progress;
        p.waited.store(waited.as_millis() as u64, Ordering::Relaxed);
        p.bytes.store(bytes, Ordering::Relaxed);
        let since = if now { self.slots.now_ms() + 1 } else { 0 };
        p.reading_since.store(since, Ordering::Relaxed);
        p.state.store(READING, Ordering::Relaxed);
    }

    /// Completes when the connection is closed to make room.
    pub(crate) async fn evicted(&self) {
        self.progress.notify.notified().await
    }

    /// [`Slot::evicted`], not borrowing the slot.
    pub(crate) fn eviction(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let p = self.progress.clone();
        async move { p.notify.notified().await }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        self.slots.remove(&mut s, self.id, Some(self.max));
    }
}

/// A refusal being answered, counted against [`ServerConfig::max_refusals`].
pub(crate) struct Refusing(Arc<Slots>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.lock().refusing -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_counted_by_address_and_ipv6_by_64() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:2000".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1000".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let v4: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:2".parse().unwrap();
        assert_eq!(peer_key(v4), peer_key(mapped));
        assert_ne!(peer_key(v4), peer_key("192.0.2.8:1".parse().unwrap()));
    }

    fn policy(max: usize, per_ip: usize) -> Policy {
        Policy {
            max,
            per_ip,
            grace: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(5),
            rate: Some(1000),
        }
    }

    /// Admits at once, or `None`.
    fn admit(slots: &Arc<Slots>, p: SocketAddr, policy: &Policy) -> Option<(Slot, bool)> {
        match slots.try_admit(p, policy) {
            Try::Done(Admission::Admitted { slot, evicted }) => Some((slot, evicted)),
            _ => None,
        }
    }

    /// A newcomer never closes a connection within its grace (one that has not sent its
    /// first request yet, or idle since a moment): it was the cause of the lost connections
    /// of a burst from one address.
    #[tokio::test(start_paused = true)]
    async fn connections_within_their_grace_are_never_closed_to_make_room() {
        let slots = Arc::new(Slots::default());
        let p1: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let pol = policy(2, 2);
        let (a, _) = admit(&slots, p1, &pol).unwrap();
        let (b, _) = admit(&slots, p1, &pol).unwrap();
        // Both new (no request yet) and within the grace: full, the newcomer must wait.
        assert!(admit(&slots, p1, &pol).is_none());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.busy());
        assert!(admit(&slots, p1, &pol).is_none());
        // a has had its grace without a word: it goes; b, busy, stays.
        tokio::time::advance(Duration::from_secs(2)).await;
        let (c, evicted) = admit(&slots, p1, &pol).unwrap();
        assert!(evicted);
        assert!(!a.idle(), "a was closed to make room");
        assert!(b.busy());
        // c idles between requests: within its grace, it stays.
        assert!(c.idle());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(admit(&slots, p1, &pol).is_none());
        tokio::time::advance(Duration::from_secs(6)).await;
        let (_d, evicted) = admit(&slots, p1, &pol).unwrap();
        assert!(evicted);
        assert!(!c.busy());
        drop((a, b, c));
        assert_eq!(slots.lock().live.len(), 1);
    }

    /// The slot of a connection behind the minimum rate (the furthest behind first) goes
    /// before any idle one, and a reader keeping up is never taken.
    #[tokio::test(start_paused = true)]
    async fn the_furthest_behind_the_minimum_rate_makes_room_first() {
        let slots = Arc::new(Slots::default());
        let p: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let pol = policy(3, 3);
        let (fast, _) = admit(&slots, p, &pol).unwrap();
        let (slow, _) = admit(&slots, p, &pol).unwrap();
        let (slower, _) = admit(&slots, p, &pol).unwrap();
        // 5 s waited: the fast one sent 10 kB (earned 10 s), the slow ones 2 kB and 1 byte.
        fast.reading(Duration::from_secs(5), 10_000, false);
        slow.reading(Duration::from_secs(5), 2_000, false);
        slower.reading(Duration::ZERO, 1, true);
        tokio::time::advance(Duration::from_secs(4)).await;
        let (d, _) = admit(&slots, p, &pol).unwrap();
        assert!(!slower.busy(), "4 s behind: the first to go");
        assert!(d.busy());
        let (_e, _) = admit(&slots, p, &pol).unwrap();
        assert!(!slow.busy(), "3 s behind: next");
        assert!(admit(&slots, p, &pol).is_none(), "the fast reader stays");
        assert!(fast.busy());
    }

    /// A full server keeps newcomers waiting until a slot frees, or for the queue timeout.
    #[tokio::test(start_paused = true)]
    async fn a_full_server_waits_for_a_slot_then_for_the_queue_timeout() {
        let slots = Arc::new(Slots::default());
        let p: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let pol = policy(1, 1);
        let (a, _) = admit(&slots, p, &pol).unwrap();
        assert!(a.busy());
        let t0 = Instant::now();
        let freeing = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(a);
        };
        tokio::join!(slots.room(&pol), freeing);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        let (b, _) = admit(&slots, p, &pol).unwrap();
        assert!(b.busy());
        let t0 = Instant::now();
        slots.room(&pol).await;
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_millis(5200),
            "{waited:?}"
        );
        assert!(admit(&slots, p, &pol).is_none());
        // Once the queue timeout has passed, an accepted newcomer is refused.
        assert!(matches!(slots.admit(p, &pol).await, Admission::Refused));
        drop(b);
        assert!(matches!(
            slots.admit(p, &pol).await,
            Admission::Admitted { evicted: false, .. }
        ));
    }
}
