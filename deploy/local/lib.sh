# Shared by deploy/local/run and deploy/local/test: find or provide what Portcullis needs.
#
# Postgres and Redis, in this order: DATABASE_URL / REDIS_URL when set; else the local servers on
# their standard ports when they answer; else an installed but stopped server is started; else
# the server is installed with apt and started with its data under .local/ (ignored by git).
# Every step is idempotent and asks no questions.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE="$ROOT/.local"
mkdir -p "$STATE"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.1; done
  die "$name did not start listening on 127.0.0.1:$port"
}

# Installs the Debian packages that are missing.
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Installs packages whose daemons must not start: Debian would start nginx on port 80 of every
# interface. Its maintainer scripts ask policy-rc.d first; one refusing everything stands in
# for the install, unless the machine has its own.
apt_install_without_starting() {
  local policy=/usr/sbin/policy-rc.d made=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    made=1
  fi
  apt_install "$@" || { [ -z "$made" ] || as_root rm -f "$policy"; return 1; }
  [ -z "$made" ] || as_root rm -f "$policy"
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    log "Postgres: using DATABASE_URL"
    return 0
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/portcullis"
  if port_open 5432; then
    log "Postgres: found on 127.0.0.1:5432"
    return 0
  fi
  # An installed Debian cluster that is not running.
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ] \
     && [ -z "$(ls -A "$STATE/postgres" 2>/dev/null)" ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ -d "/etc/postgresql/$version/main" ]; then
      log "Postgres: starting cluster $version/main"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
      if port_open 5432 || { sleep 2; port_open 5432; }; then return 0; fi
    fi
  fi
  [ -n "$(ls /usr/lib/postgresql 2>/dev/null)" ] || apt_install postgresql
  port_open 5432 && { log "Postgres: started by its package"; return 0; }
  local bin data="$STATE/postgres"
  bin="/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -n 1)/bin"
  # Postgres refuses to run as root: run it as the postgres user the package created.
  local as=()
  if [ "$(id -u)" -eq 0 ]; then as=(runuser -u postgres --); fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "Postgres: creating a cluster in $data"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$data"
    "${as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  log "Postgres: starting the cluster in $data"
  "${as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p 5432 -k /tmp" start >/dev/null
  wait_port 5432 Postgres
}

ensure_redis() {
  if [ -n "${REDIS_URL:-}" ]; then
    log "Redis: using REDIS_URL"
    return 0
  fi
  export REDIS_URL="redis://127.0.0.1:6379"
  if port_open 6379; then
    log "Redis: found on 127.0.0.1:6379"
    return 0
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  port_open 6379 && { log "Redis: started by its package"; return 0; }
  mkdir -p "$STATE/redis"
  log "Redis: starting with its files in $STATE/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE/redis" --logfile "$STATE/redis/redis.log" --pidfile "$STATE/redis/redis.pid"
  wait_port 6379 Redis
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo is not installed; install Rust (https://rustup.rs) and run this again"
}

# The real MCP peers the end-to-end tests talk to: the Python SDK in a venv, and the npm packages
# of tests/peers/package.json. Reinstalled only when their pinned lists change.
ensure_test_peers() {
  local dir="$ROOT/tests/peers"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  [ -x /usr/sbin/nginx ] || apt_install_without_starting nginx
  if [ ! -x "$dir/.venv/bin/python" ] || ! cmp -s "$dir/requirements.txt" "$dir/.venv/requirements.txt"; then
    log "test peers: Python venv ($(tr '\n' ' ' <"$dir/requirements.txt"))"
    python3 -m venv "$dir/.venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$dir/.venv"; }
    "$dir/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
    cp "$dir/requirements.txt" "$dir/.venv/requirements.txt"
  fi
  if [ ! -d "$dir/node_modules" ] || ! cmp -s "$dir/package.json" "$dir/node_modules/.package.json"; then
    log "test peers: npm packages"
    (cd "$dir" && npm install --silent --no-audit --no-fund --no-package-lock >/dev/null 2>&1)
    cp "$dir/package.json" "$dir/node_modules/.package.json"
  fi
}

# Debian's Chromium and its WebDriver, for the browser tests.
ensure_chromium() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
  fi
}
