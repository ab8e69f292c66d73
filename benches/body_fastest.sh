#!/usr/bin/env bash
# The body figures of `benches/body.rs` as the fastest sample of each against the fastest
# memcpy sample of the same run, over several runs: on a shared machine other jobs only ever
# add time, so the fastest samples move less than the medians.
#
#   CARGO_TARGET_DIR=... bash benches/body_fastest.sh [group] [runs]
#   group: 1MiB-in-1KiB-chunks (default), 1MiB-in-16KiB-chunks, 64MiB-in-16KiB-chunks ...
set -euo pipefail
cd "$(dirname "$0")/.."
group=${1:-1MiB-in-1KiB-chunks}
runs=${2:-5}
target=${CARGO_TARGET_DIR:-target}
cargo bench --bench body --no-run -q 2>/dev/null
bin=$(ls -t "$target"/release/deps/body-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for _ in $(seq "$runs"); do
    rm -rf "$work/criterion"
    # criterion writes its samples under CARGO_TARGET_DIR/criterion.
    CARGO_TARGET_DIR=$work "$bin" --bench --warm-up-time 0.5 --measurement-time 2 \
        "body/$group/" >/dev/null 2>&1
    python3 - "$work/criterion/body_$group" <<'EOF'
import glob, json, os, sys
d = sys.argv[1]
fastest = {}
for f in glob.glob(d + "/**/new/sample.json", recursive=True):
    s = json.load(open(f))
    name = os.path.relpath(os.path.dirname(os.path.dirname(f)), d).replace("icap_", "")
    fastest[name] = min(t / i for t, i in zip(s["times"], s["iters"]))
base = fastest.pop("memcpy")
print(" ".join(f"{k}={v / base:.2f}x" for k, v in sorted(fastest.items())),
      f"(memcpy {base / 1000:.1f} us)")
EOF
done
