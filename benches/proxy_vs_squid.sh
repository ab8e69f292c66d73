#!/usr/bin/env bash
# Same-run comparison of the icap-proxy example against squid, both sending downloads to
# the same dlp-server by RESPMOD, plus curl straight to the origin (the proxies' overhead).
# 1 KiB downloads: requests/s of one keep-alive curl fetching N URLs in a row; 64 MiB
# downloads: MB/s. Rounds alternate between the three paths; the best round of each counts.
#
#   bash benches/proxy_vs_squid.sh [ROUNDS] [N_SMALL] [N_BIG]   (defaults 3 2000 4)
#
# The origin is python3's http.server speaking HTTP/1.0 (a connection per request: its
# HTTP/1.1 mode writes head and body apart and waits out delayed ACKs, 40 ms a request), or
# with ORIGIN=nginx an nginx keeping connections alive (apt-get install nginx-light): python's
# ~400 us per request hides most of what a proxy costs, nginx shows it.
# Needs squid, curl and python3 (`bash .ci/install-peers.sh`); squid runs as root here and
# drops to user "proxy" as in tests/peers_support.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n_small=${2:-2000}
n_big=${3:-4}
cargo build --release --quiet --features adapt,server --example icap-proxy --example dlp-server
dir=$(mktemp -d /tmp/icap-proxy-bench-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done
  echo "$2 did not open port $1" >&2; cat "$dir"/*.log "$dir"/squid/cache.log >&2 2>/dev/null; exit 1
}

mkdir -p "$dir/www"
head -c 1024 /dev/urandom > "$dir/www/1k.bin"
head -c 64M /dev/urandom > "$dir/www/64m.bin"
origin=$(free_port); icap=$(free_port); ours=$(free_port); squid=$(free_port)
if [ "${ORIGIN:-python}" = nginx ]; then
  mkdir -p "$dir/nginx"
  cat > "$dir/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $dir/nginx/pid;
error_log $dir/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/nginx; proxy_temp_path $dir/nginx; fastcgi_temp_path $dir/nginx;
  uwsgi_temp_path $dir/nginx; scgi_temp_path $dir/nginx;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$origin; root $dir/www; }
}
CONF
  nginx -c "$dir/nginx.conf" >"$dir/origin.log" 2>&1 & pids+=($!)
else
  python3 -m http.server "$origin" --bind 127.0.0.1 -d "$dir/www" >"$dir/origin.log" 2>&1 & pids+=($!)
fi
"${CARGO_TARGET_DIR:-target}"/release/examples/dlp-server --listen "127.0.0.1:$icap" >"$dir/dlp.log" 2>&1 & pids+=($!)
"${CARGO_TARGET_DIR:-target}"/release/examples/icap-proxy --listen "127.0.0.1:$ours" --respmod "icap://127.0.0.1:$icap/respmod" >"$dir/proxy.log" 2>&1 & pids+=($!)
sed -e "s|@PORT@|$squid|; s|@DIR@|$dir/squid|g; s|@ICAP_PORT@|$icap|g; s|@RESPMOD_SERVICE@|respmod|; s|@PERSISTENT@|on|; s|@EXTRA@||" \
    -e '/svc_req/d' -e '/@REQMOD_SERVICE@/d' tests/peers/squid/squid.conf.in > "$dir/squid.conf"
mkdir -p "$dir/squid"
chmod 755 "$dir"
chown proxy:proxy "$dir/squid" 2>/dev/null || true
squid -N -f "$dir/squid.conf" >"$dir/squid.log" 2>&1 & pids+=($!)
wait_port "$origin" origin; wait_port "$icap" dlp-server; wait_port "$ours" icap-proxy; wait_port "$squid" squid

url() { echo "http://127.0.0.1:$origin/$1"; }
# seconds for: curl [proxy] fetching URL n times on one connection
run() {
  local via=$1 file=$2 n=$3 t0 t1
  local args=(-s --fail)
  [ "$via" != direct ] && args+=(-x "http://127.0.0.1:$via")
  t0=$(date +%s.%N)
  curl "${args[@]}" "$(url "$file")?i=[1-$n]" > /dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
# check once that each path delivers the bytes
for via in direct "$ours" "$squid"; do
  a=(-s --fail); [ "$via" != direct ] && a+=(-x "http://127.0.0.1:$via")
  got=$(curl "${a[@]}" "$(url 64m.bin)" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$(sha256sum < "$dir/www/64m.bin" | cut -d' ' -f1)" ] || { echo "bad bytes via $via" >&2; exit 1; }
done

declare -A best_small best_big
for r in $(seq "$rounds"); do
  for name in direct icap-proxy squid; do
    case $name in direct) via=direct;; icap-proxy) via=$ours;; squid) via=$squid;; esac
    s=$(run "$via" 1k.bin "$n_small"); b=$(run "$via" 64m.bin "$n_big")
    rps=$(echo "$n_small / $s" | bc -l); mbs=$(echo "$n_big * 64 * 1.048576 / $b" | bc -l)
    printf 'round %d %-10s 1KiB %8.0f req/s   64MiB %7.1f MB/s\n' "$r" "$name" "$rps" "$mbs"
    if [ -z "${best_small[$name]:-}" ] || (( $(echo "$rps > ${best_small[$name]}" | bc -l) )); then best_small[$name]=$rps; fi
    if [ -z "${best_big[$name]:-}" ] || (( $(echo "$mbs > ${best_big[$name]}" | bc -l) )); then best_big[$name]=$mbs; fi
  done
done
echo
printf '%-12s %12s %12s\n' path "1KiB req/s" "64MiB MB/s"
for name in direct icap-proxy squid; do
  printf '%-12s %12.0f %12.1f\n' "$name" "${best_small[$name]}" "${best_big[$name]}"
done
printf 'icap-proxy / squid:  1KiB %.2fx   64MiB %.2fx\n' \
  "$(echo "${best_small[icap-proxy]} / ${best_small[squid]}" | bc -l)" \
  "$(echo "${best_big[icap-proxy]} / ${best_big[squid]}" | bc -l)"
printf 'icap-proxy / direct: 1KiB %.2fx   64MiB %.2fx\n' \
  "$(echo "${best_small[icap-proxy]} / ${best_small[direct]}" | bc -l)" \
  "$(echo "${best_big[icap-proxy]} / ${best_big[direct]}" | bc -l)"
