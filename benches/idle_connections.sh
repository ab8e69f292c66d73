#!/usr/bin/env bash
# Ten thousand idle keep-alive connections from one address: benches/idle_connections.py
# opens N connections (default 10,000) to a server, holds them idle, then sends one REQMOD
# on each and holds them again; it reports how many were connected, answered (statuses and
# failures) and still open, and the server's RSS at each stage. Run against
#   - the release dlp-server example at its defaults (it raises its open-files limit), and
#   - c-icap 0.5 as Debian configures it to grow (3 to 10 children x 10 threads, keep-alive
#     60 s), with its echo service,
# one after the other in the same run. RSS per idle connection = (RSS with the served
# connections held - RSS before any connection) / connections held.
#
#   bash benches/idle_connections.sh [N]
#   (DLP_BASELINE=PATH also runs another dlp-server binary, e.g. one built from an earlier
#   commit, in the same run, with the flags in DLP_BASELINE_ARGS; SOAK=SECS instead keeps N connections busy, request after
#   request, for SECS seconds, and reports transactions and failures: the sustained-load
#   check, e.g. SOAK=120 ... 200; CICAP=0 leaves c-icap out)
#
# Needs (installs nothing): python3, c-icap and its echo module (.ci/install-peers.sh), a
# Rust toolchain, and an open-files hard limit above N (the holder raises its soft limit).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
n=${1:-10000}
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -le "$((n + 100))" ]; then
  echo "idle_connections.sh: the open-files limit ($(ulimit -n)) is below $n connections" >&2
  exit 2
fi
command -v c-icap >/dev/null || { echo "idle_connections.sh: needs c-icap (see .ci/install-peers.sh)" >&2; exit 2; }
moddir=$(cicap_module_dir srv_echo.so)
[ -n "$moddir" ] || { echo "idle_connections.sh: needs c-icap's srv_echo.so" >&2; exit 2; }

cargo build --release --quiet --features server --example dlp-server
work=$(mktemp -d /tmp/icap-idle-XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM -- "-$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT



rss_kib() { # RSS of process group $1, KiB
  local total=0 v pid
  for pid in $(ps -o pid= -g "$1" | tr -d ' '); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# $1 name, $2 port, $3 service, then the server command.
run_case() {
  local name=$1 port=$2 service=$3
  shift 3
  setsid "$@" > "$work/$name.out" 2>&1 &
  server_pid=$!
  wait_port "$port" || { echo "$name: nothing listens on $port"; cat "$work/$name.out"; return 0; }
  sleep 1
  local base
  base=$(rss_kib "$server_pid")
  echo "== $name: RSS before any connection $base KiB"
  python3 benches/idle_connections.py --port "$port" --service "$service" \
    --pgid "$server_pid" -n "$n" --soak "${SOAK:-0}" --connect-conc 2000 --request-conc "$n" \
    | tee "$work/$name.report"
  local held rss
  held=$(awk '/^held/ {print $2}' "$work/$name.report")
  rss=$(sed -n 's/^served .*server RSS \([0-9]*\) KiB$/\1/p' "$work/$name.report")
  if [ -n "$held" ] && [ "$held" -gt 0 ] && [ -n "$rss" ]; then
    echo "$name: $(( (rss - base) * 1024 / held )) bytes of RSS per idle served connection" \
      "($held held, $((rss - base)) KiB over the start)"
  fi
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  sed -n '$p' "$work/$name.out"
  server_pid=""
}

if [ -n "${SOAK:-}" ]; then
  echo "$n keep-alive connections from 127.0.0.1, REQMOD after REQMOD for $SOAK s; $(nproc) cores"
else
  echo "$n idle keep-alive connections from 127.0.0.1, one REQMOD on each; $(nproc) cores"
fi
port=$(free_port)
run_case dlp-server "$port" reqmod "${CARGO_TARGET_DIR:-target}"/release/examples/dlp-server --listen "127.0.0.1:$port"
if [ -n "${DLP_BASELINE:-}" ]; then
  port=$(free_port)
  # shellcheck disable=SC2086 # flags, split on purpose
  run_case baseline "$port" reqmod "$DLP_BASELINE" --listen "127.0.0.1:$port" ${DLP_BASELINE_ARGS:-}
fi
if [ "${CICAP:-1}" = 0 ]; then exit 0; fi
port=$(free_port)
mkdir -p "$work/c-icap"
sed -e "s|@PORT@|$port|g" -e "s|@DIR@|$work/c-icap|g" -e "s|@MODDIR@|$moddir|g" \
    -e "s|@PEERS@|$PWD/tests/peers|g" -e "s|@EXTRA@||g" \
    -e "s|^StartServers .*|StartServers 3|" -e "s|^MaxServers .*|MaxServers 10|" \
    -e "s|^ThreadsPerChild .*|ThreadsPerChild 10|" -e "s|^MinSpareThreads .*|MinSpareThreads 10|" \
    -e "s|^MaxSpareThreads .*|MaxSpareThreads 20|" \
    tests/peers/c-icap/c-icap.conf.in > "$work/c-icap/c-icap.conf"
run_case c-icap-3-10x10 "$port" echo c-icap -N -f "$work/c-icap/c-icap.conf"
