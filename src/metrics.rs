//! The names of the counters, gauges and histograms the client and server record through the
//! [`metrics`] facade (feature `metrics`), in one place.
//!
//! Nothing is recorded unless the application installs a recorder (for example
//! `metrics-exporter-prometheus`); without the feature, the calls are not compiled at all.
//! Values are recorded where an outcome is known (a transaction's end, an error, a change of
//! a server's health), never per body chunk, so the cost per transaction is a handful of
//! atomic operations in the recorder. [`describe`] gives the recorder a help text and unit
//! for each name.
//!
//! Labels: `method` (`OPTIONS`, `REQMOD`, `RESPMOD`, or `OTHER`), `status` (the ICAP status
//! code, `0` when none was sent or received), `verdict` (see [`VERDICTS`]), `kind` (see
//! [`ERROR_KINDS`]), `server` (the client's partner, `icap://host:port/service`).
//!
//! ```
//! // A recorder is installed by the application; the names are what it will see.
//! assert_eq!(icap::metrics::SERVER_TRANSACTIONS, "icap_server_transactions_total");
//! icap::metrics::describe(); // harmless without a recorder
//! ```

/// Client transactions ended with an answer, by `method`, `status` and `verdict` (counter).
/// One per ICAP transaction on the wire: a call that fails over counts each attempt.
pub const CLIENT_TRANSACTIONS: &str = "icap_client_transactions_total";
/// Client transactions that failed, by `kind` (counter).
pub const CLIENT_ERRORS: &str = "icap_client_errors_total";
/// Bytes the client wrote to ICAP servers, heads and chunking included (counter).
pub const CLIENT_BYTES_SENT: &str = "icap_client_sent_bytes_total";
/// Bytes the client read from ICAP servers (counter).
pub const CLIENT_BYTES_RECEIVED: &str = "icap_client_received_bytes_total";
/// Duration of client transactions, from the request's first byte to the answer's last, by
/// `method`, in seconds (histogram).
pub const CLIENT_DURATION: &str = "icap_client_transaction_duration_seconds";
/// Connections open to a `server`, busy or idle in the pool (gauge; the
/// `connections_in_use` of [`ServerHealth`](crate::ServerHealth)).
pub const CLIENT_POOL_OPEN: &str = "icap_client_pool_open_connections";
/// Kept-alive connections to a `server` waiting in the pool (gauge).
pub const CLIENT_POOL_IDLE: &str = "icap_client_pool_idle_connections";
/// Whether the client sends traffic to a `server`: 1 up, 0 marked down (gauge). Set when a
/// server is first used and at every change.
pub const CLIENT_SERVER_UP: &str = "icap_client_server_up";
/// Times a `server` was marked down (counter).
pub const CLIENT_SERVER_MARKED_DOWN: &str = "icap_client_server_marked_down_total";
/// Times a down `server` came back after a good OPTIONS probe (counter).
pub const CLIENT_SERVER_REVIVED: &str = "icap_client_server_revived_total";
/// OPTIONS probes and connectivity tests of a `server`, by `result` (`ok`, `failed`)
/// (counter).
pub const CLIENT_PROBES: &str = "icap_client_probes_total";

/// Server transactions answered, by `method`, `status` and `verdict` (counter).
pub const SERVER_TRANSACTIONS: &str = "icap_server_transactions_total";
/// Server-side failures, by `kind` (counter): a request that could not be read or parsed,
/// a service error, a TLS handshake that failed, an answer that could not be written.
pub const SERVER_ERRORS: &str = "icap_server_errors_total";
/// Bytes the server read from clients within transactions (counter).
pub const SERVER_BYTES_RECEIVED: &str = "icap_server_received_bytes_total";
/// Bytes the server wrote to clients (counter).
pub const SERVER_BYTES_SENT: &str = "icap_server_sent_bytes_total";
/// Duration of server transactions, from the head's first byte to the answer's last, by
/// `method`, in seconds (histogram).
pub const SERVER_DURATION: &str = "icap_server_transaction_duration_seconds";
/// Connections being served now (gauge).
pub const SERVER_CONNECTIONS: &str = "icap_server_connections";
/// Connections refused with 503 because the server was full (counter).
pub const SERVER_REFUSED: &str = "icap_server_refused_connections_total";

/// The values of the `verdict` label, read from the answer's head alone: `clean` (204),
/// `blocked` (an answer carrying `X-Infection-Found`, `X-Violations-Found` or
/// `X-Blocked-Reason`, or a REQMOD answered with an HTTP response), `modified` (any other
/// 200 or 206; an echo of the unchanged message counts here, as bodies are not compared),
/// `options` (an OPTIONS answer), `error` (ICAP 4xx/5xx), `none` (no answer).
pub const VERDICTS: &[&str] = &["clean", "blocked", "modified", "options", "error", "none"];

/// The values of the `kind` label of the error counters: `connect`, `tls`, `timeout`, `io`,
/// `protocol`, `status` (an ICAP error status), `too_large`, `down`, `body` (the caller's
/// body source), `config`, `all_failed` (client); `bad_request`, `timeout`, `eof`, `io`, `service`,
/// `tls_handshake`, `refused_reply` (server).
pub const ERROR_KINDS: &[&str] = &[
    "connect",
    "tls",
    "timeout",
    "io",
    "protocol",
    "status",
    "too_large",
    "down",
    "body",
    "config",
    "all_failed",
    "bad_request",
    "eof",
    "service",
    "tls_handshake",
    "refused_reply",
];

/// Gives the installed recorder a help text and unit for every name above (exporters such
/// as Prometheus print them). Call it once after installing the recorder; without one it
/// does nothing.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CLIENT_TRANSACTIONS, "ICAP client transactions answered");
    describe_counter!(CLIENT_ERRORS, "ICAP client transactions failed, by kind");
    describe_counter!(CLIENT_BYTES_SENT, Unit::Bytes, "bytes sent to ICAP servers");
    describe_counter!(
        CLIENT_BYTES_RECEIVED,
        Unit::Bytes,
        "bytes received from ICAP servers"
    );
    describe_histogram!(
        CLIENT_DURATION,
        Unit::Seconds,
        "ICAP client transaction duration"
    );
    describe_gauge!(CLIENT_POOL_OPEN, "open connections, per server");
    describe_gauge!(CLIENT_POOL_IDLE, "idle pooled connections, per server");
    describe_gauge!(
        CLIENT_SERVER_UP,
        "1 when the server gets traffic, 0 when down"
    );
    describe_counter!(CLIENT_SERVER_MARKED_DOWN, "times a server was marked down");
    describe_counter!(CLIENT_SERVER_REVIVED, "times a down server came back");
    describe_counter!(CLIENT_PROBES, "OPTIONS probes, by result");
    describe_counter!(SERVER_TRANSACTIONS, "ICAP server transactions answered");
    describe_counter!(SERVER_ERRORS, "ICAP server failures, by kind");
    describe_counter!(
        SERVER_BYTES_RECEIVED,
        Unit::Bytes,
        "bytes received from ICAP clients"
    );
    describe_counter!(SERVER_BYTES_SENT, Unit::Bytes, "bytes sent to ICAP clients");
    describe_histogram!(
        SERVER_DURATION,
        Unit::Seconds,
        "ICAP server transaction duration"
    );
    describe_gauge!(SERVER_CONNECTIONS, "connections being served");
    describe_counter!(SERVER_REFUSED, "connections refused with 503 (full)");
}
