//! Size limits the decoder enforces as bytes arrive.
//!
//! Every limit bounds memory or work that a peer could otherwise make unbounded. The defaults
//! are generous for real traffic (squid, c-icap and DLP appliances stay far below them) and
//! small enough that a hostile peer cannot make one connection cost more than a few hundred KiB:
//! heads are held once, and the only copies of header bytes, values joined from obs-fold
//! lines, are never longer than the lines they join, so decoding a message's heads takes
//! memory and time linear in their size (`max_icap_head + max_http_head`, 320 KiB, at most).

/// Decoder limits. Start from [`Limits::default`] and change what you need with the
/// `with_*` setters (the struct is `#[non_exhaustive]`: new limits may be added).
///
/// ```
/// use icap::{Limits, RequestDecoder};
///
/// let limits = Limits::default().with_max_headers(64).with_max_body(Some(10 << 20));
/// let decoder = RequestDecoder::new(limits);
/// # drop(decoder);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest ICAP head (start line, headers and the blank line), in bytes. Default 64 KiB.
    pub max_icap_head: usize,
    /// Largest total of the encapsulated HTTP heads of one message, in bytes. Default 256 KiB.
    pub max_http_head: usize,
    /// Most header lines in any one head (ICAP or HTTP), obs-fold continuation lines
    /// included. Default 128.
    pub max_headers: usize,
    /// Longest header value joined from obs-fold continuation lines, in bytes. Folding is
    /// accepted in ICAP responses and encapsulated HTTP response heads; a joined value is the
    /// one copy of header bytes the decoder makes. Default 16 KiB.
    pub max_folded_value: usize,
    /// Longest chunk-size line including extensions, without CRLF. Default 1024.
    pub max_chunk_line: usize,
    /// Largest trailer section after the last chunk, in bytes. Default 16 KiB.
    pub max_trailer: usize,
    /// Largest Preview a request may announce, in bytes. Default 1 MiB.
    pub max_preview: u64,
    /// Largest de-chunked body of one message, or `None` for no limit (bodies are streamed,
    /// so no limit is needed to bound memory). Default `None`.
    pub max_body: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_icap_head: 64 * 1024,
            max_http_head: 256 * 1024,
            max_headers: 128,
            max_folded_value: 16 * 1024,
            max_chunk_line: 1024,
            max_trailer: 16 * 1024,
            max_preview: 1024 * 1024,
            max_body: None,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_icap_head`].
    #[must_use]
    pub fn with_max_icap_head(mut self, max_icap_head: usize) -> Self {
        self.max_icap_head = max_icap_head;
        self
    }

    /// Sets [`Limits::max_http_head`].
    #[must_use]
    pub fn with_max_http_head(mut self, max_http_head: usize) -> Self {
        self.max_http_head = max_http_head;
        self
    }

    /// Sets [`Limits::max_headers`].
    #[must_use]
    pub fn with_max_headers(mut self, max_headers: usize) -> Self {
        self.max_headers = max_headers;
        self
    }

    /// Sets [`Limits::max_folded_value`].
    #[must_use]
    pub fn with_max_folded_value(mut self, max_folded_value: usize) -> Self {
        self.max_folded_value = max_folded_value;
        self
    }

    /// Sets [`Limits::max_chunk_line`].
    #[must_use]
    pub fn with_max_chunk_line(mut self, max_chunk_line: usize) -> Self {
        self.max_chunk_line = max_chunk_line;
        self
    }

    /// Sets [`Limits::max_trailer`].
    #[must_use]
    pub fn with_max_trailer(mut self, max_trailer: usize) -> Self {
        self.max_trailer = max_trailer;
        self
    }

    /// Sets [`Limits::max_preview`].
    #[must_use]
    pub fn with_max_preview(mut self, max_preview: u64) -> Self {
        self.max_preview = max_preview;
        self
    }

    /// Sets [`Limits::max_body`].
    #[must_use]
    pub fn with_max_body(mut self, max_body: Option<u64>) -> Self {
        self.max_body = max_body;
        self
    }
}
