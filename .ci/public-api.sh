#!/usr/bin/env bash
# Compares the crate's public API with the listing checked in as tests/public-api.txt, so
# that every change to the public surface shows in a diff and is a decision.
#
#   bash .ci/public-api.sh            fails, with the difference, when they differ
#   bash .ci/public-api.sh --bless    rewrites tests/public-api.txt from the code
#
# The listing comes from rustdoc's JSON output (nightly format, through RUSTC_BOOTSTRAP on
# the stable compiler), read by .ci/public-api.py; it shares its target directory with the
# docs.rs build of .ci/run, so the dependencies are checked once. The JSON format follows
# the compiler: after a toolchain update, bless and review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${PUBLIC_API_TARGET_DIR:-target/docsrs}"
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
    cargo doc --no-deps --all-features --locked --target-dir "$target_dir" -q
now="$(mktemp)"
trap 'rm -f "$now"' EXIT
python3 .ci/public-api.py "$target_dir/doc/icap.json" > "$now"
if [ "${1:-}" = "--bless" ]; then
    cp "$now" tests/public-api.txt
    echo "public-api: tests/public-api.txt rewritten ($(wc -l < "$now") items)"
    exit 0
fi
if ! diff -u tests/public-api.txt "$now"; then
    echo
    echo "public-api: the public API differs from tests/public-api.txt (- listed, + in the code)."
    echo "If the change is meant, run 'bash .ci/public-api.sh --bless' and commit the listing."
    exit 1
fi
echo "public-api: $(wc -l < "$now") items, as listed in tests/public-api.txt"
