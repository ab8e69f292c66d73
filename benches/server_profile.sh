#!/usr/bin/env bash
# Load-independent counts of the small-body server path, dlp-server (detectors off: --rules
# disabling card, ssn and eicar) beside c-icap 0.5.10's echo, each loaded by the same
# generator (icap-load, a binary of benches/fixtures; unpinned) as in benches/server_vs_cicap.sh:
#
#   - instructions per transaction: the server under `valgrind --tool=callgrind` (all its
#     processes and threads), loaded twice, SHORT and LONG seconds; (instructions of the long
#     run - the short run) / (transactions of the long run - the short run), so start-up,
#     connection set-up and shutdown cancel out;
#   - syscalls per transaction: the server at full speed under `strace -c -f` (every process
#     and thread of it) over SECS seconds of load, total and the three most frequent.
#
# Loads: echo (RESPMOD, no Allow: 204, no preview: a 200 echoing the body) and preview
# (Allow: 204 and the preview each server asks for: dlp-server answers 204, c-icap's echo
# every other request 200, as in server_vs_cicap.sh). c-icap runs 1 child x max(8, CONNS)
# threads with the tests' configuration (MaxKeepAliveRequests 100: it closes a connection
# every 100 requests, counted in its figures as in server_vs_cicap.sh's).
#
#   bash benches/server_profile.sh                      # 1 KiB, echo and preview, 1 and 16 conns
#   SIZE=1024 CONNS="1 16" LOADS="echo preview" SHORT=2 LONG=6 SECS=3 \
#     SERVERS="dlp-off c-icap" DLP_SERVER=PATH KEEP=DIR bash benches/server_profile.sh
#
# KEEP=DIR keeps the callgrind files of the long runs there (callgrind_annotate --inclusive=yes
# DIR/dlp-off.echo.16.* shows where the instructions go). Needs valgrind, strace, c-icap with
# srv_echo.so, python3 (free ports), bc; builds icap-load, and the release dlp-server example
# unless DLP_SERVER is set.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
size=${SIZE:-1024}
conns_list=${CONNS:-1 16}
loads=${LOADS:-echo preview}
servers=${SERVERS:-dlp-off c-icap}
short=${SHORT:-2}
long=${LONG:-6}
secs=${SECS:-3}

need server_profile.sh valgrind strace c-icap python3 bc
PATH=$PATH:/usr/sbin
moddir=$(cicap_module_dir srv_echo.so)
[ -n "$moddir" ] || { echo "server_profile.sh: needs c-icap's srv_echo.so" >&2; exit 2; }
dlp_server_binary
build_load_gen

work=$(mktemp -d /tmp/icap-server-profile-XXXXXX)
chmod 755 "$work"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM -- "-$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
printf 'disable: card\ndisable: ssn\ndisable: eicar\n' > "$work/off.rules"
clean_body "$work/body" "$size"

# Starts server $1 on port $2 for $3 connections, prefixed by the command in $4... (valgrind
# or nothing); sets server_pid (its process group) and service.
start() {
  local kind=$1 port=$2 conns=$3
  shift 3
  case $kind in
    dlp-off)
      service=respmod
      setsid "$@" "$dlp" --listen "127.0.0.1:$port" --rules "$work/off.rules" > "$work/server.out" 2>&1 & ;;
    c-icap)
      service=echo
      mkdir -p "$work/c-icap"
      cicap_conf_from_template "$work/c-icap" "$port" $((conns > 8 ? conns : 8))
      setsid "$@" c-icap -N -f "$work/c-icap/c-icap.conf" > "$work/server.out" 2>&1 & ;;
  esac
  server_pid=$!
  wait_port "$port" || { echo "server_profile.sh: $kind did not start" >&2; cat "$work/server.out" >&2; exit 1; }
  sleep 0.5
}

stop() {
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  # Under valgrind the exit (and the dump) takes a while.
  for _ in $(seq 300); do kill -0 -- "-$server_pid" 2>/dev/null || break; sleep 0.1; done
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Transactions of one load: $1 port, $2 conns, $3 secs, $4 load.
load() {
  local flags="" n204 n200 err
  if [ "$4" = preview ]; then flags="--allow-204 --preview"; fi
  # shellcheck disable=SC2086
  read -r n204 n200 err _ < <("$load_gen" "$1" "$service" "$work/body" "$2" "$3" $flags)
  if [ "$err" != 0 ]; then echo "server_profile.sh: $err errors" >&2; fi
  echo $((n204 + n200))
}

# "instructions transactions" of server $1, load $2, conns $3, $4 seconds under callgrind.
counted() {
  local port n total
  port=$(free_port)
  rm -f "$work"/cg.*
  start "$1" "$port" "$3" valgrind --tool=callgrind --separate-threads=no --trace-children=yes \
    --callgrind-out-file="$work/cg.%p" -q
  n=$(load "$port" "$3" "$4" "$2")
  stop
  total=$(awk '/^summary:/ {s += $2} END {print s}' "$work"/cg.*)
  echo "$total $n"
}

# "syscalls/txn top3" of server $1, load $2, conns $3 under strace -c -f for SECS.
traced() {
  local port n spid p args=()
  port=$(free_port)
  start "$1" "$port" "$3"
  for p in $(group_pids "$server_pid"); do args+=(-p "$p"); done
  strace -c -f -o "$work/strace" "${args[@]}" 2> /dev/null &
  spid=$!
  sleep 0.5
  n=$(load "$port" "$3" "$secs" "$2")
  kill -INT "$spid"
  wait "$spid" 2>/dev/null || true
  stop
  awk -v n="$n" '
    $1 ~ /^-/ || $NF == "syscall" || $NF == "total" { next }
    { calls = ($4 ~ /^[0-9]+$/) ? $4 : 0; c[$NF] = calls; t += calls }
    END {
      printf "%.2f ", t / n
      k = 0
      while (k < 3) {
        best = ""; for (s in c) if (best == "" || c[s] > c[best]) best = s
        if (best == "" || c[best] == 0) break
        printf "%s%s=%.2f", (k ? "," : ""), best, c[best] / n; delete c[best]; k++
      }
      printf "\n"
    }' "$work/strace"
}

echo "server_profile: $size-byte body; callgrind ${short}s and ${long}s runs, strace ${secs}s;" \
  "c-icap echo 1 child x max(8, CONNS) threads"
printf '%-8s %5s %-8s %12s %12s %9s  %s\n' load conns server "instr/txn" "x c-icap" "sys/txn" "top syscalls per txn"
for load in $loads; do
  for conns in $conns_list; do
    declare -A ipt=() spt=()
    for s in $servers; do
      read -r i1 n1 < <(counted "$s" "$load" "$conns" "$short")
      if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        read -r i2 n2 < <(counted "$s" "$load" "$conns" "$long"; for f in "$work"/cg.*; do cp "$f" "$KEEP/$s.$load.$conns.${f##*.}"; done)
      else
        read -r i2 n2 < <(counted "$s" "$load" "$conns" "$long")
      fi
      if [ "$n2" -le "$n1" ]; then ipt[$s]=0; else ipt[$s]=$(((i2 - i1) / (n2 - n1))); fi
      spt[$s]=$(traced "$s" "$load" "$conns")
    done
    for s in $servers; do
      r=-
      if [ "$s" != c-icap ] && [ "${ipt[c-icap]:-0}" -gt 0 ]; then
        r=$(printf '%.2f' "$(echo "${ipt[$s]} / ${ipt[c-icap]}" | bc -l)")
      fi
      read -r sc top <<< "${spt[$s]}"
      printf '%-8s %5s %-8s %12s %12s %9s  %s\n' "$load" "$conns" "$s" "${ipt[$s]}" "$r" "$sc" "$top"
    done
    unset ipt spt
  done
done
