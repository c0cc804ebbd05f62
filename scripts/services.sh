#!/usr/bin/env bash
# Makes sure the local PostgreSQL and Redis the project needs are answering:
# starts them if they are installed but down, installs them from Debian's
# packages if they are missing. Idempotent; safe to run on every start.
# With --browser (the tests), also Debian's chromium (the Bull Board test
# drives it) and prometheus (its promtool unit-tests the alert rules).
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

# apt_install [--no-install-recommends] PACKAGE...
apt_install() {
  local flags=""
  if [ "${1:-}" = "--no-install-recommends" ]; then flags=$1; shift; fi
  if ! command -v apt-get >/dev/null; then
    log "cannot install $*: no apt-get here; install them yourself"
    exit 1
  fi
  log "installing $* from Debian's packages"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      log "cannot install $*: not root and no sudo; install them yourself"
      exit 1
    fi
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  # Through env: sudo resets the environment, and a prompt would hang the run.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $flags "$@" >/dev/null
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

# --- Redis -------------------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt_install redis-server redis-tools
fi
if ! redis_up; then
  log "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { log "Redis did not start"; exit 1; }
fi

# --- PostgreSQL ----------------------------------------------------------------
fresh_pg=0
if ! command -v pg_ctlcluster >/dev/null; then
  apt_install postgresql postgresql-client
  fresh_pg=1
fi
if ! pg_up; then
  log "starting PostgreSQL on 127.0.0.1:5432"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 100); do pg_up && break; sleep 0.1; done
  pg_up || { log "PostgreSQL did not start"; exit 1; }
fi
if [ "$fresh_pg" = 1 ]; then
  # A cluster we just installed: let local tools connect as in this project's
  # default URL (postgres, no password) over loopback.
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/; s/^(local\s+all\s+(postgres|all)\s+)\S+/\1trust/' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
log "PostgreSQL and Redis are answering"

# --- chromium (tests only) -------------------------------------------------------
if [ "${1:-}" = "--browser" ] && [ -z "${CHROMIUM_PATH:-}" ] && ! command -v chromium >/dev/null; then
  apt_install chromium
fi

# --- promtool (tests only) --------------------------------------------------------
# test/unit/prometheus-rules.test.ts checks and unit-tests deploy/prometheus/
# with it; Debian ships it in the prometheus package (without the node
# exporter it recommends).
if [ "${1:-}" = "--browser" ] && [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus
fi
