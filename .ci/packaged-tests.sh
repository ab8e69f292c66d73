#!/usr/bin/env bash
# The crate as crates.io gets it must pass its own codec tests (its test data included):
# unpack what `cargo package` made and run the tests that need no peer.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo package --locked --allow-dirty --no-verify >/dev/null
ver=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# cargo writes the package under its target directory, wherever CARGO_TARGET_DIR puts it.
target="${CARGO_TARGET_DIR:-$PWD/target}"
dir="$target/package/icap-$ver"
rm -rf "$dir"
tar -xzf "$target/package/icap-$ver.crate" -C "$target/package"
cargo test --manifest-path "$dir/Cargo.toml" --target-dir "$target" --features http,client,server \
  --test codec_rfc --test codec_captures --test builders --test codec_errors
