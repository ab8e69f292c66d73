//! What the client reports: [`ClientError`], each naming the server it concerns, and
//! [`TlsFailure`], the kind of a failed handshake.
//!
//! A server's answer that breaks the protocol carries the codec's [`Error`] as its source;
//! the other variants are about connecting, time, and configuration. The client's own
//! faults are here and the wire's stay with the codec, as h2 keeps its user errors apart.

use crate::Error;

/// Why a TLS connection to an ICAP server failed, as a setup wizard needs to tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's certificate is not issued by a trusted CA (or the chain is incomplete).
    UntrustedServer,
    /// The server's certificate is not the pinned one.
    PinMismatch,
    /// The server's certificate has expired or is not valid yet.
    Expired,
    /// The server's certificate does not name the host connected to.
    NameMismatch,
    /// The server requires a client certificate and none was given (TLS 1.3 alert 116, or a
    /// TLS 1.2 handshake failure without a certificate).
    CertificateRequired,
    /// The server rejected the client certificate (unknown CA, bad or expired certificate).
    ClientCertificateRejected,
    /// No protocol version in common.
    ProtocolVersion,
    /// Any other handshake failure.
    Handshake,
}

impl TlsFailure {
    /// A short `snake_case` name.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::UntrustedServer => "untrusted_server_certificate",
            TlsFailure::PinMismatch => "pinned_certificate_mismatch",
            TlsFailure::Expired => "certificate_expired",
            TlsFailure::NameMismatch => "certificate_name_mismatch",
            TlsFailure::CertificateRequired => "client_certificate_required",
            TlsFailure::ClientCertificateRejected => "client_certificate_rejected",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::Handshake => "handshake_failure",
        }
    }
}

/// What the async client reports. Each error names the server it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is unusable (bad URI, no servers).
    #[error("configuration: {0}")]
    Config(Error),
    /// A TLS certificate, key or CA file cannot be used; the error names the file.
    #[error("{0}")]
    TlsConfig(crate::tls::TlsConfigError),
    /// A request could not be built from what was given (a bad header name or value).
    #[error("{0}")]
    Build(crate::builder::BuildError),
    /// The TCP connection could not be made.
    #[error("{server}: cannot connect: {source}")]
    Connect {
        /// The server.
        server: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS failed: see [`TlsFailure`].
    #[error("{server}: TLS {}: {message}", failure.as_str())]
    Tls {
        /// The server.
        server: String,
        /// The kind of failure.
        failure: TlsFailure,
        /// rustls's description.
        message: String,
    },
    /// A step took longer than its timeout.
    #[error("{server}: timed out during {phase}")]
    Timeout {
        /// The server.
        server: String,
        /// `connect`, `tls handshake`, `transaction` ...
        phase: &'static str,
    },
    /// The connection failed while the transaction was under way (reset, broken pipe, EOF).
    #[error("{server}: connection failed: {source}")]
    Io {
        /// The server.
        server: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server's answer broke the protocol (malformed, or against the rules).
    #[error("{server}: protocol error: {source}")]
    Protocol {
        /// The server.
        server: String,
        /// The codec or transaction error.
        source: Error,
    },
    /// The server answered with an ICAP error status (400, 404, 405, 5xx ...).
    #[error("{server}: ICAP {status} {reason}")]
    Status {
        /// The server.
        server: String,
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The answer grew past its cap ([`ClientConfig::max_answer`](crate::client::ClientConfig::max_answer)
    /// beyond the size of the body sent) and was cut off.
    #[error("{server}: answer too large: {read} bytes read, more than the {limit} allowed")]
    AnswerTooLarge {
        /// The server.
        server: String,
        /// The cap in force for this answer, in bytes.
        limit: u64,
        /// Bytes of the answer read when it was cut off (the offset in the answer).
        read: u64,
    },
    /// The server is marked down (too many failures, or a failed OPTIONS) and was not tried:
    /// it gets no traffic until an OPTIONS probe succeeds.
    #[error("{server}: marked down {}s ago (last error: {last_error}); skipped until an OPTIONS probe succeeds", down_for.as_secs())]
    Down {
        /// The server.
        server: String,
        /// How long it has been down.
        down_for: std::time::Duration,
        /// The failure that marked it down, or of its last probe.
        last_error: String,
    },
    /// The body to send could not be read.
    #[error("reading the body to send: {0}")]
    Body(std::io::Error),
    /// Every server was tried and failed; the errors in the order they happened.
    #[error("all ICAP servers failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    AllServersFailed(Vec<ClientError>),
}
