# Helpers shared by the side-by-side bench scripts (sourced, not run): ports on loopback,
# process groups, and CPU ticks read from /proc.

# A free TCP port on 127.0.0.1 (the kernel's choice).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 30 s for something to listen on 127.0.0.1:$1; fails after that.
wait_port() {
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# The PIDs of process group $1 (a server and its children).
group_pids() { ps -o pid= -g "$1" 2>/dev/null | tr -d ' '; }

# User + system clock ticks of the given PIDs, summed.
ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}

# Exits 2 naming the first of the programs ($2...) that is missing, for script $1.
need() {
  local who=$1 p
  shift
  for p in "$@"; do
    command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] ||
      { echo "$who: needs $p (see .ci/install-peers.sh)" >&2; exit 2; }
  done
}

# The directory holding c-icap's module $1 (e.g. srv_echo.so), or nothing.
cicap_module_dir() {
  dirname "$(ls /usr/lib/*/c_icap/"$1" /usr/lib/c_icap/"$1" 2>/dev/null | head -1)" 2>/dev/null || true
}

# Builds the load generator of the side-by-side scripts (`icap-load`, a binary of
# benches/fixtures: one thread, raw ICAP over keep-alive connections, every echo compared
# with the body sent) in release; sets $load_gen to its path.
build_load_gen() {
  cargo build --release --quiet -p icap-bench-fixtures --bin icap-load
  load_gen=${CARGO_TARGET_DIR:-target}/release/icap-load
}

# Core pinning. PIN=1 (the default) runs the load generator on core PIN_LOAD (0) and the
# server under test on core PIN_SERVER (1), through taskset: each server gets one core (its
# child processes and threads inherit it) and never shares it with the generator. PIN=0
# leaves both to the scheduler. Sets the command prefixes pin_load and pin_server (arrays,
# empty when unpinned) and pin_mode (for the report).
pin_setup() {
  pin_load=()
  pin_server=()
  if [ "${PIN:-1}" = 0 ]; then
    pin_mode="unpinned (PIN=0)"
  elif [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    pin_load=(taskset -c "${PIN_LOAD:-0}")
    pin_server=(taskset -c "${PIN_SERVER:-1}")
    pin_mode="pinned (PIN=1): load generator on core ${PIN_LOAD:-0}, server on core ${PIN_SERVER:-1}"
  else
    pin_mode="unpinned (PIN=1 needs taskset and 2 cores)"
  fi
}

# The 1-minute load average, to print beside each figure (the machine is shared).
load1() { cut -d' ' -f1 /proc/loadavg; }

# The dlp-server binary to measure: $DLP_SERVER when set, else the release example, built
# here. Sets dlp.
dlp_server_binary() {
  if [ -n "${DLP_SERVER:-}" ]; then
    dlp=$DLP_SERVER
  else
    cargo build --release --quiet --features server --example dlp-server
    dlp=${CARGO_TARGET_DIR:-target}/release/examples/dlp-server
  fi
}

# A clean body of $2 bytes in file $1: half random bytes, half text, nothing any detector
# (card, SSN, EICAR) finds.
clean_body() {
  { head -c $(($2 / 2)) /dev/urandom || true
    yes "Quarterly report draft, internal use only, order 4711 shipped to customer" | head -c $(($2 - $2 / 2)) || true
  } > "$1"
}

# c-icap's configuration from the tests' template (tests/peers/c-icap/c-icap.conf.in) in
# $1/c-icap.conf: port $2, one child with $3 threads, modules from $moddir, no debug log.
cicap_conf_from_template() {
  sed -e "s|@PORT@|$2|g" -e "s|@DIR@|$1|g" -e "s|@MODDIR@|$moddir|g" \
      -e "s|@PEERS@|$PWD/tests/peers|g" -e "s|@EXTRA@||g" \
      -e "s|^ThreadsPerChild .*|ThreadsPerChild $3|" \
      -e "s|^MaxSpareThreads .*|MaxSpareThreads $3|" \
      -e "s|^DebugLevel .*|DebugLevel 0|" \
      tests/peers/c-icap/c-icap.conf.in > "$1/c-icap.conf"
}
