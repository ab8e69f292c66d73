//! An ICAP-aware relay: each transaction a client sends is forwarded to one of several plain
//! ICAP upstreams and its answer relayed back, both byte for byte.
//!
//! This module owns the forwarding of transactions between an already accepted client
//! stream (typically TLS, terminated by the caller; see `examples/icap-gateway.rs`) and
//! upstream ICAP servers: per-transaction balancing, keep-alive reuse of upstream
//! connections, health on squid's model (the same as the client's: failures within a window
//! mark an upstream down; after the revival delay an `OPTIONS` probe may bring it back),
//! failover of transactions nothing of whose answer has been relayed yet, and `503` when no
//! upstream can take a transaction. Errors are [`GatewayError`]s, each saying whose
//! [`Fault`] it is.
//!
//! The codec is used only to find message boundaries (heads, chunk framing, preview and
//! `100 Continue`): the bytes relayed are the bytes read, never re-encoded, so an upstream
//! sees exactly what the client sent and the client exactly what the upstream answered.
//! Bodies stream through; memory per transaction is bounded by the read buffers and the
//! replay buffer kept for failover ([`GatewayConfig::replay_limit`]).

mod config;
mod downstream;
mod error;
mod relay;
mod service;
mod upstreams;

pub use config::GatewayConfig;
pub use error::{Fault, GatewayError};
pub use relay::TransactionLog;
pub use service::Gateway;
