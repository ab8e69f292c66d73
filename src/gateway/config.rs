//! [`GatewayConfig`]: how the gateway treats its upstreams and its clients.

use std::time::Duration;

use crate::proto::limits::Limits;
use crate::upstream::Policy;

/// How the gateway treats its upstreams. `#[non_exhaustive]`: start from `Default` and
/// use the setters.
///
/// Health follows squid's model, the same as the client's: `failure_limit` failures within
/// `failure_window` mark an upstream down; an `OPTIONS` probe that does not answer `200`
/// marks it down at once; a down upstream is probed again once `revival_delay` has passed
/// and comes back when a probe answers `200`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Failures (transactions or probes) within [`Self::failure_window`] that mark an
    /// upstream down; 0 never marks one down (squid's `icap_service_failure_limit`).
    pub failure_limit: u32,
    /// How long a failure counts towards [`Self::failure_limit`] (remembered in ten slots,
    /// as squid does: a failure may be forgotten up to a tenth of it early).
    pub failure_window: Duration,
    /// How long a down upstream waits before an `OPTIONS` probe may revive it (squid's
    /// `icap_service_revival_delay`); again after each failed probe.
    pub revival_delay: Duration,
    /// Interval of the health probes run by
    /// [`Gateway::probe_forever`](super::Gateway::probe_forever).
    pub probe_interval: Duration,
    /// Most time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Most time an upstream may stay silent while an answer is awaited or streams.
    pub upstream_timeout: Duration,
    /// Most time a client connection may stay idle between transactions, or silent inside
    /// one.
    pub client_timeout: Duration,
    /// Idle upstream connections kept per upstream for reuse.
    pub max_idle_per_upstream: usize,
    /// How long an idle upstream connection is kept for reuse (upstreams close idle
    /// connections on their own timeout; an older one would cost a retry).
    pub idle_timeout: Duration,
    /// Request bytes kept so that a transaction can be replayed on another upstream when
    /// its upstream fails before answering; a larger request that fails gets a `503`.
    pub replay_limit: usize,
    /// Limits for the heads (bodies are relayed, so `max_body` is ignored).
    pub limits: Limits,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            failure_limit: 3,
            failure_window: Duration::from_secs(60),
            revival_delay: Duration::from_secs(30),
            probe_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(300),
            max_idle_per_upstream: 32,
            idle_timeout: Duration::from_secs(30),
            replay_limit: 1 << 20,
            limits: Limits::default(),
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl GatewayConfig {
            $($(#[$m])* pub fn $name(mut self, v: $ty) -> Self { self.$name = v; self })*
        }
    };
}

setters! {
    /// Sets [`GatewayConfig::failure_limit`].
    failure_limit: u32,
    /// Sets [`GatewayConfig::failure_window`].
    failure_window: Duration,
    /// Sets [`GatewayConfig::revival_delay`].
    revival_delay: Duration,
    /// Sets [`GatewayConfig::probe_interval`].
    probe_interval: Duration,
    /// Sets [`GatewayConfig::connect_timeout`].
    connect_timeout: Duration,
    /// Sets [`GatewayConfig::upstream_timeout`].
    upstream_timeout: Duration,
    /// Sets [`GatewayConfig::client_timeout`].
    client_timeout: Duration,
    /// Sets [`GatewayConfig::max_idle_per_upstream`].
    max_idle_per_upstream: usize,
    /// Sets [`GatewayConfig::idle_timeout`].
    idle_timeout: Duration,
    /// Sets [`GatewayConfig::replay_limit`].
    replay_limit: usize,
    /// Sets [`GatewayConfig::limits`].
    limits: Limits,
}

impl GatewayConfig {
    /// The shared health model's knobs. No back-off ordering: the gateway balances round
    /// robin over the upstreams that are up.
    pub(super) fn health_policy(&self) -> Policy {
        Policy {
            failure_limit: self.failure_limit,
            failure_window: self.failure_window,
            revival_delay: self.revival_delay,
            backoff: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_set_and_the_policy_follows() {
        let c = GatewayConfig::default()
            .failure_limit(7)
            .failure_window(Duration::from_secs(9))
            .revival_delay(Duration::from_secs(2))
            .idle_timeout(Duration::from_secs(4));
        assert_eq!(c.failure_limit, 7);
        assert_eq!(c.idle_timeout, Duration::from_secs(4));
        let p = c.health_policy();
        assert_eq!(p.failure_limit, 7);
        assert_eq!(p.failure_window, Duration::from_secs(9));
        assert_eq!(p.revival_delay, Duration::from_secs(2));
        assert_eq!(p.backoff, Duration::ZERO);
    }
}
