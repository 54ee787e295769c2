# Shared set-up of the gateway benchmarks (sourced, not run): installs what is missing, starts
# nginx (the fast upstream on :$UP_PORT and a plain reverse proxy on :$PROXY_PORT), creates a
# database with a tenant, two servers (the fast upstream and the Python SDK's server on
# :$PY_PORT), a policy with a condition and two limits, and two grants ($TOKEN, $TOKEN2), then
# starts the gateway on :$GW_PORT (under $GATEWAY_WRAP, a command prefix, when set) and checks
# one call. Everything it starts is stopped, and the database and Redis keys removed, on exit.
# Leaves: WORK (a scratch directory holding body.json), BIN, GW_PID, PIDS, TOKEN, TOKEN2, ANSWER.
ensure_rust
ensure_postgres
ensure_redis
ensure_test_peers
apt_install nginx-light jq
command -v oha >/dev/null || { log "installing oha (cargo)"; cargo install --locked oha@1.16.0 >/dev/null; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# PORTCULLIS_BIN=path: measure that binary (e.g. an earlier build, side by side) instead.
if [ -n "${PORTCULLIS_BIN:-}" ]; then
  BIN=$PORTCULLIS_BIN
else
  log "building portcullis (release)"
  cargo build --release --locked -p portcullis >/dev/null
  BIN="$CARGO_TARGET_DIR/release/portcullis"
fi

WORK=$(mktemp -d)
PIDS=()
DB=portcullis_bench_$$
PREFIX=bench-$$
# BENCH_PRIVATE=1: a Postgres and a Redis of the benchmark's own (on PG_PORT and REDIS_PORT), so
# that the CPU they use is the benchmark's alone, whatever else the machine runs; their
# processes are then PG_PIDS (the postmaster first) and REDIS_PID.
PG_DATA=
if [ -n "${BENCH_PRIVATE:-}" ]; then
  log "starting a private Redis (:$REDIS_PORT) and Postgres (:$PG_PORT)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
    --logfile "$WORK/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  PG_BIN="/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -n 1)/bin"
  PG_DATA=$(mktemp -d /tmp/portcullis-bench-pg.XXXXXX)
  AS_PG=()
  # Postgres refuses to run as root: run it as the postgres user the package created.
  if [ "$(id -u)" -eq 0 ]; then AS_PG=(runuser -u postgres --); chown postgres:postgres "$PG_DATA"; fi
  "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust >/dev/null
  "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DATA" start >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  wait_port "$REDIS_PORT" "the private Redis"
fi
# The server of DATABASE_URL (set by ensure_postgres), reached through its `postgres` database.
DB_BASE="${DATABASE_URL%/*}/postgres"
DB_URL="${DATABASE_URL%/*}/$DB"
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for n in upstream proxy; do
    [ -f "$WORK/$n.pid" ] && kill "$(cat "$WORK/$n.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "$PG_DATA" ]; then
    "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DATA"
  else
    psql -q "$DB_BASE" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$PREFIX:*" 2>/dev/null \
      | xargs -r redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" DEL >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# A signal (Ctrl-C, a timeout) ends the run through the EXIT trap too.
trap 'exit 130' INT TERM

ANSWER='{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}'
# Two nginx instances, so each side's CPU can be told apart: the upstream (one worker), and
# the reverse proxy with a worker per core, as the gateway has a thread per core.
nginx_conf() { # $1 name, $2 worker_processes, $3 server blocks
  cat >"$WORK/$1.conf" <<CONF
worker_processes $2;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  keepalive_requests 1000000;
  $3
}
CONF
  nginx -c "$WORK/$1.conf" -p "$WORK"
}
log "starting nginx (upstream :$UP_PORT, reverse proxy :$PROXY_PORT)"
nginx_conf upstream 1 "server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type application/json; return 200 '$ANSWER'; }
  }"
nginx_conf proxy auto "upstream fast { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / { proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
wait_port "$UP_PORT" nginx
wait_port "$PROXY_PORT" nginx

log "database $DB and fixtures"
psql -q "$DB_BASE" -c "CREATE DATABASE $DB" >/dev/null
DATABASE_URL=$DB_URL "$BIN" migrate >/dev/null
TOKEN="pcg_$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 43)"
HASH=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
T=$(cat /proc/sys/kernel/random/uuid) S=$(cat /proc/sys/kernel/random/uuid)
S2=$(cat /proc/sys/kernel/random/uuid) P=$(cat /proc/sys/kernel/random/uuid)
P2=$(cat /proc/sys/kernel/random/uuid) G=$(cat /proc/sys/kernel/random/uuid)
G2=$(cat /proc/sys/kernel/random/uuid)
TOKEN2="pcg_$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 43)"
HASH2=$(printf '%s' "$TOKEN2" | sha256sum | cut -d' ' -f1)
# BENCH_POLICY=json measures another policy (e.g. one without limits) for both grants.
POLICY=${BENCH_POLICY:-'{"version":"1","default":"deny","audit":{"arguments":"keys"},"tools":{"echo":{
  "require":[{"path":"args.text","op":"regex","value":"^[a-z]+$"}],
  "limits":[{"counter":"calls","window":"minute","max":1000000000,"scope":"grant"},
            {"counter":"all","window":"hour","max":1000000000,"scope":"tenant"}]}}}'}
psql -q -v ON_ERROR_STOP=1 "$DB_URL" >/dev/null <<SQL
INSERT INTO tenants (id, name) VALUES ('$T', 'bench');
INSERT INTO servers (id, tenant_id, name, url) VALUES ('$S', '$T', 'fast', 'http://127.0.0.1:$UP_PORT/mcp');
INSERT INTO servers (id, tenant_id, name, url) VALUES ('$S2', '$T', 'python', 'http://127.0.0.1:$PY_PORT/mcp');
INSERT INTO policies (id, tenant_id, server_id, name) VALUES ('$P', '$T', '$S', 'bench');
INSERT INTO policies (id, tenant_id, server_id, name) VALUES ('$P2', '$T', '$S2', 'bench');
INSERT INTO policy_versions (tenant_id, policy_id, version, document) VALUES ('$T', '$P', 1, '$POLICY');
INSERT INTO policy_versions (tenant_id, policy_id, version, document) VALUES ('$T', '$P2', 1, '$POLICY');
INSERT INTO grants (id, tenant_id, server_id, policy_id, identity, token_hash, token_hint)
  VALUES ('$G', '$T', '$S', '$P', 'bench', decode('$HASH', 'hex'), 'pcg_…');
INSERT INTO grants (id, tenant_id, server_id, policy_id, identity, token_hash, token_hint)
  VALUES ('$G2', '$T', '$S2', '$P2', 'bench', decode('$HASH2', 'hex'), 'pcg_…');
SQL

log "starting the gateway (:$GW_PORT)"
export DATABASE_URL=$DB_URL PORTCULLIS_REDIS_PREFIX=$PREFIX PORTCULLIS_UPSTREAM_ALLOW=127.0.0.0/8 \
  PORTCULLIS_ENCRYPTION_KEYS=$("$BIN" keygen) PORTCULLIS_SESSION_KEYS=$("$BIN" keygen) PORTCULLIS_LOG=warn
PORTCULLIS_GATEWAY_ADDR=127.0.0.1:$GW_PORT PORTCULLIS_AUDIT_SPILL_DIR="$WORK/spill" \
  ${GATEWAY_WRAP:-} "$BIN" gateway >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
# CP_PORT=n: a control plane too, ingesting the audit stream into Postgres as a deployment's does.
CP_PID=
if [ -n "${CP_PORT:-}" ]; then
  log "starting the control plane (:$CP_PORT), ingesting"
  PORTCULLIS_CONTROL_PLANE_ADDR=127.0.0.1:$CP_PORT "$BIN" control-plane >"$WORK/control-plane.log" 2>&1 &
  CP_PID=$!
  PIDS+=("$CP_PID")
  wait_port "$CP_PORT" "the control plane"
fi
for _ in $(seq 1 1200); do port_open "$GW_PORT" && break; sleep 0.1; done
wait_port "$GW_PORT" portcullis

BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
printf '%s' "$BODY" >"$WORK/body.json"
check=$(curl -s -X POST -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
  --data-binary @"$WORK/body.json" "http://127.0.0.1:$GW_PORT/g/$TOKEN/mcp")
[ "$check" = "$ANSWER" ] || die "the gateway answered: $check"

