//! What a client of several ICAP servers keeps per server, shared by the client and the
//! gateway: its health on squid's model and its idle kept-alive connections.
//!
//! Compiled for either front end, so that the `gateway` feature does not pull in the client
//! (TLS, tower, options cache) for two small state machines.

mod health;
mod idle;

#[cfg(feature = "client")]
pub(crate) use health::after;
pub use health::ServerHealth;
pub(crate) use health::{Change, Health, Policy};
pub(crate) use idle::IdlePool;
