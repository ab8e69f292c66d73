#!/usr/bin/env bash
# render.sh TEMPLATE OUT KEY=VALUE...   -> replaces @KEY@ by VALUE; unset @EXTRA@ becomes empty.
# @MODDIR@ and @PEERS@ get defaults when not given. Fails if a @PLACEHOLDER@ is left.
set -euo pipefail
tpl=$1; out=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
moddir=$(dirname "$(ls /usr/lib/*/c_icap/srv_echo.so /usr/lib/c_icap/srv_echo.so 2>/dev/null | head -1)" 2>/dev/null || true)
python3 - "$tpl" "$out" "MODDIR=$moddir" "PEERS=$here" "EXTRA=" "$@" <<'PY'
import re, sys
tpl, out, *kv = sys.argv[1:]
vals = {}
for a in kv:
    k, _, v = a.partition("=")
    vals[k] = v          # later arguments win over the defaults
text = open(tpl).read()
for k, v in vals.items():
    text = text.replace("@%s@" % k, v)
left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
if left:
    sys.exit("render.sh: unsubstituted placeholders in %s: %s" % (tpl, " ".join(left)))
open(out, "w").write(text)
PY
