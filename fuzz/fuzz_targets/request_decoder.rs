//! The request decoder fed in pieces whose sizes come from the input itself; see harness.rs for
//! the invariants checked.
#![no_main]

#[path = "harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    harness::check::<icap::RequestDecoder>(data);
});
