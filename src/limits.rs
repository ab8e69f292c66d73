//! Size limits the decoder enforces as bytes arrive.
//!
//! Every limit bounds memory or work that a peer could otherwise make unbounded. The defaults
//! are generous for real traffic (squid, c-icap and DLP appliances stay far below them) and
//! small enough that a hostile peer cannot make one connection cost more than a few hundred KiB:
//! heads are held once, and the only copies of header bytes, values joined from obs-fold
//! lines, are never longer than the lines they join, so decoding a message's heads takes
//! memory and time linear in their size (`max_icap_head + max_http_head`, 320 KiB, at most).

/// Decoder limits. Build with [`Limits::default`] and change fields as needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
