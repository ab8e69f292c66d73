//! The example DLP service of `icap` and the code its examples and tests share.
//!
//! A crate of the workspace, `icap-dlp-engine`, that the examples (`dlp-server`,
//! `dlp-scan`, `icap-client`, `icap-proxy`) and the tests of `icap` use as a path
//! dev-dependency. Not published (cargo strips path-only dev-dependencies from the
//! published `icap`).
//!
//! - The root: the embedded engine ([`Scanner`], [`Rules`]), a streaming scanner for
//!   payment cards, US SSNs, EICAR, keywords and regexes, and the ICAP headers that report
//!   any engine's findings ([`icap_headers`]).
//! - [`clamd`]: ClamAV's daemon as the engine (its INSTREAM and FILDES commands).
//! - [`service`]: the DLP ICAP service (`reqmod`, `respmod`, vendor profiles, the block
//!   page) over either engine ([`service::Engine`]).
//! - [`ops`]: the `--metrics` endpoint and the TLS reload on SIGHUP of the example servers.
//! - [`listen`]: listening under load (backlog, open-files limit, backpressure, eviction of
//!   idle connections) for the example servers.
//! - [`cli`]: the value parsers the examples' command lines share.
//! - [`tls_args`]: the TLS flags of the client examples.

mod scanner;

pub mod clamd;
pub mod cli;
pub mod listen;
pub mod ops;
pub mod service;
pub mod tls_args;

pub use scanner::{
    icap_headers, infection_header, scan, violations_header, Finding, FindingKind, Rules,
    RulesError, Scanner, EICAR, MAX_BUFFER, MAX_FINDINGS, MAX_LISTED_VIOLATIONS, MAX_MATCH_LEN,
};
