#!/usr/bin/env bash
# capture.sh [OUTDIR]  -- re-create the wire captures in tests/data (default OUTDIR).
# Starts c-icap (tests/peers/c-icap/c-icap.conf.in), an origin (origin.py), squid, and
# tee.py in front of c-icap, all on 127.0.0.1 free ports under a temp dir, runs the
# clients, copies NAME.request.bin / NAME.response.bin (one TCP connection each) and
# NAME.log (tee timeline) to OUTDIR, and stops everything it started by PID.
# Captured bytes contain dates, so re-running changes them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/../data}" && cd "${1:-$here/../data}" && pwd)
W=$(mktemp -d /tmp/icap-capture.XXXXXX)
chmod 755 "$W"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do waitpid "$p"; done
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
# wait until PID is gone or a zombie (PID 1 may reap late), at most 20 s
waitpid() { local i; for i in $(seq 400); do
  [ -e "/proc/$1" ] || return 0
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ] && return 0
  sleep 0.05; done; kill -9 "$1" 2>/dev/null || true; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitport() { local i; for i in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "capture: port $1 did not open" >&2; return 1; }

# ---------------- bodies ----------------
B=$W/bodies; mkdir -p "$B"
python3 - "$B" <<'PY'
import sys, os
d = sys.argv[1]
lines = "".join("line %04d of a clean text body, nothing to see.\n" % i for i in range(200))
open(os.path.join(d, "b100.txt"), "w").write(lines[:100])
open(os.path.join(d, "b1024.txt"), "w").write(lines[:1024])
open(os.path.join(d, "b3000.txt"), "w").write(lines[:3000])
open(os.path.join(d, "badword.txt"), "w").write(
    "This page contains a badword, and another BadWord here.\n")
open(os.path.join(d, "blockword.txt"), "w").write("blockword " * 3 + "\n")
open(os.path.join(d, "small.txt"), "w").write("hello from the origin, a small clean file.\n")
open(os.path.join(d, "big.txt"), "w").write(
    "".join("line %04d of a larger clean text body served by the origin.\n" % i for i in range(80)))
open(os.path.join(d, "post3000.bin"), "w").write(lines[:3000])
PY

# ---------------- c-icap ----------------
ICAP=$(freeport); mkdir -p "$W/cicap"
"$here/render.sh" "$here/c-icap/c-icap.conf.in" "$W/cicap/c-icap.conf" PORT="$ICAP" DIR="$W/cicap"
c-icap -N -f "$W/cicap/c-icap.conf" >"$W/cicap/stdout" 2>&1 & pids+=($!)
# a second c-icap with Allow204As200okZeroEncaps
ICAP2=$(freeport); mkdir -p "$W/cicap2"
"$here/render.sh" "$here/c-icap/c-icap.conf.in" "$W/cicap2/c-icap.conf" PORT="$ICAP2" \
  DIR="$W/cicap2" EXTRA=Allow204As200okZeroEncaps
c-icap -N -f "$W/cicap2/c-icap.conf" >"$W/cicap2/stdout" 2>&1 & pids+=($!)
waitport "$ICAP"; waitport "$ICAP2"

# save NAME: copy connection N of tee capture dir to OUTDIR/NAME.*
save() { # capdir n name
  cp "$1/c.$2.request.bin" "$out/$3.request.bin"
  cp "$1/c.$2.response.bin" "$out/$3.response.bin"
  cp "$1/c.$2.log" "$out/$3.log"
  echo "capture: $3 ($(stat -c %s "$out/$3.request.bin") / $(stat -c %s "$out/$3.response.bin") bytes)"
}
# one c-icap-client run through a one-connection tee: cc NAME TARGETPORT c-icap-client-args...
cc() {
  local name=$1 target=$2; shift 2
  local cap=$W/cap-$name; mkdir -p "$cap"
  python3 "$here/tee.py" --target "127.0.0.1:$target" --out "$cap" --name c \
    --port-file "$cap/port" --max-conns 1 2>/dev/null & local tee=$!
  local i; for i in $(seq 100); do [ -s "$cap/port" ] && break; sleep 0.05; done
  (cd "$B" && c-icap-client -i 127.0.0.1 -p "$(cat "$cap/port")" "$@" -v \
     >"$cap/client.out" 2>&1) || true
  waitpid "$tee"; wait "$tee" 2>/dev/null || true
  save "$cap" 1 "$name"
}
cc cicap-options-echo              "$ICAP" -s echo
cc cicap-reqmod-urlcheck-allowed   "$ICAP" -s url_check -req http://allowed.example/index.html
cc cicap-reqmod-urlcheck-blocked   "$ICAP" -s url_check -req http://blocked.example/index.html
cc cicap-respmod-cf-rewrite        "$ICAP" -s content_filtering -f badword.txt \
   -resp http://origin.example/badword.txt -rhx 'Content-Type: text/plain'
cc cicap-respmod-cf-block          "$ICAP" -s content_filtering -f blockword.txt \
   -resp http://origin.example/blockword.txt -rhx 'Content-Type: text/plain'
cc cicap-respmod-preview-ieof      "$ICAP" -s content_filtering -f b100.txt \
   -resp http://origin.example/b100.txt -rhx 'Content-Type: text/plain'
cc cicap-respmod-preview-equal     "$ICAP" -s content_filtering -f b1024.txt \
   -resp http://origin.example/b1024.txt -rhx 'Content-Type: text/plain'
cc cicap-respmod-preview-continue  "$ICAP" -s content_filtering -f b3000.txt \
   -resp http://origin.example/b3000.txt -rhx 'Content-Type: text/plain'
cc cicap-respmod-echo-preview      "$ICAP" -s echo -f b3000.txt \
   -resp http://origin.example/b3000.txt -rhx 'Content-Type: text/plain'
cc cicap-reqmod-echo-body          "$ICAP" -s echo -f b100.txt -req http://origin.example/upload
cc cicap-unknown-service           "$ICAP" -s nosuch -req http://allowed.example/
cc cicap-respmod-ex206             "$ICAP" -s ex206 -206 -f b3000.txt \
   -resp http://origin.example/b3000.txt -rhx 'Content-Type: text/plain'
cc cicap-reqmod-204as200           "$ICAP2" -s url_check -req http://allowed.example/index.html

# ---------------- squid -> c-icap ----------------
ORIGIN=$(freeport)
python3 "$here/origin.py" "$ORIGIN" "$B" 2>"$W/origin.log" & pids+=($!)
waitport "$ORIGIN"
squid_run() { # NAME PERSISTENT REQMOD_SERVICE curl-spec...   (curl-spec: "GET path", "POST path file" or "CHUNKED path file")
  local name=$1 persist=$2 reqsvc=$3; shift 3
  local cap=$W/cap-$name S=$W/squid-$name; mkdir -p "$cap" "$S"; chown proxy:proxy "$S" || true
  python3 "$here/tee.py" --target "127.0.0.1:$ICAP" --out "$cap" --name c \
    --port-file "$cap/port" 2>/dev/null & local tee=$!
  local i; for i in $(seq 100); do [ -s "$cap/port" ] && break; sleep 0.05; done
  local SP; SP=$(freeport)
  "$here/render.sh" "$here/squid/squid.conf.in" "$S/squid.conf" PORT="$SP" DIR="$S" \
    ICAP_PORT="$(cat "$cap/port")" REQMOD_SERVICE="$reqsvc" \
    RESPMOD_SERVICE=content_filtering PERSISTENT="$persist"
  squid -N -f "$S/squid.conf" >"$S/stdout" 2>&1 & local sq=$!
  waitport "$SP"
  local spec
  for spec in "$@"; do
    set -- $spec
    if [ "$1" = CHUNKED ]; then   # request body of unknown length (Transfer-Encoding: chunked)
      curl -sS -x "http://127.0.0.1:$SP" --data-binary "@$B/$3" -H 'Content-Type: text/plain' \
        -H 'Transfer-Encoding: chunked' "http://127.0.0.1:$ORIGIN$2" -o "$cap/curl.out" \
        -w "capture: $name POST (chunked) $2 -> %{http_code}\n" || true
    elif [ "$1" = POST ]; then
      curl -sS -x "http://127.0.0.1:$SP" --data-binary "@$B/$3" -H 'Content-Type: text/plain' \
        "http://127.0.0.1:$ORIGIN$2" -o "$cap/curl.out" -w "capture: $name POST $2 -> %{http_code}\n" || true
    else
      curl -sS -x "http://127.0.0.1:$SP" "http://127.0.0.1:$ORIGIN$2" -o "$cap/curl.out" \
        -w "capture: $name GET $2 -> %{http_code}\n" || true
    fi
  done
  sleep 0.3
  kill "$sq"; waitpid "$sq"; sleep 0.3
  kill "$tee" 2>/dev/null || true; waitpid "$tee"
  # name each connection after the ICAP method it carried (OPTIONS-only: "options")
  local n svc
  for n in $(ls "$cap" | sed -n 's/^c\.\([0-9]*\)\.request\.bin$/\1/p' | sort -n); do
    if grep -aq '^REQMOD ' "$cap/c.$n.request.bin"; then svc=reqmod
    elif grep -aq '^RESPMOD ' "$cap/c.$n.request.bin"; then svc=respmod
    else svc=options-$(head -1 "$cap/c.$n.request.bin" | sed -n 's#^OPTIONS icap://[^/]*/\([A-Za-z_]*\).*#\1#p'); fi
    save "$cap" "$n" "$name-$svc"
  done
}
rm -f "$out"/squid-*.bin "$out"/squid-*.log
squid_run squid-small on url_check "GET /small.txt"
squid_run squid-large on url_check "GET /big.txt" "POST /upload post3000.bin"
squid_run squid-post on content_filtering "POST /upload post3000.bin"
squid_run squid-chunked on content_filtering "CHUNKED /upload post3000.bin"
squid_run squid-nopersist off url_check "GET /small.txt"
echo "capture: done, files in $out"
