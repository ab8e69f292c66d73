#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short time on its committed seeds; exits
# non-zero on the first crash, leak or timeout (the input is left in fuzz/artifacts/TARGET/).
#
#   bash fuzz/smoke.sh [SECONDS_PER_TARGET]     (default 25)
#
# Needs cargo-fuzz (installed here on first use) and a nightly compiler, or stable with
# RUSTC_BOOTSTRAP=1 as set below. Runs one fuzzer at a time, at low priority. New corpus
# entries go to fuzz/corpus/TARGET (git-ignored), never into fuzz/seeds.
set -euo pipefail
secs="${1:-25}"
cd "$(dirname "$0")"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=(request_decoder response_decoder encapsulated chunked options roundtrip)
nice -n 19 cargo fuzz build
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz smoke: $t for ${secs}s"
    nice -n 19 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=8192 -timeout=10 -print_final_stats=1 \
        2>"corpus/$t.log" || { tail -n 60 "corpus/$t.log"; echo "fuzz smoke: $t FAILED"; exit 1; }
    grep -E '^stat::number_of_executed_units' "corpus/$t.log" | sed "s/^/fuzz smoke: $t /"
done
echo "fuzz smoke: all ${#targets[@]} targets ran clean"
