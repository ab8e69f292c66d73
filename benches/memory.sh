#!/usr/bin/env bash
# Peak RSS of scanning a 1 GiB file through client and server in one process: the release
# dlp-scan example with no --server starts two TLS DLP servers in-process (client
# certificates required) and scans against them, so the peak covers client and servers.
# Runs with Allow: 204 (the server answers 204) and with --no-204 (the server spools the body
# to disk past 128 KiB and echoes it back in a 200: the worst case), in REQMOD and RESPMOD.
#
#   bash benches/memory.sh [SIZE_MIB]     (default 1024; needs /usr/bin/time: apt-get install time)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
file=$(mktemp /tmp/icap-mem-XXXXXX.bin)
trap 'rm -f "$file"' EXIT
# Mixed content: 8 MiB of random bytes, then 8 MiB of text, repeated (`yes | head` ends by
# SIGPIPE, so no pipefail here).
set +o pipefail
for _ in $(seq 1 $(( (mib + 15) / 16 ))); do
  head -c 8M /dev/urandom
  yes "Quarterly report draft, internal use only, order 4711 shipped to customer" | head -c 8M
done | head -c "${mib}M" > "$file"
set -o pipefail
cargo build --release --quiet --features client,server --example dlp-scan
printf '%-28s %14s %10s %10s %10s\n' case "peak RSS KiB" wall user sys
for mode in reqmod respmod; do
  for flags in "" "--no-204"; do
    out=$(/usr/bin/time -v "${CARGO_TARGET_DIR:-target}"/release/examples/dlp-scan --mode "$mode" $flags "$file" 2>&1 >/dev/null) || true
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' <<<"$out")
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' <<<"$out")
    user=$(sed -n 's/.*User time (seconds): //p' <<<"$out")
    sys=$(sed -n 's/.*System time (seconds): //p' <<<"$out")
    printf '%-28s %14s %10s %10s %10s\n' "$mode ${flags:-(allow 204)}" "$rss" "$wall" "$user" "$sys"
  done
done
