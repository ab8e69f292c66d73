//! Connection slots: the connections being served, counted in total and per client address,
//! which of them are idle since when (the oldest idle one makes room when the server is
//! full), and the refusals being answered.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The key connections are counted under for [`ServerConfig::max_connections_per_ip`](super::ServerConfig::max_connections_per_ip): the
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

/// The connections being served, by client address, and which of them are idle (waiting
/// for a request) since when: the oldest idle one makes room when the server is full.
#[derive(Default)]
pub(crate) struct Slots {
    inner: std::sync::Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    live: HashMap<u64, (IpAddr, Option<Instant>, Arc<Notify>)>,
    per_ip: HashMap<IpAddr, usize>,
    /// Idle connections, oldest first.
    idle: BTreeSet<(Instant, u64)>,
    refusing: usize,
}

pub(crate) enum Admission {
    /// Served; `evicted` when an idle connection was closed to make room.
    Admitted {
        slot: Slot,
        evicted: bool,
    },
    Refused,
}

impl SlotsInner {
    fn remove(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (ip, since, notify) = self.live.remove(&id)?;
        if let Some(t) = since {
            self.idle.remove(&(t, id));
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(notify)
    }

    /// Closes the oldest idle connection (of `ip` when given); false when none is idle.
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .idle
            .iter()
            .map(|&(_, id)| id)
            .find(|id| ip.is_none_or(|ip| self.live.get(id).is_some_and(|l| l.0 == ip)));
        match victim.and_then(|id| self.remove(id)) {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        // A panic while holding the lock leaves consistent maps (every update is a single
        // step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        max: usize,
        per_ip: usize,
    ) -> Admission {
        let ip = peer_key(peer);
        let mut s = self.lock();
        let mut evicted = false;
        if s.per_ip.get(&ip).copied().unwrap_or(0) >= per_ip {
            if !s.evict_oldest(Some(ip)) {
                return Admission::Refused;
            }
            evicted = true;
        }
        if s.live.len() >= max {
            if !s.evict_oldest(None) {
                return Admission::Refused;
            }
            evicted = true;
        }
        let id = s.next_id;
        s.next_id += 1;
        let now = Instant::now();
        let notify = Arc::new(Notify::new());
        s.live.insert(id, (ip, Some(now), notify.clone()));
        s.idle.insert((now, id));
        *s.per_ip.entry(ip).or_insert(0) += 1;
        Admission::Admitted {
            slot: Slot {
                slots: self.clone(),
                id,
                notify,
            },
            evicted,
        }
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
    pub(crate) notify: Arc<Notify>,
}

impl Slot {
    /// Marks the connection idle (waiting for a request); false when it was already closed
    /// to make room.
    pub(crate) fn idle(&self) -> bool {
        let mut s = self.slots.lock();
        let now = Instant::now();
        let Some(entry) = s.live.get_mut(&self.id) else {
            return false;
        };
        if entry.1.is_none() {
            entry.1 = Some(now);
            s.idle.insert((now, self.id));
        }
        true
    }

    /// Marks the connection busy (a request is arriving); false when it was closed to make
    /// room before the request began.
    pub(crate) fn busy(&self) -> bool {
        let mut s = self.slots.lock();
        let Some(entry) = s.live.get_mut(&self.id) else {
            return false;
        };
        if let Some(t) = entry.1.take() {
            s.idle.remove(&(t, self.id));
        }
        true
    }

    /// Completes when the connection is closed to make room.
    pub(crate) async fn evicted(&self) {
        self.notify.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(self.id);
    }
}

/// A refusal being answered, counted against [`ServerConfig::max_refusals`](super::ServerConfig::max_refusals).
pub(crate) struct Refusing(Arc<Slots>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.lock().refusing -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[tokio::test]
    async fn the_oldest_idle_connection_of_the_address_makes_room() {
        let slots = Arc::new(Slots::default());
        let p1: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let p2: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let admit = |p, max, per_ip| match slots.admit(p, max, per_ip) {
            Admission::Admitted { slot, evicted } => Some((slot, evicted)),
            Admission::Refused => None,
        };
        let (a, _) = admit(p1, 3, 2).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (b, _) = admit(p1, 3, 2).unwrap();
        let (c, _) = admit(p2, 3, 2).unwrap();
        assert!(a.busy() && c.busy());
        // p1 is at its limit; its only idle connection (b) makes room.
        let (d, evicted) = admit(p1, 3, 2).unwrap();
        assert!(evicted);
        assert!(!b.idle() && !b.busy(), "b was closed");
        assert!(d.busy());
        // Full, nothing idle: refused.
        assert!(admit(p2, 3, 2).is_none());
        // a idles: the newcomer from p2 takes its place.
        assert!(a.idle());
        let (_e, evicted) = admit(p2, 3, 2).unwrap();
        assert!(evicted);
        assert!(!a.busy());
        drop((b, c, d));
        assert_eq!(slots.lock().live.len(), 1);
        assert!(!slots.lock().per_ip.contains_key(&peer_key(p1)));
    }
}
