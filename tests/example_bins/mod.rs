//! Where the tests find the example binaries and their sample data. `cargo test
//! --all-features` builds the examples before it runs the tests that start them.
#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;

/// The built example `name` (next to the test binary's directory).
pub fn example(name: &str) -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} not built (cargo test --all-features builds it)",
        p.display()
    );
    p
}

/// A sample file of examples/data.
pub fn data(name: &str) -> String {
    format!("{}/examples/data/{name}", env!("CARGO_MANIFEST_DIR"))
}
