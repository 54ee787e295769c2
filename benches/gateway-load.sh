#!/usr/bin/env bash
# Load benchmark of the gateway (docs/performance.md). Runs side by side, in one go, the same
# `tools/call` against a fast upstream (nginx returning a static JSON-RPC answer):
#   direct      straight to the upstream
#   portcullis  through the gateway: a policy with a condition and two limits, audit on
#   nginx       through nginx as a plain reverse proxy (a worker per core, keep-alive to the
#               upstream)
# and prints throughput, p50/p99 latency and the ratios; then the p99 each adds at half of
# Portcullis's peak rate; then the gateway's RSS with 1,000 open sessions (their GET streams
# held open, upstream: the Python SDK's server). Everything listens on 127.0.0.1.
#
# Idempotent: installs nginx (apt) and oha (cargo) when missing. Not part of the test suite.
# Usage: benches/gateway-load.sh [seconds per run, default 10] [connections, default 64]
set -euo pipefail
. "$(dirname "$0")/../deploy/local/lib.sh"
cd "$ROOT"

DURATION=${1:-10}
CONNS=${2:-64}
SESSIONS=1000
UP_PORT=18911 PROXY_PORT=18912 GW_PORT=18913 PY_PORT=18914

. "$ROOT/benches/gateway-setup.sh"

declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/mcp"
  [portcullis]="http://127.0.0.1:$GW_PORT/g/$TOKEN/mcp"
  [nginx]="http://127.0.0.1:$PROXY_PORT/mcp"
)
# oha: $1 target, $2 extra args; prints "rps p50_ms p99_ms".
load() {
  oha --no-tui --output-format json -z "${DURATION}s" -c "$CONNS" $2 -m POST \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
    -D "$WORK/body.json" "${URL[$1]}" >"$WORK/$1.json"
  jq -r '[.summary.requestsPerSec, (.latencyPercentiles.p50 * 1000), (.latencyPercentiles.p99 * 1000),
          (.statusCodeDistribution["200"] // 0), .summary.successRate] | @tsv' "$WORK/$1.json"
}

# CPU time (ms) the processes $2… have used so far (0 for none): $1 is the awk expression of
# /proc/<pid>/stat's fields to add up (14 user, 15 system).
ticks_ms() {
  local fields=$1 pid ticks=0
  shift
  for pid in "$@"; do ticks=$((ticks + $(awk "{ print $fields }" "/proc/$pid/stat"))); done
  echo $((ticks * 1000 / $(getconf CLK_TCK)))
}
cpu_ms() { ticks_ms '$14 + $15' "$@"; }
kernel_ms() { ticks_ms '$15' "$@"; }
# Idle time of the whole machine so far, all cores (ms).
idle_ms() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%d", ($5 + $6) * 1000 / hz }' /proc/stat; }
UPSTREAM=$(pgrep -P "$(cat "$WORK/upstream.pid")")
PROXY=$(pgrep -P "$(cat "$WORK/proxy.pid")" | tr '\n' ' ')
REDIS_PID=$(pgrep -x redis-server | head -1 || true)
declare -A RPS P50 P99 CPU_GW CPU_PROXY CPU_UPSTREAM CPU_REDIS KERNEL_GW KERNEL_PROXY IDLE
# µs per request of the CPU a process set used since $1 ms: $1 before, $2 after, $3 requests.
per_request() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }'; }
log "peak: $DURATION s each, $CONNS connections"
for t in direct portcullis nginx; do
  oha --no-tui -z 2s -c "$CONNS" -m POST -H 'content-type: application/json' \
    -D "$WORK/body.json" "${URL[$t]}" >/dev/null  # warm-up
  # PERF_RECORD=file: profile the gateway during its peak run (perf record -g).
  if [ "$t" = portcullis ] && [ -n "${PERF_RECORD:-}" ]; then
    perf record ${PERF_ARGS:--F 999 -g} -p "$GW_PID" -o "$PERF_RECORD" -- sleep $((DURATION / 2)) >/dev/null 2>&1 &
  fi
  # shellcheck disable=SC2086 # PROXY and REDIS_PID are lists of pids
  gw0=$(cpu_ms "$GW_PID") px0=$(cpu_ms $PROXY) up0=$(cpu_ms "$UPSTREAM") rd0=$(cpu_ms $REDIS_PID)
  gk0=$(kernel_ms "$GW_PID") pk0=$(kernel_ms $PROXY) id0=$(idle_ms)
  read -r rps p50 p99 ok rate < <(load "$t" "")
  RPS[$t]=$rps P50[$t]=$p50 P99[$t]=$p99
  # CPU per request in microseconds: ms used * 1000 / requests served.
  n=$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { printf "%d", r * d }')
  # shellcheck disable=SC2086
  CPU_GW[$t]=$(per_request "$gw0" "$(cpu_ms "$GW_PID")" "$n")
  CPU_PROXY[$t]=$(per_request "$px0" "$(cpu_ms $PROXY)" "$n")
  CPU_UPSTREAM[$t]=$(per_request "$up0" "$(cpu_ms "$UPSTREAM")" "$n")
  CPU_REDIS[$t]=$(per_request "$rd0" "$(cpu_ms $REDIS_PID)" "$n")
  KERNEL_GW[$t]=$(per_request "$gk0" "$(kernel_ms "$GW_PID")" "$n")
  KERNEL_PROXY[$t]=$(per_request "$pk0" "$(kernel_ms $PROXY)" "$n")
  IDLE[$t]=$(per_request "$id0" "$(idle_ms)" "$n")
  [ "$rate" = "1" ] || log "warning: $t success rate $rate"
done
# Work per Redis round trip so far (the peak runs and their warm-ups): requests' charges and
# audit entries that shared one script call.
BATCH=$(curl -s "http://127.0.0.1:$GW_PORT/metrics" | awk '
  /^portcullis_gateway_redis_batch_size_sum/ { s = $2 } /^portcullis_gateway_redis_batch_size_count/ { c = $2 }
  END { if (c > 0) printf "%.0f round trips, %.1f operations each", c, s / c; else print "unknown" }')
# RATE=n: measure the fixed-rate latency at n requests/s instead (to compare two builds at one rate).
HALF=${RATE:-$(awk -v r="${RPS[portcullis]}" 'BEGIN { printf "%d", r / 2 }')}
declare -A H99
log "fixed rate (default: half of Portcullis's peak): $HALF requests/s"
for t in direct portcullis nginx; do
  read -r _ _ p99 _ _ < <(load "$t" "-q $HALF")
  H99[$t]=$p99
done

log "opening $SESSIONS sessions through the gateway (upstream: the Python SDK's server)"
"$ROOT/tests/peers/.venv/bin/python" "$ROOT/tests/peers/mcp_server.py" --port "$PY_PORT" >/dev/null 2>&1 &
PIDS+=("$!")
wait_port "$PY_PORT" "the Python MCP server"
RSS_BEFORE=$(awk '/VmRSS/ { print $2 }' "/proc/$GW_PID/status")
mkfifo "$WORK/hold"
"$ROOT/tests/peers/.venv/bin/python" "$ROOT/benches/open_sessions.py" \
  "http://127.0.0.1:$GW_PORT/g/$TOKEN2/mcp" "$SESSIONS" <"$WORK/hold" >"$WORK/sessions.out" 2>&1 &
HOLDER=$!
PIDS+=("$HOLDER")
exec 7>"$WORK/hold"
for _ in $(seq 1 600); do grep -q '^open' "$WORK/sessions.out" 2>/dev/null && break; sleep 0.2; done
grep -q '^open' "$WORK/sessions.out" || die "sessions did not open: $(cat "$WORK/sessions.out")"
sleep 1
RSS_SESSIONS=$(awk '/VmRSS/ { print $2 }' "/proc/$GW_PID/status")
exec 7>&-

printf '\n%-11s %12s %9s %9s %16s\n' target "requests/s" "p50 ms" "p99 ms" "p99 ms @ $HALF/s"
for t in direct portcullis nginx; do
  printf '%-11s %12.0f %9.3f %9.3f %16.3f\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${H99[$t]}"
done
# shellcheck disable=SC2086
printf '\nCPU per request (us): the upstream %s; nginx as proxy %s, %s of it in the kernel (%s workers);\n' \
  "${CPU_UPSTREAM[direct]}" "${CPU_PROXY[nginx]}" "${KERNEL_PROXY[nginx]}" "$(echo $PROXY | wc -w)"
printf '  portcullis %s in the gateway, %s of it in the kernel, + %s in Redis = %s (Redis: %s)\n' \
  "${CPU_GW[portcullis]}" "${KERNEL_GW[portcullis]}" "${CPU_REDIS[portcullis]}" \
  "$(awk -v a="${CPU_GW[portcullis]}" -v b="${CPU_REDIS[portcullis]}" 'BEGIN { printf "%.1f", a + b }')" "$BATCH"
# A request's share of the machine at a given rate is cores / rate. At 0.8x nginx's rate, the
# gateway and Redis could use at most that share minus what everything else (the load
# generator, the upstream) used per request in the Portcullis run (its share minus the
# gateway, Redis and the machine's idle time).
awk -v c="$(getconf _NPROCESSORS_ONLN)" -v p="${RPS[portcullis]}" -v n="${RPS[nginx]}" \
    -v g="${CPU_GW[portcullis]}" -v r="${CPU_REDIS[portcullis]}" -v i="${IDLE[portcullis]}" 'BEGIN {
  printf "  at 0.8x nginx'"'"'s throughput the gateway and Redis could use %.1f us per request\n",
    c * 1e6 / (0.8 * n) - (c * 1e6 / p - g - r - i)
}'
awk -v p="${RPS[portcullis]}" -v n="${RPS[nginx]}" -v d="${RPS[direct]}" \
    -v hp="${H99[portcullis]}" -v hd="${H99[direct]}" -v hn="${H99[nginx]}" 'BEGIN {
  printf "\nthroughput portcullis/nginx: %.2f   portcullis/direct: %.2f   nginx/direct: %.2f\n", p / n, p / d, n / d
  printf "p99 added at half peak: portcullis %.3f ms   nginx %.3f ms\n", hp - hd, hn - hd
}'
printf 'gateway RSS: %d MB idle after load, %d MB with %s open sessions\n' \
  $((RSS_BEFORE / 1024)) $((RSS_SESSIONS / 1024)) "$SESSIONS"
