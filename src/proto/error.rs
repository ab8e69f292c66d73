//! The wire error: what the codec reports about bytes that break the protocol.
//!
//! Every failure of the codec is an [`Error`]: a [`ErrorKind`] a caller can match on, the byte
//! offset in the decoded stream where the problem was seen, and a sentence saying what was
//! expected and what was found. Offsets count from the first byte ever fed to the decoder, so
//! on a keep-alive connection they point into the whole connection, not the current message.
//!
//! Errors that are not about bytes on the wire have their own types, beside the code whose
//! fault they are, and no offset: a message a builder refuses is a
//! [`BuildError`](crate::builder::BuildError), a certificate file that cannot be used a
//! `TlsConfigError` (module `tls`) naming the file, a failed call of the client a
//! `ClientError` (module `client`).

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
