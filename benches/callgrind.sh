#!/usr/bin/env bash
# Instruction counts of the codec figures (heads and bodies) under callgrind: load-independent,
# unlike the criterion times. Each figure runs n and 2n times; the difference over n is the
# count per message (heads) or per MiB (bodies), setup excluded.
#
#   CARGO_TARGET_DIR=... bash benches/callgrind.sh [heads-binary]
set -euo pipefail
bin=${1:-$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/heads-* | grep -v '\.d$' | head -1)}
out=$(mktemp -d)
count() { # spec, extra valgrind args...
    local spec=$1
    shift
    ICAP_CALLGRIND=$spec valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$@" "$bin" \
        2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per() { # fixture, what, n, extra...
    local a b
    a=$(count "$1:$2:$3" "${@:4}")
    b=$(count "$1:$2:$(($3 * 2))" "${@:4}")
    echo $(((b - a) / $3))
}
printf '%-20s %10s %10s %10s %10s %10s %8s %8s\n' fixture icap heads-only all-heads icap-emb embedded ho/all emb/emb
for f in options-200 reqmod-browser-get respmod-squid cicap-204 block-403; do
    icap=$(per $f icap 200)
    ho=$(per $f heads-only 200 --toggle-collect='heads::*_head')
    all=$(per $f all-heads 200)
    ie=$(per $f icap-embedded 200)
    em=$(per $f embedded 200)
    r1=$(echo "scale=2; $ho / $all" | bc)
    # Fixtures without embedded heads count only the loop (about 40): no ratio.
    r2=$([ "$em" -gt 100 ] && echo "scale=2; $ie / $em" | bc || echo -)
    printf '%-20s %10d %10d %10d %10d %10d %8s %8s\n' $f "$icap" "$ho" "$all" "$ie" "$em" "$r1" "$r2"
done
printf '\n%-12s %12s %12s %12s %12s %12s   (instructions per MiB of body)\n' chunk shared with coalesce feed bound
for c in 1024 16384; do
    printf '%-12s' $c
    for how in shared with coalesce feed bound; do
        printf ' %12d' "$(per body-$c $how 2)"
    done
    printf '\n'
done
rm -rf "$out"
