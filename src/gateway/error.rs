//! [`GatewayError`]: what went wrong in the gateway, and whose fault it is.

use std::io;
use std::time::Duration;

/// Whose fault a [`GatewayError`] is: what to look at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The client of the gateway (downstream): it went away, stalled or broke the protocol.
    /// Nothing to fix on the gateway's side; the connection is closed.
    Downstream,
    /// An upstream ICAP server: it refused, stalled, failed or answered wrongly. It counts
    /// towards that upstream's health.
    Upstream,
    /// The gateway's configuration: nothing can work until it is fixed.
    Configuration,
}

/// An error of the gateway. [`GatewayError::fault`] says whose fault it is; the
/// `Display` form names the upstream concerned and what happened, for a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The client sent bytes that are not ICAP (the codec's error says what and where).
    #[error("client: malformed request: {0}")]
    ClientProtocol(#[source] crate::Error),
    /// Reading from or writing to the client failed.
    #[error("client: {op}: {source}")]
    ClientIo {
        /// `read` or `write`.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The client stayed silent longer than
    /// [`GatewayConfig::client_timeout`](super::GatewayConfig::client_timeout) inside a
    /// request or between two.
    #[error("client: silent for {0:?}")]
    ClientTimeout(Duration),
    /// The client closed its connection in the middle of a request.
    #[error("client: closed inside a request")]
    ClientClosed,
    /// Connecting to, reading from or writing to an upstream failed.
    #[error("upstream {upstream}: {op}: {source}")]
    UpstreamIo {
        /// The upstream, `host:port`.
        upstream: String,
        /// `connect`, `read` or `write`.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An upstream did not connect or answer in time.
    #[error("upstream {upstream}: {phase}: no progress in {after:?}")]
    UpstreamTimeout {
        /// The upstream, `host:port`.
        upstream: String,
        /// What was awaited: `connect`, `answer` or `OPTIONS probe`.
        phase: &'static str,
        /// The limit that ran out.
        after: Duration,
    },
    /// An upstream answered bytes that are not an ICAP answer.
    #[error("upstream {upstream}: malformed answer: {source}")]
    UpstreamProtocol {
        /// The upstream, `host:port`.
        upstream: String,
        /// The codec's error.
        #[source]
        source: crate::Error,
    },
    /// An upstream closed the connection before its answer ended.
    #[error("upstream {upstream}: closed before the answer ended")]
    UpstreamClosed {
        /// The upstream, `host:port`.
        upstream: String,
    },
    /// An upstream answered a health probe (`OPTIONS`) with another status than `200`.
    #[error("upstream {upstream}: OPTIONS probe answered {status}")]
    UpstreamStatus {
        /// The upstream, `host:port`.
        upstream: String,
        /// The ICAP status.
        status: u16,
    },
    /// No upstream could take a transaction: all down, or all failed it before answering
    /// (the client got the gateway's own `503`). Holds the last upstream failure, if any
    /// upstream was tried.
    #[error("no upstream could take the transaction{}", last.as_ref().map_or(String::new(), |e| format!(" (last: {e})")))]
    NoUpstream {
        /// The last upstream failure.
        last: Option<Box<GatewayError>>,
    },
    /// The gateway cannot be set up as asked.
    #[error("gateway configuration: {0}")]
    Config(String),
}

impl GatewayError {
    /// Whose fault it is.
    ///
    /// ```
    /// use icap::gateway::{Fault, GatewayError};
    ///
    /// assert_eq!(GatewayError::ClientClosed.fault(), Fault::Downstream);
    /// let e = GatewayError::NoUpstream { last: None };
    /// assert_eq!(e.fault(), Fault::Upstream);
    /// ```
    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::ClientProtocol(_)
            | GatewayError::ClientIo { .. }
            | GatewayError::ClientTimeout(_)
            | GatewayError::ClientClosed => Fault::Downstream,
            GatewayError::UpstreamIo { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::UpstreamProtocol { .. }
            | GatewayError::UpstreamClosed { .. }
            | GatewayError::UpstreamStatus { .. }
            | GatewayError::NoUpstream { .. } => Fault::Upstream,
            GatewayError::Config(_) => Fault::Configuration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_its_side_and_what() {
        let refused = || GatewayError::UpstreamIo {
            upstream: "127.0.0.1:1344".into(),
            op: "connect",
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let e = refused();
        assert_eq!(e.fault(), Fault::Upstream);
        assert!(
            e.to_string()
                .starts_with("upstream 127.0.0.1:1344: connect: "),
            "{e}"
        );
        let none = GatewayError::NoUpstream {
            last: Some(Box::new(refused())),
        };
        assert!(none.to_string().starts_with(
            "no upstream could take the transaction (last: upstream 127.0.0.1:1344: connect: "
        ));
        assert_eq!(
            GatewayError::NoUpstream { last: None }.to_string(),
            "no upstream could take the transaction"
        );
        let t = GatewayError::ClientTimeout(Duration::from_secs(5));
        assert_eq!(t.fault(), Fault::Downstream);
        assert_eq!(t.to_string(), "client: silent for 5s");
        let c = GatewayError::Config("no upstream".into());
        assert_eq!(c.fault(), Fault::Configuration);
        assert_eq!(c.to_string(), "gateway configuration: no upstream");
        let p = GatewayError::ClientProtocol(crate::Error::new(
            crate::ErrorKind::BadStartLine,
            3,
            "not ICAP",
        ));
        assert_eq!(p.fault(), Fault::Downstream);
        assert!(std::error::Error::source(&p).is_some());
    }
}
