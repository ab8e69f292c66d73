//! The codec's error type, and the client's.
//!
//! Every failure of the codec is an [`Error`]: a [`ErrorKind`] a caller can match on, the byte
//! offset in the decoded stream where the problem was seen, and a sentence saying what was
//! expected and what was found. Offsets count from the first byte ever fed to the decoder, so
//! on a keep-alive connection they point into the whole connection, not the current message.
//!
//! Errors that are not about bytes on the wire have their own types and no offset: a message
//! a builder refuses is a [`BuildError`](crate::builder::BuildError), a certificate file that
//! cannot be used a `TlsConfigError` (module `tls`) naming the file.

use std::fmt;

/// What went wrong. Stable, matchable, and printable in `snake_case` with [`ErrorKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The ICAP request line or status line is not `METHOD URI ICAP/x.y` / `ICAP/x.y NNN reason`.
    BadStartLine,
    /// The protocol version is not of the form `ICAP/<digit>.<digit>`.
    BadVersion,
    /// The status code is not three digits.
    BadStatus,
    /// A header line is malformed (no colon, bad name byte, control byte in a value).
    BadHeader,
    /// A line ends in a bare LF instead of CRLF.
    BareLf,
    /// A folded (obs-fold) header line where folding is not accepted.
    ObsFold,
    /// An ICAP head grew past [`Limits::max_icap_head`](crate::Limits::max_icap_head).
    IcapHeadTooLarge,
    /// The encapsulated HTTP heads are larger than [`Limits::max_http_head`](crate::Limits::max_http_head).
    HttpHeadTooLarge,
    /// More header lines than [`Limits::max_headers`](crate::Limits::max_headers).
    TooManyHeaders,
    /// A header value joined from obs-fold continuation lines is longer than
    /// [`Limits::max_folded_value`](crate::Limits::max_folded_value).
    FoldedValueTooLarge,
    /// A request or response that needs an Encapsulated header has none.
    MissingEncapsulated,
    /// More than one Encapsulated header.
    DuplicateEncapsulated,
    /// The Encapsulated value does not follow the RFC 3507 grammar.
    BadEncapsulated,
    /// The Encapsulated sections are legal in syntax but not for this method and role
    /// (wrong section, wrong order, two bodies, offsets not increasing).
    EncapsulatedNotAllowed,
    /// An Encapsulated offset disagrees with the real size of an encapsulated HTTP head.
    EncapsulatedMismatch,
    /// An encapsulated HTTP head is malformed.
    BadHttpHead,
    /// The Preview header is not a decimal number.
    BadPreview,
    /// The Preview header announces more than [`Limits::max_preview`](crate::Limits::max_preview).
    PreviewTooLarge,
    /// A preview carried more body bytes than its Preview header announced.
    PreviewOverrun,
    /// A chunk-size is not hexadecimal (a sign, a `0x` prefix, a space inside, no digits).
    BadChunkSize,
    /// A chunk-size does not fit in 64 bits.
    ChunkSizeOverflow,
    /// A chunk-size line (size and extensions) is longer than
    /// [`Limits::max_chunk_line`](crate::Limits::max_chunk_line).
    ChunkLineTooLong,
    /// A chunk extension is malformed or not allowed where it stands.
    BadChunkExtension,
    /// Chunk data is not followed by CRLF.
    MissingChunkCrlf,
    /// The trailer section after the last chunk is malformed or too large.
    BadTrailer,
    /// The de-chunked body grew past [`Limits::max_body`](crate::Limits::max_body).
    BodyTooLarge,
    /// The stream ended in the middle of a message.
    UnexpectedEof,
    /// The caller used the API out of order (for example fed more bytes while the decoder waits
    /// for a decision after a preview).
    InvalidState,
    /// An ICAP URI is not `icap://host[:port]/path[?query]` (or `icaps://`).
    BadUri,
    /// A message is not valid for what it is used for (a builder's
    /// [`BuildError`](crate::builder::BuildError) carried in an `Error`, an OPTIONS answer
    /// that cannot be written).
    InvalidMessage,
    /// The peer answered with something the transaction rules forbid at this point (RFC 3507
    /// 4.5, 4.6): 100 after `ieof`, 204 without `Allow: 204` outside a preview, 206 without
    /// `Allow: 206`.
    UnexpectedResponse,
}

impl ErrorKind {
    /// The kind as a `snake_case` word, as printed by `icap-inspect`.
    pub fn as_str(self) -> &'static str {
        use ErrorKind::*;
        match self {
            BadStartLine => "bad_start_line",
            BadVersion => "bad_version",
            BadStatus => "bad_status",
            BadHeader => "bad_header",
            BareLf => "bare_lf",
            ObsFold => "obs_fold",
            IcapHeadTooLarge => "icap_head_too_large",
            HttpHeadTooLarge => "http_head_too_large",
            TooManyHeaders => "too_many_headers",
            FoldedValueTooLarge => "folded_value_too_large",
            MissingEncapsulated => "missing_encapsulated",
            DuplicateEncapsulated => "duplicate_encapsulated",
            BadEncapsulated => "bad_encapsulated",
            EncapsulatedNotAllowed => "encapsulated_not_allowed",
            EncapsulatedMismatch => "encapsulated_mismatch",
            BadHttpHead => "bad_http_head",
            BadPreview => "bad_preview",
            PreviewTooLarge => "preview_too_large",
            PreviewOverrun => "preview_overrun",
            BadChunkSize => "bad_chunk_size",
            ChunkSizeOverflow => "chunk_size_overflow",
            ChunkLineTooLong => "chunk_line_too_long",
            BadChunkExtension => "bad_chunk_extension",
            MissingChunkCrlf => "missing_chunk_crlf",
            BadTrailer => "bad_trailer",
            BodyTooLarge => "body_too_large",
            UnexpectedEof => "unexpected_eof",
            InvalidState => "invalid_state",
            BadUri => "bad_uri",
            InvalidMessage => "invalid_message",
            UnexpectedResponse => "unexpected_response",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A codec error: what was wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}: {message}")]
pub struct Error {
    kind: ErrorKind,
    offset: u64,
    message: String,
}

impl Error {
    /// Makes an error of `kind` at stream `offset`.
    pub fn new(kind: ErrorKind, offset: u64, message: impl Into<String>) -> Self {
        Error {
            kind,
            offset,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The byte offset in the decoded stream where the problem was found.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The human-readable explanation (without kind and offset).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shifts the offset by `base`, for errors found in a slice that starts at `base`.
    pub(crate) fn at(mut self, base: u64) -> Self {
        self.offset += base;
        self
    }
}

/// Shorthand for `Result<T, icap::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a TLS connection to an ICAP server failed, as a setup wizard needs to tell it.
#[cfg(feature = "client")]
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

#[cfg(feature = "client")]
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
#[cfg(feature = "client")]
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
