//! One server's health on squid's model: failures counted in a sliding window mark it down
//! once they reach the limit; a down server gets no traffic until an `OPTIONS` probe, a
//! revival delay later, answers well; a bad `OPTIONS` answer marks it down at once (squid
//! takes a service without valid options as down).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::uri::IcapUri;

/// `d` after `now`; a duration too long for the clock (`Duration::MAX` as "no limit")
/// means a century.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The knobs of the model, as squid names them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Failures within `failure_window` that mark a server down
    /// (`icap_service_failure_limit`); 0 never marks one down.
    pub(crate) failure_limit: u32,
    /// How long a failure counts (`icap_service_failure_limit ... in`).
    pub(crate) failure_window: Duration,
    /// How long a down server waits before a probe (`icap_service_revival_delay`).
    pub(crate) revival_delay: Duration,
    /// How long a server that just failed goes last when servers are ordered.
    pub(crate) backoff: Duration,
}

/// What an event did to the server's state, for the caller to act on (clear its idle
/// connections, log, count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Still where it was.
    None,
    /// Marked down by this event.
    Down,
    /// Back up by this event.
    Revived,
}

/// One ICAP server's health as a client of it sees it: what [`Client::health`] reports for
/// each of its servers and [`Gateway::health`] for each of its upstreams. Both keep it on
/// squid's model: failures counted in a sliding window mark a server down; a down server
/// gets no traffic until an `OPTIONS` probe, a revival delay later, answers well.
///
/// [`Client::health`]: crate::client::Client::health
/// [`Gateway::health`]: crate::gateway::Gateway::health
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerHealth {
    /// The server, as configured.
    pub server: IcapUri,
    /// Whether it gets traffic. A down server waits for a good `OPTIONS` probe.
    pub up: bool,
    /// When it last went up or down (the client's or gateway's creation, if never).
    pub since: SystemTime,
    /// Failures within the failure window, the count that marks it down (as in squid,
    /// remembered in ten slots, so a failure may be forgotten up to a tenth of the window
    /// early).
    pub recent_failures: u32,
    /// Failures since the client or gateway was made, probes included.
    pub total_failures: u64,
    /// The last failure, as a log line would say it.
    pub last_error: Option<String>,
    /// When down: the earliest time of the next probe.
    pub next_probe: Option<SystemTime>,
    /// A probe is under way.
    pub probing: bool,
    /// Connections carrying a transaction now.
    pub connections_in_use: usize,
    /// Kept-alive connections waiting for the next transaction.
    pub idle_connections: usize,
}

/// How long a down server has been down, and why, for the client's "server down" error.
#[cfg(feature = "client")]
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    pub(crate) down_for: Duration,
    pub(crate) last_error: String,
}

/// Slots of the failure memory: squid's fading counter, bounded however fast a server
/// fails.
const SLOTS: usize = 10;

struct State {
    down: bool,
    since: Instant,
    /// Failures within the window in at most [`SLOTS`] slots of a tenth of the window each
    /// (when the slot began, failures in it), oldest first.
    recent: VecDeque<(Instant, u32)>,
    total_failures: u64,
    last_error: Option<String>,
    /// When down: when the next probe may go.
    next_probe: Instant,
    /// A probe is under way (one at a time).
    probing: bool,
    avoid_until: Option<Instant>,
}

impl State {
    fn forget_old(&mut self, now: Instant, window: Duration) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            self.recent.pop_front();
        }
    }

    fn remember(&mut self, now: Instant, window: Duration) {
        match self.recent.back_mut() {
            Some((start, n)) if now.duration_since(*start) < window / SLOTS as u32 => {
                *n = n.saturating_add(1)
            }
            _ => {
                if self.recent.len() == SLOTS {
                    self.recent.pop_front();
                }
                self.recent.push_back((now, 1));
            }
        }
    }

    fn recent_failures(&self) -> u32 {
        self.recent
            .iter()
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    }

    fn go_down(&mut self, p: &Policy, now: Instant) -> Change {
        let was_down = self.down;
        self.down = true;
        self.since = now;
        self.next_probe = after(now, p.revival_delay);
        if was_down {
            Change::None
        } else {
            Change::Down
        }
    }
}

/// One server's health. Its own lock: callers never hold it across an await.
pub(crate) struct Health {
    state: Mutex<State>,
}

impl Health {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Health {
            state: Mutex::new(State {
                down: false,
                since: now,
                recent: VecDeque::new(),
                total_failures: 0,
                last_error: None,
                next_probe: now,
                probing: false,
                avoid_until: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters half-updated in a harmful way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Tried after the others: it failed within the back-off (the gateway has none).
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn avoided(&self) -> bool {
        self.lock().avoid_until.is_some_and(|t| t > Instant::now())
    }

    /// The right to probe this down server now, when its revival delay has passed and no
    /// other probe is under way. Whoever gets true runs the probe and calls
    /// [`Self::end_probe`] however it ends.
    pub(crate) fn claim_probe(&self) -> bool {
        let mut s = self.lock();
        if s.down && !s.probing && s.next_probe <= Instant::now() {
            s.probing = true;
            true
        } else {
            false
        }
    }

    pub(crate) fn end_probe(&self) {
        self.lock().probing = false;
    }

    /// Counts a failure of the server; the limit-th within the window marks it down.
    pub(crate) fn failed(&self, p: &Policy, why: String) -> Change {
        let now = Instant::now();
        let mut s = self.lock();
        s.total_failures += 1;
        s.last_error = Some(why);
        s.avoid_until = Some(after(now, p.backoff));
        if s.down || p.failure_limit == 0 {
            return Change::None;
        }
        s.forget_old(now, p.failure_window);
        s.remember(now, p.failure_window);
        if s.recent_failures() >= p.failure_limit {
            s.go_down(p, now)
        } else {
            Change::None
        }
    }

    /// An `OPTIONS` answer (probe or connectivity test) decides, as in squid: good brings
    /// the server back with its failures forgotten, bad marks it down (for another revival
    /// delay if it was); with no failure limit, bad only puts it last for the back-off.
    pub(crate) fn options_result(&self, p: &Policy, r: Result<(), String>) -> Change {
        let now = Instant::now();
        let mut s = self.lock();
        match r {
            Ok(()) => {
                s.recent.clear();
                s.avoid_until = None;
                if s.down {
                    s.down = false;
                    s.since = now;
                    Change::Revived
                } else {
                    Change::None
                }
            }
            Err(why) => {
                s.total_failures += 1;
                s.last_error = Some(why);
                if s.down {
                    s.next_probe = after(now, p.revival_delay);
                    Change::None
                } else if p.failure_limit == 0 {
                    s.avoid_until = Some(after(now, p.backoff));
                    Change::None
                } else {
                    s.go_down(p, now)
                }
            }
        }
    }

    /// The public report; `window` is the failure window of the caller's policy.
    pub(crate) fn report(
        &self,
        server: IcapUri,
        window: Duration,
        connections_in_use: usize,
        idle_connections: usize,
    ) -> ServerHealth {
        let now = Instant::now();
        let mut s = self.lock();
        s.forget_old(now, window);
        let wall = SystemTime::now();
        let at = |t: Instant| {
            if t >= now {
                wall.checked_add(t - now).unwrap_or(wall)
            } else {
                wall.checked_sub(now - t).unwrap_or(wall)
            }
        };
        ServerHealth {
            server,
            up: !s.down,
            since: at(s.since),
            recent_failures: s.recent_failures(),
            total_failures: s.total_failures,
            last_error: s.last_error.clone(),
            next_probe: s.down.then(|| at(s.next_probe)),
            probing: s.probing,
            connections_in_use,
            idle_connections,
        }
    }

    /// How long it has been down and why.
    #[cfg(feature = "client")]
    pub(crate) fn outage(&self) -> Outage {
        let s = self.lock();
        Outage {
            down_for: if s.down {
                s.since.elapsed()
            } else {
                Duration::ZERO
            },
            last_error: s.last_error.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(h: &Health, window: Duration) -> ServerHealth {
        h.report(IcapUri::parse("icap://127.0.0.1/x").unwrap(), window, 0, 0)
    }

    fn policy(limit: u32) -> Policy {
        Policy {
            failure_limit: limit,
            failure_window: Duration::from_secs(60),
            revival_delay: Duration::from_secs(30),
            backoff: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_limit_th_failure_marks_down_once() {
        let h = Health::new();
        let p = policy(3);
        assert_eq!(h.failed(&p, "a".into()), Change::None);
        assert_eq!(h.failed(&p, "b".into()), Change::None);
        assert!(!h.is_down());
        assert_eq!(h.failed(&p, "c".into()), Change::Down);
        assert!(h.is_down());
        // Failures of a down server are counted but change nothing.
        assert_eq!(h.failed(&p, "d".into()), Change::None);
        let s = report(&h, p.failure_window);
        assert!(!s.up);
        assert_eq!(s.total_failures, 4);
        assert_eq!(s.last_error.as_deref(), Some("d"));
        assert!(s.next_probe.is_some());
        #[cfg(feature = "client")]
        assert!(!h.outage().last_error.is_empty());
    }

    #[test]
    fn no_limit_never_marks_down_but_backs_off() {
        let h = Health::new();
        let p = policy(0);
        for _ in 0..100 {
            assert_eq!(h.failed(&p, "x".into()), Change::None);
        }
        assert_eq!(h.options_result(&p, Err("bad".into())), Change::None);
        assert!(!h.is_down());
        assert!(h.avoided());
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let h = Health::new();
        let p = Policy {
            failure_window: Duration::from_millis(50),
            ..policy(2)
        };
        h.failed(&p, "old".into());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(report(&h, p.failure_window).recent_failures, 0);
        assert_eq!(h.failed(&p, "new".into()), Change::None);
        assert!(!h.is_down());
    }

    #[test]
    fn a_bad_options_answer_marks_an_up_server_down_at_once() {
        let h = Health::new();
        let p = policy(3);
        assert_eq!(h.options_result(&p, Err("status 500".into())), Change::Down);
        assert!(h.is_down());
    }

    #[test]
    fn a_probe_waits_for_the_revival_delay_and_one_runs_at_a_time() {
        let h = Health::new();
        let p = Policy {
            revival_delay: Duration::from_millis(40),
            ..policy(1)
        };
        assert!(!h.claim_probe(), "an up server is not probed for revival");
        h.failed(&p, "x".into());
        assert!(!h.claim_probe(), "too early");
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.claim_probe());
        assert!(!h.claim_probe(), "one probe at a time");
        assert!(report(&h, p.failure_window).probing);
        // A failed probe starts the delay again.
        assert_eq!(h.options_result(&p, Err("refused".into())), Change::None);
        h.end_probe();
        assert!(!h.claim_probe());
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.claim_probe());
        assert_eq!(h.options_result(&p, Ok(())), Change::Revived);
        h.end_probe();
        let s = report(&h, p.failure_window);
        assert!(s.up && !s.probing && s.next_probe.is_none());
        assert_eq!(s.recent_failures, 0);
        assert!(!h.avoided());
    }

    #[test]
    fn the_failure_memory_is_bounded() {
        let h = Health::new();
        let p = policy(u32::MAX);
        for _ in 0..10_000 {
            h.failed(&p, String::new());
        }
        assert!(h.lock().recent.len() <= SLOTS);
        assert_eq!(report(&h, p.failure_window).recent_failures, 10_000);
    }

    #[test]
    fn after_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
    }
}
