//! Where the tests find the example binaries and their sample data. `cargo test
//! --all-features` builds the examples before it runs the tests that start them.
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};

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

/// `n` sample files copied into `dir` for a scan run: every third holds card numbers (a copy
/// of customer-export.csv, named `export-NNN.csv`, to be blocked), the others are meeting
/// notes (`notes-NNN.md`, to be allowed). Their paths, in order.
pub fn sample_files(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (src, name) = if i % 3 == 0 {
                ("customer-export.csv", format!("export-{i:03}.csv"))
            } else {
                ("meeting-notes.md", format!("notes-{i:03}.md"))
            };
            let p = dir.join(&name);
            std::fs::copy(data(src), &p).unwrap();
            p.display().to_string()
        })
        .collect()
}
