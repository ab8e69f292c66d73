//! [`ServerConfig`]: the timeouts and limits of a [`Server`](super::Server), and the
//! [`MinRate`] that keeps heads and bodies moving.
//!
//! ```
//! use std::time::Duration;
//! use icap::server::ServerConfig;
//!
//! let cfg = ServerConfig::default()
//!     .max_connections(64)
//!     .idle_timeout(Duration::from_secs(30));
//! assert_eq!(cfg.max_connections, 64);
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::proto::limits::Limits;

/// Timeouts and limits of a [`Server`](super::Server).
///
/// Together they bound what a slow or idle client can hold: a connection slot (total and per
/// address), and for how long. The defaults suit ICAP clients on a LAN (proxies keeping
/// connections alive, sending heads in one piece, streaming bodies as their origin sends).
#[derive(Debug, Clone)]
///
/// Fields can be read and set; new ones may come in later versions, so build one from
/// [`ServerConfig::default`] and the setters named like the fields (or by assigning fields).
#[non_exhaustive]
pub struct ServerConfig {
    /// Decoder limits (head sizes, header count, preview, body size).
    pub limits: Limits,
    /// Most connections served at once. Default 10,000: an idle keep-alive connection
    /// holds a few KiB, and a proxy keeps many open. When full, a connection behind the
    /// minimum rate or idle beyond [`eviction_grace`](Self::eviction_grace) makes room
    /// for a newcomer; with none, newcomers wait in the listen backlog (see
    /// [`queue_timeout`](Self::queue_timeout)). Each connection is a file descriptor: raise
    /// the process's limit to match (beyond it, accepting backs off and connections wait
    /// in the backlog).
    pub max_connections: usize,
    /// Most connections served at once for one client address (IPv6: one /64), with the same
    /// make-room rule among that address's connections. Default: no limit (`usize::MAX`),
    /// since an ICAP server usually has few clients (a proxy or two, a few gateways) and a
    /// per-address cap would cap the one that matters; set it on a server exposed to many
    /// addresses, to keep one from taking every slot.
    pub max_connections_per_ip: usize,
    /// How long a connection is safe from being closed to make room: after it is accepted,
    /// to send its first request; between requests, once idle. Default 10 s.
    pub eviction_grace: Duration,
    /// How long, when the server is full and no connection can make room, newcomers are left
    /// waiting in the listen backlog for a slot (as in a pre-forked server) before one is
    /// accepted and answered 503. Default 10 s.
    pub queue_timeout: Duration,
    /// How long a connection may wait for a request: the first one, or the next one on a
    /// kept-alive connection. Default 60 s.
    pub idle_timeout: Duration,
    /// How long a request head (ICAP and HTTP heads) may take from its first byte; empty
    /// lines before it count. Default 30 s.
    pub head_timeout: Duration,
    /// Longest wait for the next body bytes; a client that stalls longer gets 408. Default 30 s.
    pub read_timeout: Duration,
    /// Longest time a whole request body may take (time spent waiting for the client, not
    /// time the service spends), `None` for no limit. Default `None`: bodies of any size
    /// are allowed and [`ServerConfig::min_rate`] keeps them moving; set it where bodies are
    /// known to be small.
    pub body_timeout: Option<Duration>,
    /// The slowest rate at which heads and bodies may arrive, `None` for no minimum.
    /// Default 1 KiB/s after a grace of 10 s.
    pub min_rate: Option<MinRate>,
    /// Longest time a write to the client may block. Default 60 s.
    pub write_timeout: Duration,
    /// Longest TLS handshake. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// How long a refused connection is kept to get its 503 across: the TLS handshake (on a
    /// TLS port), the answer, and reading what the client still sends so that it is not
    /// reset while writing. Default 5 s.
    pub refusal_timeout: Duration,
    /// Most bytes read and dropped from a refused connection. Default 4 MiB.
    pub refusal_drain: u64,
    /// Most refused connections answered at once; beyond, a refused connection is closed
    /// without an answer. Default 64.
    pub max_refusals: usize,
    /// Body bytes kept in memory for a possible echo before spilling to a temporary file.
    /// Default 128 KiB, c-icap's `MaxMemObject`: the spool is memory held per transaction
    /// for as long as the service takes, so its size times the connections served is what
    /// echoes can hold at once (256 connections: 32 MiB, against 256 MiB at 1 MiB); larger
    /// bodies go to an anonymous file, which stays in the page cache while it is small.
    pub spool_memory: usize,
    /// Directory for spill files, which are anonymous (nothing to find or clean up there).
    /// When it is unusable, echoes of bodies over `spool_memory` are answered 500, and the
    /// log names the directory. Default: the system temporary directory.
    pub spool_dir: PathBuf,
    /// ISTag for answers that belong to no service (404, 400 before routing). Default `"icap"`.
    pub istag: String,
    /// `Server` header on every answer. Default `icap/<version>`.
    pub server_name: Option<String>,
}

/// A minimum transfer rate: after `grace`, a head or body must have arrived at
/// `bytes_per_sec` on average, counting only the time the server spent waiting for it.
///
/// A client at the end of a slow link sends in bursts but keeps up an average; one that
/// trickles a byte every few seconds (and so holds a connection indefinitely under any
/// per-read timeout) falls behind and gets 408. The grace covers a slow start (an origin
/// that takes a while to send the first bytes of a response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second, on average over the message. 0 disables the check.
    pub bytes_per_sec: u64,
    /// Time allowed before the average must be met.
    pub grace: Duration,
}

impl Default for MinRate {
    fn default() -> Self {
        MinRate {
            bytes_per_sec: 1024,
            grace: Duration::from_secs(10),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_connections: 10_000,
            max_connections_per_ip: usize::MAX,
            eviction_grace: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            body_timeout: None,
            min_rate: Some(MinRate::default()),
            write_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            refusal_timeout: Duration::from_secs(5),
            refusal_drain: 4 * 1024 * 1024,
            max_refusals: 64,
            spool_memory: 128 * 1024,
            spool_dir: std::env::temp_dir(),
            istag: "icap".into(),
            server_name: Some(concat!("icap/", env!("CARGO_PKG_VERSION")).into()),
        }
    }
}

impl ServerConfig {
    /// Sets the field `limits`.
    pub fn limits(mut self, value: Limits) -> Self {
        self.limits = value;
        self
    }

    /// Sets the field `max_connections`.
    pub fn max_connections(mut self, value: usize) -> Self {
        self.max_connections = value;
        self
    }

    /// Sets the field `max_connections_per_ip`.
    pub fn max_connections_per_ip(mut self, value: usize) -> Self {
        self.max_connections_per_ip = value;
        self
    }

    /// Sets the field `eviction_grace`.
    pub fn eviction_grace(mut self, value: Duration) -> Self {
        self.eviction_grace = value;
        self
    }

    /// Sets the field `queue_timeout`.
    pub fn queue_timeout(mut self, value: Duration) -> Self {
        self.queue_timeout = value;
        self
    }

    /// Sets the field `idle_timeout`.
    pub fn idle_timeout(mut self, value: Duration) -> Self {
        self.idle_timeout = value;
        self
    }

    /// Sets the field `head_timeout`.
    pub fn head_timeout(mut self, value: Duration) -> Self {
        self.head_timeout = value;
        self
    }

    /// Sets the field `read_timeout`.
    pub fn read_timeout(mut self, value: Duration) -> Self {
        self.read_timeout = value;
        self
    }

    /// Sets the field `body_timeout`.
    pub fn body_timeout(mut self, value: Option<Duration>) -> Self {
        self.body_timeout = value;
        self
    }

    /// Sets the field `min_rate`.
    pub fn min_rate(mut self, value: Option<MinRate>) -> Self {
        self.min_rate = value;
        self
    }

    /// Sets the field `write_timeout`.
    pub fn write_timeout(mut self, value: Duration) -> Self {
        self.write_timeout = value;
        self
    }

    /// Sets the field `tls_handshake_timeout`.
    pub fn tls_handshake_timeout(mut self, value: Duration) -> Self {
        self.tls_handshake_timeout = value;
        self
    }

    /// Sets the field `refusal_timeout`.
    pub fn refusal_timeout(mut self, value: Duration) -> Self {
        self.refusal_timeout = value;
        self
    }

    /// Sets the field `refusal_drain`.
    pub fn refusal_drain(mut self, value: u64) -> Self {
        self.refusal_drain = value;
        self
    }

    /// Sets the field `max_refusals`.
    pub fn max_refusals(mut self, value: usize) -> Self {
        self.max_refusals = value;
        self
    }

    /// Sets the field `spool_memory`.
    pub fn spool_memory(mut self, value: usize) -> Self {
        self.spool_memory = value;
        self
    }

    /// Sets the field `spool_dir`.
    pub fn spool_dir(mut self, value: impl Into<PathBuf>) -> Self {
        self.spool_dir = value.into();
        self
    }

    /// Sets the field `istag`.
    pub fn istag(mut self, value: impl Into<String>) -> Self {
        self.istag = value.into();
        self
    }

    /// Sets the field `server_name`.
    pub fn server_name(mut self, value: Option<String>) -> Self {
        self.server_name = value;
        self
    }
}
