#!/usr/bin/env bash
# Peak memory of an echo under load: CONC parallel c-icap-client RESPMOD runs with -no204 (so
# every body is answered with a 200 echo), SIZE_KIB each, ROUNDS times, against
#   - the release dlp-server example, streaming echo (its default: bodies over 56 KiB are
#     echoed while they are scanned),
#   - the same with --stream-over off (the body is read whole, kept in the server's echo
#     spool: 128 KiB in memory, the rest in an anonymous temporary file, then echoed),
#   - c-icap 0.5.10's echo service (srv_echo.so), configured as tests/peers/c-icap/
#     c-icap.conf.in (1 child process x 8 threads: 8 transactions at once, the others wait
#     in the accept queue), and
#   - c-icap with enough threads to serve all CONC at once (1 child x CONC threads), which is
#     the load dlp-server carries,
# all in the same run, one server at a time, under two loads:
#   - preview: the client sends the preview each server asks for in OPTIONS (dlp-server 4096,
#     c-icap's echo 1024), then the rest after 100 Continue. c-icap's echo answers every other
#     request with preview data by 204 after the preview (a `whattodo` toggle in its
#     srv_echo.c; a 204 after a preview needs no Allow: 204), so c-icap echoes only half the
#     bodies of this load, dlp-server all of them.
#   - nopreview (-nopreview): no preview; every server echoes every body. The fair comparison. Every echoed body is compared with what was sent
# (cmp): a run with a failed client or a differing body is reported as FAILED, not measured.
#
# Memory, per server: peak RSS (VmHWM of /proc/PID/status) of each round, reset between rounds
# (/proc/PID/clear_refs), reported as the largest and the median of the rounds' peaks (the
# peak moves with how the clients and servers get scheduled on a loaded machine, by 1-2 MiB
# from round to round). c-icap is several processes (a parent that accepts and forks, and its children,
# which serve): reported as the sum of their VmHWM, and the largest one. The sum counts the
# pages they share (libraries, the parent's heap before fork) once per process, so the
# script also samples PSS (smaps_rollup, every 50 ms) of every process of each server and
# reports the largest sampled total: shared pages divided among the processes that map them;
# and the same for anonymous RSS (RssAnon: what the processes allocated, without the mapped
# text of the binary and its libraries).
#
# Wall: time for all ROUNDS of the load (clients included, one server at a time); cpu: user +
# system time of the server's processes (what the server spent on the load: steadier than
# wall on a shared machine).
#
#   bash benches/echo_memory.sh [ROUNDS] [CONC] [SIZE_KIB] [-- DLP-SERVER ARGS...]
#   (defaults 5 64 1024; extra arguments go to both dlp-server runs, e.g. --threads 2;
#   LOADS="nopreview" runs one load only; DLP_BASELINE=PATH also runs another dlp-server
#   binary, e.g. one built from an earlier commit, as "baseline-*" in the same run)
#
# Needs (installs nothing): c-icap, c-icap-client and the c-icap echo module (srv_echo.so;
# .ci/install-peers.sh installs them, Debian packages c-icap and libc-icap-mod-*), cmp, and
# a Rust toolchain (builds the release dlp-server example).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
rounds=${1:-5}
conc=${2:-64}
kib=${3:-1024}
shift $(($# < 3 ? $# : 3))
if [ "${1:-}" = "--" ]; then shift; fi
dlp_extra=("$@")

need echo_memory.sh c-icap c-icap-client cmp
moddir=$(cicap_module_dir srv_echo.so)
[ -n "$moddir" ] || { echo "echo_memory.sh: needs c-icap's srv_echo.so (see .ci/install-peers.sh)" >&2; exit 2; }

cargo build --release --quiet --features server --example dlp-server

work=$(mktemp -d /tmp/icap-echo-mem-XXXXXX)
# Both dlp-server binaries run from copies in the same directory: how much of a binary's text
# a process maps (file-backed RSS) depends on how the file sits in the page cache (a file
# written by `cp` maps ~1 MiB more of the same 8 MB binary than the linker's output here).
cp "${CARGO_TARGET_DIR:-target}"/release/examples/dlp-server "$work/dlp-server"
dlp=$work/dlp-server
if [ -n "${DLP_BASELINE:-}" ]; then
  cp "$DLP_BASELINE" "$work/dlp-baseline"
  DLP_BASELINE=$work/dlp-baseline
fi
server_pid=""
sampler_pid=""
cleanup() {
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill -TERM -- "-$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The body: random bytes and text (so that neither compression nor a scanner's fast path on
# one kind of content decides); no card number, SSN or EICAR string, so the DLP scanner
# lets it through and the answer is an echo.
set +o pipefail
{ head -c $((kib * 512)) /dev/urandom
  yes "Quarterly report draft, internal use only, order 4711 shipped to customer" | head -c $((kib * 512))
} > "$work/body"
set -o pipefail



# The processes of server group $1 (the server was started as a group leader).

# Largest sampled PSS total and anonymous RSS total (KiB) of group $1, written to $2.
sample_pss() {
  local pgid=$1 out=$2 peak=0 apeak=0 total anon pid v a
  trap 'echo "$peak $apeak" > "$out"; exit 0' TERM
  while :; do
    total=0
    anon=0
    for pid in $(group_pids "$pgid"); do
      v=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
      a=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      total=$((total + ${v:-0}))
      anon=$((anon + ${a:-0}))
    done
    if [ "$total" -gt "$peak" ]; then peak=$total; fi
    if [ "$anon" -gt "$apeak" ]; then apeak=$anon; fi
    echo "$peak $apeak" > "$out"
    sleep 0.05 & wait $!
  done
}

# One measured run: $1 name, $2 port, $3 service, then the server command; $load says which
# load (preview, nopreview).
run_case() {
  local name="$1-$load" port=$2 service=$3
  shift 3
  setsid "$@" > "$work/$name.out" 2>&1 &
  server_pid=$!
  if ! wait_port "$port"; then
    # Reported, and the other cases still run.
    printf '%-30s FAILED: nothing listens on port %s after 30 s; its output:\n' "$name" "$port"
    sed -n '1,5p' "$work/$name.out"
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    return 0
  fi
  sample_pss "$server_pid" "$work/$name.pss" &
  sampler_pid=$!
  local ok=1 no_body=0 start end r i pids n=0 sums=() bigs=()
  start=$(date +%s.%N)
  for r in $(seq 1 "$rounds"); do
    pids=()
    for i in $(seq 1 "$conc"); do
      c-icap-client -i 127.0.0.1 -p "$port" -s "$service" -f "$work/body" \
        -resp "http://origin.example/r$r/$i.bin" -no204 "${load_flags[@]}" \
        -o "$work/echo.$i" > /dev/null 2> "$work/client.$i.err" &
      pids+=($!)
    done
    for i in $(seq 1 "$conc"); do
      if ! wait "${pids[$((i - 1))]}"; then ok=0; fi
      if [ -s "$work/echo.$i" ]; then
        if ! cmp -s "$work/body" "$work/echo.$i"; then ok=0; fi
      else
        # No body back: a 204 (c-icap-client writes no file then).
        no_body=$((no_body + 1))
      fi
      rm -f "$work/echo.$i"
    done
    # This round's peak, then the peak counters reset (clear_refs 5) for the next round.
    local sum=0 big=0 pid v
    n=0
    for pid in $(group_pids "$server_pid"); do
      v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      v=${v:-0}
      sum=$((sum + v))
      if [ "$v" -gt "$big" ]; then big=$v; fi
      n=$((n + 1))
      echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true
    done
    sums+=("$sum")
    bigs+=("$big")
  done
  end=$(date +%s.%N)
  local cpu=0 tck
  tck=$(getconf CLK_TCK)
  for pid in $(group_pids "$server_pid"); do
    v=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    cpu=$((cpu + v))
  done
  kill -TERM "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  local status=ok
  if [ "$no_body" -gt 0 ]; then
    status="ok, $no_body of $((rounds * conc)) answered 204"
    # Only c-icap's echo with a preview does that (see above); dlp-server must echo all.
    if [ "$load" != preview ] || [ "$service" != echo ]; then ok=0; fi
  fi
  if [ "$ok" != 1 ]; then status=FAILED; fi
  local pss anon
  read -r pss anon < "$work/$name.pss" || true
  printf '%-30s %5s %9s %9s %9s %9s %9s %7.2f %6.2f  %s\n' "$name" "$n" \
    "$(stat max "${sums[@]}")" "$(stat median "${sums[@]}")" "$(stat max "${bigs[@]}")" \
    "${pss:-0}" "${anon:-0}" "$(echo "$end - $start" | bc)" "$(echo "scale=2; $cpu / $tck" | bc)" \
    "$status"
}

# stat max|median VALUES...
stat() {
  local what=$1
  shift
  printf '%s\n' "$@" | sort -n | awk -v w="$what" '{v[NR] = $1} END {
    if (w == "max") print v[NR]; else print v[int((NR + 1) / 2)] }'
}

cicap_conf() { cicap_conf_from_template "$@"; } # $1 dir, $2 port, $3 threads per child

echo "echo load: $rounds rounds of $conc parallel c-icap-client RESPMOD -no204, $kib KiB bodies"
echo "dlp-server: ServerConfig defaults, default flags (--threads 1: everything on the main" \
  "thread) ${dlp_extra[*]:-}; $(nproc) cores"
echo "KiB; peak = the largest of the rounds' peaks, median = their median (VmHWM is reset"
echo "between rounds); sum = all the server's processes, largest = its largest process"
printf '%-30s %5s %9s %9s %9s %9s %9s %7s %6s  %s\n' server procs "peak sum" "med. sum" \
  "largest" "peak PSS" "peak anon" "wall s" "cpu s" check

for load in ${LOADS:-preview nopreview}; do
  load_flags=()
  if [ "$load" = nopreview ]; then load_flags=(-nopreview); fi
  port=$(free_port)
  run_case dlp-server-streaming "$port" respmod \
    "$dlp" --listen "127.0.0.1:$port" "${dlp_extra[@]}"
  port=$(free_port)
  run_case dlp-server-spool "$port" respmod \
    "$dlp" --listen "127.0.0.1:$port" --stream-over off "${dlp_extra[@]}"
  if [ -n "${DLP_BASELINE:-}" ]; then
    port=$(free_port)
    run_case baseline-streaming "$port" respmod "$DLP_BASELINE" --listen "127.0.0.1:$port"
    port=$(free_port)
    run_case baseline-spool "$port" respmod \
      "$DLP_BASELINE" --listen "127.0.0.1:$port" --stream-over off
  fi
  for threads in 8 "$conc"; do
    port=$(free_port)
    mkdir -p "$work/c-icap-$threads"
    cicap_conf "$work/c-icap-$threads" "$port" "$threads"
    run_case "c-icap-echo-1x$threads" "$port" echo \
      c-icap -N -f "$work/c-icap-$threads/c-icap.conf"
  done
done
