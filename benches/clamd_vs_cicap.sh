#!/usr/bin/env bash
# Same-run comparison of two ClamAV ICAP servers on the same clamd: the release dlp-server
# example with --clamd, and c-icap 0.5's virus_scan with clamd_mod (Debian's c-icap and
# libc-icap-mod-virus-scan), the combination sites run behind squid.
#
# One clamd (foreground, a Unix socket, a one-line EICAR database, StructuredDataDetection on,
# MaxThreads 16) serves both. The load generator is the same for both (icap-load, a binary of
# benches/fixtures, one thread): CONC keep-alive connections, each sending RESPMOD with Allow:
# 204 and no preview, a clean body of SIZE bytes (random bytes and text: no card, SSN or EICAR), one
# after the other for SECS seconds. An answer is a 204, or a 200 that echoes the body
# unchanged (read whole and compared: c-icap answers bodies of 64 KiB and more so, Allow: 204
# or not; column "of 200"); anything else, or a broken connection, is an error (the
# connection is then opened again). c-icap runs 1 child x CONC threads (all connections served at
# once, as dlp-server serves them); dlp-server runs with its defaults (--threads 1,
# --clamd-max-in-flight 16).
#
# Reported per server and body size: transactions/s, errors, server CPU per transaction
# (user + system time of all the server's processes over the load, divided by the answers),
# clamd's CPU per transaction (the engine's share: the same work for both), the load
# generator's CPU per transaction, the server's peak RSS (VmHWM; for c-icap the sum over its
# processes, and its largest process), and the 1-minute load average after the case. Rounds
# alternate between the servers; every round is printed.
#
# Pinning (benches/lib.sh, pin_setup): PIN=1 (default) runs the generator on core 0 and the
# server (c-icap with its children) on core 1; clamd, the same engine for both, is left to the
# scheduler. PIN=0 unpinned. The header says which.
#
#   bash benches/clamd_vs_cicap.sh [ROUNDS] [SECS] [CONC]    (defaults 2 10 16)
#   SIZES="1024 1048576" (default) chooses the body sizes; DLP_BASELINE=PATH also runs another
#   dlp-server binary (e.g. built from an earlier commit) as "baseline-*" in the same run;
#   INSTREAM=1 also runs dlp-server with --clamd-fildes-max 0 (every body by INSTREAM, none
#   handed over as a file) as "instream-*".
#
# Needs (installs nothing): clamd and sigtool (clamav-daemon), c-icap with virus_scan.so
# and clamd_mod.so (libc-icap-mod-virus-scan), python3 (free ports), taskset (util-linux) when
# pinned; .ci/install-peers.sh installs them. Builds the release dlp-server and icap-load.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
rounds=${1:-2}
secs=${2:-10}
conc=${3:-16}
sizes=${SIZES:-1024 1048576}

need clamd_vs_cicap.sh clamd sigtool c-icap python3
PATH=$PATH:/usr/sbin
moddir=$(cicap_module_dir virus_scan.so)
[ -n "$moddir" ] || { echo "clamd_vs_cicap.sh: needs c-icap's virus_scan.so (libc-icap-mod-virus-scan)" >&2; exit 2; }

cargo build --release --quiet --features server --example dlp-server
build_load_gen
pin_setup

work=$(mktemp -d /tmp/icap-clamd-bench-XXXXXX)
chmod 755 "$work"
server_pid=""
clamd_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM -- "-$server_pid" 2>/dev/null || true; fi
  if [ -n "$clamd_pid" ]; then kill -TERM "$clamd_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# clamd, shared by both servers.
mkdir -p "$work/db"
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > "$work/Icap-Test.EICAR"
sigtool --md5 "$work/Icap-Test.EICAR" > "$work/db/icap-test.hdb"
cat > "$work/clamd.conf" <<CONF
LocalSocket $work/clamd.sock
LocalSocketMode 666
DatabaseDirectory $work/db
TemporaryDirectory $work
LogFile $work/clamd.log
Foreground yes
StructuredDataDetection yes
StructuredMinCreditCardCount 1
StructuredMinSSNCount 1
StreamMaxLength 100M
MaxThreads 16
CONF
clamd --foreground --config-file="$work/clamd.conf" > "$work/clamd.out" 2>&1 &
clamd_pid=$!
for _ in $(seq 300); do [ -S "$work/clamd.sock" ] && break; sleep 0.1; done
[ -S "$work/clamd.sock" ] || { echo "clamd did not start:" >&2; cat "$work/clamd.out" >&2; exit 1; }


tck=$(getconf CLK_TCK)

# One measured case: $1 name, $2 port, $3 service, $4 body file, then the server command.
run_case() {
  local name=$1 port=$2 service=$3 body=$4
  shift 4
  setsid "${pin_server[@]}" "$@" > "$work/$name.out" 2>&1 &
  server_pid=$!
  if ! wait_port "$port"; then
    printf '%-24s FAILED: nothing listens on port %s; its output:\n' "$name" "$port"
    sed -n '1,5p' "$work/$name.out"
    kill -TERM -- "-$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true
    server_pid=""
    return 0
  fi
  sleep 0.5
  local pids c0 k0 c1 k1 ok echoed err gen_cpu gen_us=- t0 t1 rss big v n
  # shellcheck disable=SC2207
  pids=($(group_pids "$server_pid"))
  c0=$(ticks "${pids[@]}"); k0=$(ticks "$clamd_pid")
  t0=$(date +%s.%N)
  read -r ok echoed err _ gen_cpu < <("${pin_load[@]}" "$load_gen" "$port" "$service" "$body" "$conc" "$secs" --allow-204)
  t1=$(date +%s.%N)
  # shellcheck disable=SC2207
  pids=($(group_pids "$server_pid"))
  c1=$(ticks "${pids[@]}"); k1=$(ticks "$clamd_pid")
  rss=0; big=0; n=0
  for p in "${pids[@]}"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    rss=$((rss + v)); n=$((n + 1))
    if [ "$v" -gt "$big" ]; then big=$v; fi
  done
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  local answers=$((ok + echoed))
  local total=$((answers + err))
  [ "$total" -gt 0 ] || total=1
  if [ "$gen_cpu" != - ]; then gen_us=$(printf '%.1f' "$(echo "$gen_cpu * 1000000 / $total" | bc -l)"); fi
  printf '%-24s %8s %7s %9.1f %7s %10.1f %10.1f %10s %6s %10s %10s %6s\n' "$name" "$answers" "$echoed" \
    "$(echo "$answers / ($t1 - $t0)" | bc -l)" "$err" \
    "$(echo "($c1 - $c0) * 1000000 / $tck / $total" | bc -l)" \
    "$(echo "($k1 - $k0) * 1000000 / $tck / $total" | bc -l)" \
    "$gen_us" "$n" "$rss" "$big" "$(load1)"
}

cicap_conf() { # $1 dir, $2 port
  cicap_conf_from_template "$1" "$2" "$conc"
  cat >> "$1/c-icap.conf" <<CONF
Module common clamd_mod.so
clamd_mod.ClamdSocket $work/clamd.sock
Service virus_scan virus_scan.so
virus_scan.DefaultEngine clamd
virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE
virus_scan.MaxObjectSize 100M
virus_scan.Allow204Responces on
CONF
}

echo "load: $conc keep-alive connections, RESPMOD + Allow: 204, no preview, ${secs}s per case;" \
  "$(nproc) cores (shared: figures are noisy); clamd $(clamd --version | cut -d/ -f1)"
echo "load generator: icap-load (benches/fixtures, one thread); $pin_mode; load average $(cut -d" " -f1-3 /proc/loadavg)"
printf '%-24s %8s %7s %9s %7s %10s %10s %10s %6s %10s %10s %6s\n' server answers "of 200" "txn/s" errors \
  "cpu us/txn" "clamd us/t" "gen us/t" procs "peak KiB" "largest" load1
for size in $sizes; do
  clean_body "$work/body.$size" "$size"
  for r in $(seq 1 "$rounds"); do
    port=$(free_port)
    run_case "dlp-server-$size-r$r" "$port" respmod "$work/body.$size" \
      "${CARGO_TARGET_DIR:-target}/release/examples/dlp-server" --listen "127.0.0.1:$port" --clamd "$work/clamd.sock"
    if [ "${INSTREAM:-0}" = 1 ]; then
      port=$(free_port)
      run_case "instream-$size-r$r" "$port" respmod "$work/body.$size" \
        "${CARGO_TARGET_DIR:-target}/release/examples/dlp-server" --listen "127.0.0.1:$port" \
        --clamd "$work/clamd.sock" --clamd-fildes-max 0
    fi
    if [ -n "${DLP_BASELINE:-}" ]; then
      port=$(free_port)
      run_case "baseline-$size-r$r" "$port" respmod "$work/body.$size" \
        "$DLP_BASELINE" --listen "127.0.0.1:$port" --clamd "$work/clamd.sock"
    fi
    port=$(free_port)
    mkdir -p "$work/c-icap"
    cicap_conf "$work/c-icap" "$port"
    run_case "c-icap-vscan-$size-r$r" "$port" virus_scan "$work/body.$size" \
      c-icap -N -f "$work/c-icap/c-icap.conf"
  done
done
