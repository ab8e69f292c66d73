//! Test-only example target: runs the unit tests of the DLP engine under
//! `cargo test --example dlp-engine-tests` (examples are not unit-tested otherwise).
#![allow(dead_code)]

#[path = "dlp_engine.rs"]
mod dlp_engine;

fn main() {}
