//! The client's view of its servers' health: the model itself (squid's) is shared with the
//! gateway in `crate::upstream`; this file ties it to a client [`Endpoint`] (its idle
//! connections, its metrics, its errors) and makes the public [`ServerHealth`] report.

use std::time::{Duration, SystemTime};

use crate::client::ClientError;
use crate::options::ServiceOptions;
use crate::upstream::{Change, Policy};
use crate::uri::IcapUri;

use super::pool::Endpoint;
use super::ClientConfig;

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

impl ClientConfig {
    pub(crate) fn health_policy(&self) -> Policy {
        Policy {
            failure_limit: self.failure_limit,
            failure_window: self.failure_window,
            revival_delay: self.revival_delay,
            backoff: self.backoff,
        }
    }
}

/// Clears the probing mark however the probe ends (a probe run by a call can be dropped
/// with it).
pub(crate) struct ProbeClaim<'a>(pub(crate) &'a Endpoint);

impl Drop for ProbeClaim<'_> {
    fn drop(&mut self) {
        self.0.health.end_probe();
    }
}

impl Endpoint {
    pub(crate) fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// See [`Health::claim_probe`](crate::upstream::Health::claim_probe); the winner holds a
    /// [`ProbeClaim`] while it probes.
    pub(crate) fn claim_probe(&self) -> bool {
        self.health.claim_probe()
    }

    /// Counts a failure of the server; the limit-th within the window marks it down.
    pub(crate) fn failed(&self, cfg: &ClientConfig, e: &ClientError) {
        let change = self.health.failed(&cfg.health_policy(), e.to_string());
        self.changed(change);
    }

    /// An OPTIONS answer (probe or connectivity test) decides whether the server is up.
    pub(crate) fn options_result(
        &self,
        cfg: &ClientConfig,
        r: &Result<ServiceOptions, ClientError>,
    ) {
        let name = self.name();
        crate::observe::client_health_event(
            &name,
            if r.is_ok() {
                "probe_ok"
            } else {
                "probe_failed"
            },
        );
        let r = match r {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        let change = self.health.options_result(&cfg.health_policy(), r);
        self.changed(change);
    }

    fn changed(&self, change: Change) {
        match change {
            Change::None => return,
            Change::Down => {
                // Pooled connections to a failing server are not to be trusted after it
                // comes back.
                self.idle.clear();
                crate::observe::client_health_event(&self.name(), "marked_down");
            }
            Change::Revived => crate::observe::client_health_event(&self.name(), "revived"),
        }
        self.observe(change == Change::Down);
    }

    /// Sets the metrics' view of this server (health and pool) to what it is now.
    pub(crate) fn observe(&self, down: bool) {
        #[cfg(not(feature = "metrics"))]
        let _ = down;
        #[cfg(feature = "metrics")]
        crate::observe::client_server_state(&self.name(), !down, self.in_use(), self.idle.len());
    }

    pub(crate) fn down_error(&self) -> ClientError {
        let s = self.health.snapshot(Duration::MAX);
        ClientError::Down {
            server: self.name(),
            down_for: s.down_for.unwrap_or_default(),
            last_error: s.last_error.unwrap_or_default(),
        }
    }

    pub(crate) fn report(&self, cfg: &ClientConfig) -> ServerHealth {
        let s = self.health.snapshot(cfg.failure_window);
        ServerHealth {
            server: self.uri.clone(),
            up: s.up,
            since: s.since,
            recent_failures: s.recent_failures,
            total_failures: s.total_failures,
            last_error: s.last_error,
            next_probe: s.next_probe,
            probing: s.probing,
            connections_in_use: self.in_use(),
        }
    }

    pub(crate) fn avoided(&self) -> bool {
        self.health.avoided()
    }
}
