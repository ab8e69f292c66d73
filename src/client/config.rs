//! The client's settings: [`ClientConfig`] (every knob, with safe defaults) and
//! [`ClientBuilder`] (servers plus those knobs, ending in [`ClientBuilder::build`]).
//!
//! The config is `#[non_exhaustive]`: build it from `ClientConfig::default()` with its
//! setters (or through [`Client::builder`]) so that new settings never break callers.

use std::time::Duration;

use crate::client::ClientError;
use crate::proto::error::Error;
use crate::proto::limits::Limits;
use crate::tls::ClientTls;

use super::Client;

/// How the next server is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest connections in use.
    LeastLoaded,
}

/// How big a preview to send. The client applies it: a caller never computes a preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewPolicy {
    /// What the server's OPTIONS asks for (and no preview when it asks for none).
    #[default]
    FromOptions,
    /// Always this many bytes (capped by the body size).
    Fixed(u64),
    /// Never.
    Off,
}

/// Settings of a [`Client`]. `ClientConfig::default()` suits a scanner; change it with the
/// setters (`ClientConfig::default().deadline(..).retries(..)`) or through
/// [`Client::builder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// TCP connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// TLS handshake timeout. Default 10 s.
    pub tls_timeout: Duration,
    /// Longest time one attempt (OPTIONS if needed, send and answer, on one server) may take,
    /// a streamed answer body read to its end included; a server that runs out of it is not
    /// tried again within the same call. Default 2 min.
    pub transaction_timeout: Duration,
    /// Longest time one call may take, every attempt and failover included. Default 5 min.
    pub deadline: Duration,
    /// How long an idle pooled connection is kept. Default 30 s.
    pub idle_timeout: Duration,
    /// Connections per server when its OPTIONS names no `Max-Connections`. Default 16.
    pub max_connections_per_server: usize,
    /// Further attempts after a failed one, on the next servers. Default 2.
    pub retries: usize,
    /// How long a server that just failed is tried after the others. Default 10 s.
    pub backoff: Duration,
    /// Failures within [`Self::failure_window`] that mark a server down (squid's
    /// `icap_service_failure_limit`); 0 never marks one down. Default 3.
    pub failure_limit: u32,
    /// How long a failure is remembered towards [`Self::failure_limit`] (in ten slots, as
    /// squid does: a failure may be forgotten up to a tenth of it early). Default 60 s.
    pub failure_window: Duration,
    /// How long a down server waits before an OPTIONS probe may bring it back (squid's
    /// `icap_service_revival_delay`); again after each failed probe. Default 30 s.
    pub revival_delay: Duration,
    /// Most bytes one answer may bring (ICAP and HTTP heads, chunk framing and body, as
    /// read) beyond the size of the body sent, which an echo or a cleaned copy carries back.
    /// An answer that grows past it fails with [`ClientError::AnswerTooLarge`]. Default 16 MiB.
    pub max_answer: u64,
    /// Send `Allow: 204` (requests may override it). Default true.
    pub allow_204: bool,
    /// Preview size policy. Default: from OPTIONS.
    pub preview: PreviewPolicy,
    /// Load balancing. Default round robin.
    pub balance: Balance,
    /// TLS settings for `icaps://` servers.
    pub tls: ClientTls,
    /// Decoder limits for answers.
    pub limits: Limits,
    /// `User-Agent` of requests.
    pub user_agent: String,
    /// Bytes of a returned body kept in memory in a buffered
    /// [`Exchange::body`](super::Exchange::body) (the rest is counted and hashed). Default
    /// 64 KiB.
    pub keep_body: usize,
    /// Turn scan errors into `Allowed` verdicts (fail-open). Default false: fail-closed.
    pub fail_open: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            tls_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(120),
            deadline: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            max_connections_per_server: 16,
            retries: 2,
            backoff: Duration::from_secs(10),
            failure_limit: 3,
            failure_window: Duration::from_secs(60),
            revival_delay: Duration::from_secs(30),
            max_answer: 16 << 20,
            allow_204: true,
            preview: PreviewPolicy::FromOptions,
            balance: Balance::RoundRobin,
            tls: ClientTls::default(),
            limits: Limits::default(),
            user_agent: concat!("icap/", env!("CARGO_PKG_VERSION")).into(),
            keep_body: 64 * 1024,
            fail_open: false,
        }
    }
}

/// Builds a [`Client`]: the servers of the service, then any settings of [`ClientConfig`].
///
/// ```
/// use std::time::Duration;
/// use icap::client::{Balance, Client, PreviewPolicy};
///
/// let client = Client::builder()
///     .server("icap://127.0.0.1:1344/reqmod")
///     .server("icap://127.0.0.2:1344/reqmod") // failover partner
///     .balance(Balance::LeastLoaded)
///     .deadline(Duration::from_secs(30))
///     .failure_limit(5)
///     .preview(PreviewPolicy::Fixed(4096))
///     .user_agent("my-proxy/1.0")
///     .build()
///     .unwrap();
/// assert_eq!(client.servers().len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until .build()"]
pub struct ClientBuilder {
    servers: Vec<String>,
    cfg: ClientConfig,
}

impl ClientBuilder {
    /// Adds a server (`icap://host:port/service` or `icaps://...`); the first is the primary,
    /// the others share the load and take over when it fails.
    pub fn server(mut self, uri: impl Into<String>) -> Self {
        self.servers.push(uri.into());
        self
    }

    /// Adds several servers, in order.
    pub fn servers<S: Into<String>>(mut self, uris: impl IntoIterator<Item = S>) -> Self {
        self.servers.extend(uris.into_iter().map(Into::into));
        self
    }

    /// Replaces every setting at once.
    pub fn config(mut self, cfg: ClientConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// `User-Agent` of requests.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.cfg.user_agent = ua.into();
        self
    }

    /// The client: fails with [`ClientError::Config`] when no server is given, a URI does
    /// not parse, or the TLS settings cannot be used.
    pub fn build(self) -> Result<Client, ClientError> {
        Client::new(&self.servers, self.cfg)
    }
}

impl ClientConfig {
    /// `User-Agent` of requests.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    pub(crate) fn check(&self) -> Result<(), ClientError> {
        if self.max_connections_per_server == 0 {
            return Err(ClientError::Config(Error::new(
                crate::ErrorKind::InvalidMessage,
                0,
                "max_connections_per_server is 0: no request could ever be sent",
            )));
        }
        Ok(())
    }
}

/// Setters of [`ClientConfig`], mirrored on [`ClientBuilder`]: one definition, so the two
/// never drift apart.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl ClientConfig {
            $($(#[$doc])* pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            })*
        }
        impl ClientBuilder {
            $($(#[$doc])* pub fn $name(mut self, value: $ty) -> Self {
                self.cfg.$name = value;
                self
            })*
        }
    };
}

setters! {
    /// TCP connect timeout (default 5 s).
    connect_timeout: Duration;
    /// TLS handshake timeout (default 10 s).
    tls_timeout: Duration;
    /// Longest time one attempt on one server may take, a streamed body included (default 2 min).
    transaction_timeout: Duration;
    /// Longest time one call may take, failovers included (default 5 min).
    deadline: Duration;
    /// How long an idle pooled connection is kept (default 30 s).
    idle_timeout: Duration;
    /// Connections per server when its OPTIONS names no `Max-Connections` (default 16).
    max_connections_per_server: usize;
    /// Further attempts after a failed one, on the next servers (default 2).
    retries: usize;
    /// How long a server that just failed is tried after the others (default 10 s).
    backoff: Duration;
    /// Failures within the failure window that mark a server down; 0 never (default 3).
    failure_limit: u32;
    /// How long a failure counts towards the failure limit (default 60 s).
    failure_window: Duration;
    /// How long a down server waits for its next OPTIONS probe (default 30 s).
    revival_delay: Duration;
    /// Most bytes an answer may bring beyond the size of the body sent (default 16 MiB).
    max_answer: u64;
    /// Whether requests say `Allow: 204` (default true).
    allow_204: bool;
    /// Preview size policy (default: from OPTIONS).
    preview: PreviewPolicy;
    /// Load balancing (default round robin).
    balance: Balance;
    /// TLS settings for `icaps://` servers.
    tls: ClientTls;
    /// Decoder limits for answers.
    limits: Limits;
    /// Bytes of a returned body kept in a buffered `Exchange` (default 64 KiB).
    keep_body: usize;
    /// Turn scan errors into `Allowed` verdicts (default false: fail-closed).
    fail_open: bool;
}
