#!/usr/bin/env bash
# Same-run comparison of the release dlp-server example with c-icap 0.5's echo service
# (srv_echo.so, 1 child x CONC threads: every connection served at once, as dlp-server serves
# them), one load generator for all (icap-load, a binary of benches/fixtures: one thread, raw
# ICAP over keep-alive connections; every answer read whole, a 200 compared byte for byte with
# the body sent).
#
# Servers, one at a time, alternating within each case:
#   - dlp-on:  dlp-server with its defaults (card, SSN and EICAR detectors on),
#   - dlp-off: dlp-server with --rules disabling all three (the server without its engine),
#   - c-icap:  c-icap's echo,
#   - base-on / base-off: DLP_BASELINE=PATH, another dlp-server binary (e.g. built from an
#     earlier commit), run the same way in the same run.
# Loads:
#   - echo:    RESPMOD, no Allow: 204, no preview: every server echoes every body (200).
#   - preview: RESPMOD with Allow: 204 and the preview each server asks for in OPTIONS
#              (dlp-server 4096, c-icap 1024), the rest after 100 Continue. dlp-server answers
#              204 on a clean body; c-icap's echo answers every other request 200 (a toggle
#              in srv_echo.c), so columns "204" and "200" say what each server did.
# Bodies: 1 KiB and 1 MiB (half random bytes, half text: nothing any detector finds).
#
# Reported per case and server: answers per second, errors, server CPU per answer (user +
# system ticks of all the server's processes from /proc/PID/stat over the load), peak RSS
# (VmHWM, summed over the server's processes), the load generator's own CPU per answer and
# its share of one core, and the 1-minute load average after the run; then the ratios dlp /
# c-icap of the same round. The machine is 2 cores, shared with the load generator and
# whatever else runs: figures are noisy, ratios of one round steadier than absolutes.
#
# Pinning (benches/lib.sh, pin_setup): PIN=1 (default) runs the generator on core 0 and every
# server (dlp-server, its baseline, c-icap and its children) on core 1; PIN=0 unpinned. The
# header says which.
#
#   bash benches/server_vs_cicap.sh [SECS] [ROUNDS]          (defaults 5 1)
#   SIZES="1024 1048576" CONNS="1 16 64" LOADS="echo preview" SERVERS="dlp-on dlp-off c-icap"
#   select a subset (the defaults are all); DLP_ARGS="--threads 2" goes to every dlp-server
#   run (baseline too); DLP_SERVER=PATH runs that binary instead of building one. A full run
#   with the defaults: 12 cases x 3 servers x SECS.
#
# Needs (installs nothing): c-icap and its echo module (srv_echo.so; .ci/install-peers.sh
# installs them), python3 (free ports), bc, taskset (util-linux) when pinned, and a Rust
# toolchain (builds the release dlp-server example and icap-load).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
secs=${1:-5}
rounds=${2:-1}
sizes=${SIZES:-1024 1048576}
conns_list=${CONNS:-1 16 64}
loads=${LOADS:-echo preview}
servers=${SERVERS:-dlp-on dlp-off c-icap}
read -r -a dlp_args <<< "${DLP_ARGS:-}"
if [ -n "${DLP_BASELINE:-}" ]; then servers="$servers base-on base-off"; fi

need server_vs_cicap.sh c-icap python3 bc
PATH=$PATH:/usr/sbin
moddir=$(cicap_module_dir srv_echo.so)
[ -n "$moddir" ] || { echo "server_vs_cicap.sh: needs c-icap's srv_echo.so (see .ci/install-peers.sh)" >&2; exit 2; }

dlp_server_binary
build_load_gen
pin_setup

work=$(mktemp -d /tmp/icap-server-bench-XXXXXX)
chmod 755 "$work"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM -- "-$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
printf 'disable: card\ndisable: ssn\ndisable: eicar\n' > "$work/off.rules"

tck=$(getconf CLK_TCK)

cicap_conf() { cicap_conf_from_template "$@"; } # $1 dir, $2 port, $3 threads

# One measured run: $1 server kind, $2 body file, $3 conns, $4 load flags; prints
# "txn/s n204 n200 errors cpu_us_per_txn peak_kib load_us_per_txn load_pct load1" (or
# "FAILED").
run_one() {
  local kind=$1 body=$2 conns=$3 flags=$4 port service=respmod
  port=$(free_port)
  case $kind in
    dlp-on) setsid "${pin_server[@]}" "$dlp" --listen "127.0.0.1:$port" "${dlp_args[@]}" > "$work/server.out" 2>&1 & ;;
    dlp-off) setsid "${pin_server[@]}" "$dlp" --listen "127.0.0.1:$port" --rules "$work/off.rules" "${dlp_args[@]}" \
      > "$work/server.out" 2>&1 & ;;
    base-on) setsid "${pin_server[@]}" "$DLP_BASELINE" --listen "127.0.0.1:$port" "${dlp_args[@]}" > "$work/server.out" 2>&1 & ;;
    base-off) setsid "${pin_server[@]}" "$DLP_BASELINE" --listen "127.0.0.1:$port" --rules "$work/off.rules" \
      "${dlp_args[@]}" > "$work/server.out" 2>&1 & ;;
    c-icap)
      service=echo
      mkdir -p "$work/c-icap"
      cicap_conf "$work/c-icap" "$port" "$((conns > 8 ? conns : 8))"
      setsid "${pin_server[@]}" c-icap -N -f "$work/c-icap/c-icap.conf" > "$work/server.out" 2>&1 & ;;
  esac
  server_pid=$!
  if ! wait_port "$port"; then
    echo FAILED
    kill -TERM -- "-$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true
    server_pid=""
    return 0
  fi
  sleep 0.3
  local pids c0 c1 secs_taken n204 n200 err gen_cpu rss=0 v p
  # shellcheck disable=SC2207
  pids=($(group_pids "$server_pid"))
  c0=$(ticks "${pids[@]}")
  # shellcheck disable=SC2086
  read -r n204 n200 err secs_taken gen_cpu < <("${pin_load[@]}" "$load_gen" "$port" "$service" "$body" "$conns" "$secs" $flags)
  # shellcheck disable=SC2207
  pids=($(group_pids "$server_pid"))
  c1=$(ticks "${pids[@]}")
  for p in "${pids[@]}"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    rss=$((rss + v))
  done
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  local answers=$((n204 + n200))
  local div=$((answers > 0 ? answers : 1))
  local gen_us=- gen_pct=-
  if [ "$gen_cpu" != - ]; then
    gen_us=$(printf '%.1f' "$(echo "$gen_cpu * 1000000 / $div" | bc -l)")
    gen_pct=$(printf '%.0f' "$(echo "$gen_cpu * 100 / $secs_taken" | bc -l)")
  fi
  printf '%.1f %s %s %s %.1f %s %s %s %s\n' "$(echo "$answers / $secs_taken" | bc -l)" "$n204" "$n200" \
    "$err" "$(echo "($c1 - $c0) * 1000000 / $tck / $div" | bc -l)" "$rss" "$gen_us" "$gen_pct" "$(load1)"
}

echo "server_vs_cicap: ${secs}s per run, $rounds round(s); $(nproc) cores (shared with the load" \
  "generator and others: noisy); c-icap echo 1 child x max(8, CONNS) threads; dlp-server" \
  "defaults ${dlp_args[*]:-}"
echo "load generator: icap-load (benches/fixtures, one thread); $pin_mode; load average $(cut -d" " -f1-3 /proc/loadavg)"
printf '%-8s %7s %5s %3s %-8s %9s %6s %6s %4s %9s %9s %8s %5s %6s | %6s %6s %6s\n' load size conns r \
  server "txn/s" 204 200 err "cpu us/t" "peak KiB" "gen us/t" "gen%" load1 "x txn" "x cpu" "x rss"
for size in $sizes; do
  clean_body "$work/body.$size" "$size"
  for load in $loads; do
    flags=""
    if [ "$load" = preview ]; then flags="--allow-204 --preview"; fi
    for conns in $conns_list; do
      for r in $(seq 1 "$rounds"); do
        declare -A res=()
        for s in $servers; do res[$s]=$(run_one "$s" "$work/body.$size" "$conns" "$flags"); done
        read -r ct _ _ _ cc cr _ <<< "${res[c-icap]:-0 0 0 0 0 0}"
        for s in $servers; do
          if [ "${res[$s]}" = FAILED ]; then printf '%-8s %7s %5s %3s %-8s FAILED\n' "$load" "$size" "$conns" "$r" "$s"; continue; fi
          read -r t a b e c m gu gp la <<< "${res[$s]}"
          if [ "$s" = c-icap ] || [ "$ct" = 0 ]; then rt=-; rc=-; rm=-; else
            rt=$(printf '%.2f' "$(echo "$t / $ct" | bc -l)")
            rc=$(printf '%.2f' "$(echo "$c / $cc" | bc -l)")
            rm=$(printf '%.2f' "$(echo "$m / $cr" | bc -l)")
          fi
          printf '%-8s %7s %5s %3s %-8s %9s %6s %6s %4s %9s %9s %8s %5s %6s | %6s %6s %6s\n' "$load" \
            "$size" "$conns" "$r" "$s" "$t" "$a" "$b" "$e" "$c" "$m" "$gu" "$gp" "$la" "$rt" "$rc" "$rm"
        done
        unset res
      done
    done
  done
done
