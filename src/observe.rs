//! What the client and server tell about their transactions: the fields of the one tracing
//! span each transaction gets, the labels derived from an answer (verdict, error kind), and
//! the calls into the [`metrics`](crate::metrics) facade, compiled only with the `metrics`
//! feature. Everything here runs once per transaction or per event, never per body chunk.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

use crate::proto::head::Method;
use crate::proto::message::Response;

/// The `method` label: the methods ICAP defines, anything else folded into one value so
/// that a hostile client cannot grow the label set.
pub(crate) fn method_label(m: &Method) -> &'static str {
    match m {
        Method::Options => "OPTIONS",
        Method::Reqmod => "REQMOD",
        Method::Respmod => "RESPMOD",
        _ => "OTHER",
    }
}

/// The `verdict` label of an answer (the values are listed in `metrics::VERDICTS`).
pub(crate) fn verdict(method: &Method, res: &Response) -> &'static str {
    if *method == Method::Options {
        return "options";
    }
    match res.status {
        204 => "clean",
        s if s >= 400 => "error",
        _ => {
            let flagged = [
                "X-Infection-Found",
                "X-Violations-Found",
                "X-Blocked-Reason",
            ]
            .iter()
            .any(|h| res.headers.contains(h));
            if flagged || (*method == Method::Reqmod && res.http_response.is_some()) {
                "blocked"
            } else {
                "modified"
            }
        }
    }
}

/// The `kind` label of a client error.
#[cfg(feature = "client")]
pub(crate) fn client_error_kind(e: &crate::client::ClientError) -> &'static str {
    use crate::client::ClientError as E;
    match e {
        E::Config(_) | E::TlsConfig(_) | E::Build(_) => "config",
        E::Connect { .. } => "connect",
        E::Tls { .. } => "tls",
        E::Timeout { .. } => "timeout",
        E::Io { .. } => "io",
        E::Protocol { .. } => "protocol",
        E::Status { .. } => "status",
        E::AnswerTooLarge { .. } => "too_large",
        E::Down { .. } => "down",
        E::Body(_) => "body",
        E::AllServersFailed(_) => "all_failed",
    }
}

/// A connection to a partner that could not be made (no transaction span exists yet).
#[cfg(feature = "client")]
pub(crate) fn client_connect_failed(e: &crate::client::ClientError) {
    let kind = client_error_kind(e);
    tracing::warn!(kind, "ICAP connection failed: {e}");
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::CLIENT_ERRORS, "kind" => kind).increment(1);
}

/// One finished transaction, as both sides record it.
pub(crate) struct Finished<'a> {
    /// Already in the span (set when it opened); a label of the metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) method: &'static str,
    /// 0 when no answer went or came.
    pub(crate) status: u16,
    pub(crate) verdict: &'static str,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) duration: Duration,
    /// The error, when the transaction failed: its kind.
    pub(crate) error: Option<&'a str>,
}

impl Finished<'_> {
    /// Fills the span's empty fields.
    pub(crate) fn record_span(&self, span: &tracing::Span) {
        span.record("status", self.status);
        span.record("verdict", self.verdict);
        span.record("bytes_sent", self.sent);
        span.record("bytes_received", self.received);
        span.record("duration_ms", self.duration.as_secs_f64() * 1000.0);
        if let Some(kind) = self.error {
            span.record("error", kind);
        }
    }

    #[cfg(feature = "client")]
    pub(crate) fn record_client(&self) {
        #[cfg(feature = "metrics")]
        {
            use crate::metrics as m;
            self.record_common(
                m::CLIENT_TRANSACTIONS,
                m::CLIENT_ERRORS,
                m::CLIENT_BYTES_SENT,
                m::CLIENT_BYTES_RECEIVED,
                m::CLIENT_DURATION,
            );
        }
    }

    #[cfg(feature = "server")]
    pub(crate) fn record_server(&self) {
        #[cfg(feature = "metrics")]
        {
            use crate::metrics as m;
            self.record_common(
                m::SERVER_TRANSACTIONS,
                m::SERVER_ERRORS,
                m::SERVER_BYTES_SENT,
                m::SERVER_BYTES_RECEIVED,
                m::SERVER_DURATION,
            );
        }
    }

    #[cfg(feature = "metrics")]
    fn record_common(
        &self,
        transactions: &'static str,
        errors: &'static str,
        sent: &'static str,
        received: &'static str,
        duration: &'static str,
    ) {
        if self.status != 0 {
            metrics::counter!(
                transactions,
                "method" => self.method,
                "status" => status_label(self.status),
                "verdict" => self.verdict
            )
            .increment(1);
        }
        if let Some(kind) = self.error {
            metrics::counter!(errors, "kind" => kind.to_string()).increment(1);
        }
        metrics::counter!(sent).increment(self.sent);
        metrics::counter!(received).increment(self.received);
        metrics::histogram!(duration, "method" => self.method).record(self.duration);
    }
}

/// A status code as a label without allocating for the common ones.
#[cfg(feature = "metrics")]
fn status_label(s: u16) -> metrics::SharedString {
    match s {
        100 => "100".into(),
        200 => "200".into(),
        204 => "204".into(),
        206 => "206".into(),
        400 => "400".into(),
        404 => "404".into(),
        500 => "500".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}

/// A server-side error counted on its own (outside a finished transaction).
#[cfg(feature = "server")]
pub(crate) fn server_error(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::SERVER_ERRORS, "kind" => kind).increment(1);
}

/// A gauge moved by one (server connections).
#[cfg(feature = "server")]
pub(crate) fn server_connections(delta: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(crate::metrics::SERVER_CONNECTIONS).increment(delta);
}

#[cfg(feature = "server")]
pub(crate) fn server_refused() {
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::SERVER_REFUSED).increment(1);
}

/// The client's view of one partner after a change: health and pool.
#[cfg(all(feature = "client", feature = "metrics"))]
pub(crate) fn client_server_state(server: &str, up: bool, open: usize, idle: usize) {
    {
        use crate::metrics as m;
        let server = server.to_string();
        metrics::gauge!(m::CLIENT_SERVER_UP, "server" => server.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(m::CLIENT_POOL_OPEN, "server" => server.clone()).set(open as f64);
        metrics::gauge!(m::CLIENT_POOL_IDLE, "server" => server).set(idle as f64);
    }
}

/// A health event of a client's partner: `marked_down`, `revived`, `probe_ok`,
/// `probe_failed`.
#[cfg(feature = "client")]
pub(crate) fn client_health_event(server: &str, event: &'static str) {
    match event {
        "marked_down" => tracing::warn!(server, "ICAP server marked down"),
        "revived" => tracing::info!(server, "ICAP server back up"),
        _ => {}
    }
    #[cfg(feature = "metrics")]
    {
        use crate::metrics as m;
        let server = server.to_string();
        match event {
            "marked_down" => {
                metrics::counter!(m::CLIENT_SERVER_MARKED_DOWN, "server" => server).increment(1)
            }
            "revived" => {
                metrics::counter!(m::CLIENT_SERVER_REVIVED, "server" => server).increment(1)
            }
            "probe_ok" => metrics::counter!(m::CLIENT_PROBES, "server" => server, "result" => "ok")
                .increment(1),
            _ => metrics::counter!(m::CLIENT_PROBES, "server" => server, "result" => "failed")
                .increment(1),
        }
    }
}
