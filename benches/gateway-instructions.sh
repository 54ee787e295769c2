#!/usr/bin/env bash
# Instructions per proxied call, counted by callgrind: the gateway (one worker thread) and a
# private redis-server of its own, both run under `valgrind --tool=callgrind`, serve the load
# benchmark's `tools/call` (the same policy: a condition and two limits, audit on). After a
# warm-up, both counters are zeroed, CALLS calls are made, and the counts are divided by CALLS.
# Unlike requests per second or CPU time, these counts do not depend on what else the machine
# is doing, so two builds can be compared on a noisy machine (docs/performance.md). Kernel work
# (syscalls, networking) is not counted.
#
# Usage: benches/gateway-instructions.sh [calls, default 5000] [connections, default 32]
# PORTCULLIS_BIN=path counts that binary instead of building one. KEEP=dir copies the two
# profiles there (for callgrind_annotate). TRACES=1 counts them with tracing on: each call
# carries a client's `traceparent`, and the gateway exports its spans over OTLP/HTTP to the
# upstream nginx (which takes any POST); the exporter's threads are counted with the gateway.
# Listens on 127.0.0.1 only.
set -euo pipefail
. "$(dirname "$0")/../deploy/local/lib.sh"
cd "$ROOT"

CALLS=${1:-5000}
CONNS=${2:-32}
UP_PORT=18921 PROXY_PORT=18922 GW_PORT=18923 PY_PORT=18924 REDIS_PORT=18925

apt_install valgrind
OUT=$(mktemp -d)
log "starting a private Redis under callgrind (:$REDIS_PORT)"
valgrind --tool=callgrind --callgrind-out-file="$OUT/redis.%p" \
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 300); do port_open "$REDIS_PORT" && break; sleep 0.1; done
wait_port "$REDIS_PORT" "Redis under callgrind"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export PORTCULLIS_WORKER_THREADS=1
# Under callgrind both processes run many times slower: a Redis answer may take longer than the
# production default of 250 ms, which would refuse calls (counted instructions do not depend on it).
export PORTCULLIS_LIMITER_TIMEOUT=${PORTCULLIS_LIMITER_TIMEOUT:-5s}
GATEWAY_WRAP="valgrind --tool=callgrind --callgrind-out-file=$OUT/gateway.%p"
TRACE_HEADER=()
if [ -n "${TRACES:-}" ]; then
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$UP_PORT"
  TRACE_HEADER=(-H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
fi
. "$ROOT/benches/gateway-setup.sh"
# The set-up's exit trap stops the gateway (and waits for every child); Redis and the profiles
# are this script's.
trap 'kill "$REDIS_PID" 2>/dev/null || true; cleanup; rm -rf "$OUT"' EXIT
trap 'exit 130' INT TERM

URL="http://127.0.0.1:$GW_PORT/g/$TOKEN/mcp"
calls() {
  oha --no-tui -n "$1" -c "$CONNS" -m POST -H 'content-type: application/json' \
    -H 'accept: application/json, text/event-stream' "${TRACE_HEADER[@]}" -D "$WORK/body.json" "$URL" \
    | awk '/Success rate/ { print $3 }'
}
# The profile `callgrind_control -d` last wrote for pid $1 (named $2), and its count so far.
profile() { ls -t "$OUT/$2.$1"* | head -1; }
dumped() { awk '/^(summary|totals):/ { print $2; exit }' "$(profile "$1" "$2")"; }

log "warm-up: 1,000 calls"
calls 1000 >/dev/null
callgrind_control -z "$GW_PID" >/dev/null 2>&1
callgrind_control -z "$REDIS_PID" >/dev/null 2>&1
log "counting $CALLS calls ($CONNS connections)"
rate=$(calls "$CALLS")
[ "$rate" = "100.00%" ] || die "calls failed: success rate $rate"
callgrind_control -d "$GW_PID" >/dev/null 2>&1
callgrind_control -d "$REDIS_PID" >/dev/null 2>&1
sleep 1
gw=$(dumped "$GW_PID" gateway)
rd=$(dumped "$REDIS_PID" redis)
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"
  cp "$(profile "$GW_PID" gateway)" "$KEEP/gateway.out"
  cp "$(profile "$REDIS_PID" redis)" "$KEEP/redis.out"
fi
printf '\ninstructions per call (user space): gateway %d, Redis %d\n' $((gw / CALLS)) $((rd / CALLS))
