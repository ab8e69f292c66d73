//! The client's view of its servers' health: the model itself (squid's) is shared with the
//! gateway in `crate::upstream`; this file ties it to a client [`Endpoint`] (its idle
//! connections, its metrics, its errors) and makes its [`ServerHealth`] report.

use crate::client::ClientError;
use crate::options::ServiceOptions;
use crate::upstream::{Change, Policy};
use crate::ServerHealth;

use super::pool::Endpoint;
use super::ClientConfig;

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
        let o = self.health.outage();
        ClientError::Down {
            server: self.name(),
            down_for: o.down_for,
            last_error: o.last_error,
        }
    }

    pub(crate) fn report(&self, cfg: &ClientConfig) -> ServerHealth {
        self.health.report(
            self.uri.clone(),
            cfg.failure_window,
            self.in_use(),
            self.idle.len(),
        )
    }

    pub(crate) fn avoided(&self) -> bool {
        self.health.avoided()
    }
}
