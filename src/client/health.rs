//! Server health, squid's model: failures counted in a sliding window mark a server down;
//! a down server gets no traffic until an OPTIONS probe, a revival delay later, answers
//! well. [`ServerHealth`] is the public view of it.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::client::ClientError;
use crate::options::ServiceOptions;
use crate::uri::IcapUri;

use super::pool::Endpoint;
use super::{after, ClientConfig};

/// One server's health, from [`Client::health`](super::Client::health).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerHealth {
    /// The server.
    pub server: IcapUri,
    /// Whether it gets traffic. A down server waits for a good OPTIONS probe.
    pub up: bool,
    /// When it last went up or down (the client's creation, if never).
    pub since: SystemTime,
    /// Failures within [`ClientConfig::failure_window`], the count that marks it down (as in
    /// squid, remembered in ten slots, so a failure may be forgotten up to a tenth of the
    /// window early).
    pub recent_failures: u32,
    /// Failures since the client was made, probes included.
    pub total_failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// When down: the earliest time of the next probe.
    pub next_probe: Option<SystemTime>,
    /// A probe is under way.
    pub probing: bool,
    /// Connections in use now.
    pub connections_in_use: usize,
}

/// Where a server stands (see [`ServerHealth`] for the meaning of the fields).
pub(crate) struct Health {
    down: bool,
    since: Instant,
    /// Failures within the window, grouped as squid does into at most [`SLOTS`] slots of a
    /// tenth of the window each (when the slot began, failures in it), oldest first: bounded
    /// memory however fast a server fails.
    recent: VecDeque<(Instant, u32)>,
    total_failures: u64,
    last_error: Option<String>,
    /// When down: when the next probe may go.
    next_probe: Instant,
    /// A probe is under way (one at a time).
    probing: bool,
    avoid_until: Option<Instant>,
}

/// Slots of the failure memory.
const SLOTS: usize = 10;

impl Health {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Health {
            down: false,
            since: now,
            recent: VecDeque::new(),
            total_failures: 0,
            last_error: None,
            next_probe: now,
            probing: false,
            avoid_until: None,
        }
    }

    fn forget_old(&mut self, window: Duration) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| t.elapsed() >= window)
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
}

/// Clears the probing mark however the probe ends (a probe run by a call can be dropped
/// with it).
pub(crate) struct ProbeClaim<'a>(pub(crate) &'a Endpoint);

impl Drop for ProbeClaim<'_> {
    fn drop(&mut self) {
        self.0.health().probing = false;
    }
}

impl Endpoint {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().expect("not poisoned")
    }

    pub(crate) fn is_down(&self) -> bool {
        self.health().down
    }

    /// The right to probe this down server now, when its revival delay has passed and no
    /// other probe is under way. Whoever gets true runs the probe and holds a [`ProbeClaim`]
    /// while it does.
    pub(crate) fn claim_probe(&self) -> bool {
        let mut h = self.health();
        if h.down && !h.probing && h.next_probe <= Instant::now() {
            h.probing = true;
            true
        } else {
            false
        }
    }

    /// Counts a failure of the server; the limit-th within the window marks it down.
    pub(crate) fn failed(&self, cfg: &ClientConfig, e: &ClientError) {
        let now = Instant::now();
        let mut h = self.health();
        h.total_failures += 1;
        h.last_error = Some(e.to_string());
        h.avoid_until = Some(after(now, cfg.backoff));
        if h.down || cfg.failure_limit == 0 {
            return;
        }
        h.forget_old(cfg.failure_window);
        h.remember(now, cfg.failure_window);
        if h.recent_failures() >= cfg.failure_limit {
            self.go_down(&mut h, cfg, now);
        }
    }

    fn go_down(&self, h: &mut Health, cfg: &ClientConfig, now: Instant) {
        let was_down = h.down;
        h.down = true;
        h.since = now;
        h.next_probe = after(now, cfg.revival_delay);
        // Pooled connections to a failing server are not to be trusted after it comes back.
        self.idle.lock().expect("not poisoned").clear();
        if !was_down {
            crate::observe::client_health_event(&self.name(), "marked_down");
        }
        self.observe(true);
    }

    /// Sets the metrics' view of this server (health and pool) to what it is now;
    /// `down` is passed by callers that hold the health lock.
    pub(crate) fn observe(&self, down: bool) {
        #[cfg(not(feature = "metrics"))]
        let _ = down;
        #[cfg(feature = "metrics")]
        let idle = self.idle.lock().expect("not poisoned").len();
        #[cfg(feature = "metrics")]
        crate::observe::client_server_state(&self.name(), !down, self.in_use(), idle);
    }

    /// An OPTIONS answer (probe or connectivity test) decides, as in squid: good brings the
    /// server back with its failures forgotten, bad marks it down (for another revival delay
    /// if it was); with no failure limit, bad only puts it last for the back-off.
    pub(crate) fn options_result(
        &self,
        cfg: &ClientConfig,
        r: &Result<ServiceOptions, ClientError>,
    ) {
        let now = Instant::now();
        let mut h = self.health();
        let name = self.name();
        crate::observe::client_health_event(
            &name,
            if r.is_ok() {
                "probe_ok"
            } else {
                "probe_failed"
            },
        );
        match r {
            Ok(_) => {
                if h.down {
                    h.down = false;
                    h.since = now;
                    crate::observe::client_health_event(&name, "revived");
                    self.observe(false);
                }
                h.recent.clear();
                h.avoid_until = None;
            }
            Err(e) => {
                h.total_failures += 1;
                h.last_error = Some(e.to_string());
                if h.down {
                    h.next_probe = after(now, cfg.revival_delay);
                } else if cfg.failure_limit == 0 {
                    h.avoid_until = Some(after(now, cfg.backoff));
                } else {
                    self.go_down(&mut h, cfg, now);
                }
            }
        }
    }

    pub(crate) fn down_error(&self) -> ClientError {
        let h = self.health();
        ClientError::Down {
            server: self.name(),
            down_for: h.since.elapsed(),
            last_error: h.last_error.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn report(&self, cfg: &ClientConfig) -> ServerHealth {
        let mut h = self.health();
        h.forget_old(cfg.failure_window);
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |t: Instant| {
            if t >= now {
                wall.checked_add(t - now).unwrap_or(wall)
            } else {
                wall.checked_sub(now - t).unwrap_or(wall)
            }
        };
        ServerHealth {
            server: self.uri.clone(),
            up: !h.down,
            since: at(h.since),
            recent_failures: h.recent_failures(),
            total_failures: h.total_failures,
            last_error: h.last_error.clone(),
            next_probe: h.down.then(|| at(h.next_probe)),
            probing: h.probing,
            connections_in_use: self.in_use(),
        }
    }

    pub(crate) fn avoided(&self) -> bool {
        self.health()
            .avoid_until
            .is_some_and(|t| t > Instant::now())
    }
}
