//! Data loss prevention on top of the protocol: what an ICAP answer means for the content
//! that was sent, and (feature `scan`) the scanner that sends a file and says.
//!
//! Two rooms: the verdict rules and vendor profiles (`verdict.rs`: [`Verdict`], [`Rule`],
//! [`Profile`], [`judge`]), which need no I/O, and the scanner (`scan.rs`:
//! `Client::scan` with a [`ScanRequest`], feature `scan`), which gathers the facts
//! ([`Answer`]) through the [`Client`](crate::client::Client) and asks the rules.

#[cfg(feature = "scan")]
mod scan;
mod verdict;

#[cfg(feature = "scan")]
#[cfg_attr(docsrs, doc(cfg(feature = "scan")))]
pub use scan::{ScanMode, ScanOutcome, ScanRequest};
pub use verdict::{canonical, judge, Answer, Condition, Outcome, Profile, Rule, Verdict};
