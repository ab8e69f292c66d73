#!/usr/bin/env bash
# Install the real ICAP peers used by the interop tests: c-icap (+ url_check,
# content_filtering and virus_scan modules, c-icap-client), squid, stunnel, openssl, curl,
# python3, haproxy, and ClamAV's clamd (with sigtool) for dlp-server --clamd.
# Idempotent: does nothing (but the daemon check) when everything is already installed.
# Leaves no squid / c-icap / clamd / freshclam daemon running, with or without an init
# system, and never fetches virus databases: the tests write their own one-line database
# and start their own clamd.
set -euo pipefail

PKGS=(c-icap libc-icap-mod-urlcheck libc-icap-mod-contentfiltering
      libc-icap-mod-virus-scan clamav-daemon clamav
      squid stunnel4 openssl curl python3 haproxy)
# clamav-daemon depends on clamav-freshclam: policy-rc.d keeps its daemon from starting at
# install, and it is disabled and stopped below, so nothing downloads databases.

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

start=$(date +%s.%N)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-peers: installing ${missing[*]}"
  # apt-get update only when the package lists do not know a package yet.
  need_update=0
  for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; break; fi
  done
  if [ "$need_update" = 1 ]; then
    $SUDO apt-get update -qq
  fi

  # Keep maintainer scripts from starting services (invoke-rc.d and
  # deb-systemd-invoke both honour policy-rc.d exit 101).
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  cleanup() { if [ "$own_policy" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup EXIT

  $SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null
  cleanup; own_policy=0
fi

# Make sure no packaged daemon is left running (the tests start their own on other ports).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  $SUDO systemctl disable --now squid.service c-icap.service haproxy.service \
    clamav-daemon.service clamav-daemon.socket clamav-freshclam.service >/dev/null 2>&1 || true
elif command -v service >/dev/null && [ -x /etc/init.d/squid ]; then
  # sysvinit / no init: the init script stops a daemon it knows of; harmless otherwise
  if [ -f /run/squid.pid ]; then $SUDO service squid stop >/dev/null 2>&1 || true; fi
  if [ -f /run/haproxy.pid ] && [ -x /etc/init.d/haproxy ]; then
    $SUDO service haproxy stop >/dev/null 2>&1 || true
  fi
fi
# Anything still listening on the packaged ports (3128 squid, 1344 c-icap) and started
# from the packaged configs: kill it by PID.
for port in 3128 1344; do
  for pid in $(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case "$comm" in
      squid*|c-icap*)
        args=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
        # only packaged daemons (default config), not a test peer started with -f
        if ! grep -q -- ' -f ' <<<" $args " || grep -q '/etc/' <<<"$args"; then
          echo "install-peers: stopping $comm (pid $pid) on :$port"
          $SUDO kill "$pid" 2>/dev/null || true
        fi ;;
    esac
  done
done
# Packaged clamd / freshclam (started with /etc/clamav's configuration): the tests and
# benches run clamd with their own --config-file, which this leaves alone.
for pid in $(pgrep -x 'clamd|freshclam' 2>/dev/null || true); do
  args=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
  if ! grep -q -- '--config-file=' <<<"$args" || grep -q '/etc/clamav' <<<"$args"; then
    echo "install-peers: stopping $(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid)"
    $SUDO kill "$pid" 2>/dev/null || true
  fi
done
for f in /run/squid.pid /run/c-icap/c-icap.pid /var/run/c-icap/c-icap.pid; do
  if [ -f "$f" ]; then
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      echo "install-peers: stopping pid $pid from $f"; $SUDO kill "$pid" 2>/dev/null || true
    fi
  fi
done

end=$(date +%s.%N)
printf 'install-peers: done in %.1f s (c-icap %s, squid %s, stunnel %s, haproxy %s, clamd %s)\n' \
  "$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')" \
  "$(dpkg-query -W -f='${Version}' c-icap)" "$(dpkg-query -W -f='${Version}' squid)" \
  "$(dpkg-query -W -f='${Version}' stunnel4)" "$(dpkg-query -W -f='${Version}' haproxy)" \
  "$(dpkg-query -W -f='${Version}' clamav-daemon)"
