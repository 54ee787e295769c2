#!/usr/bin/env bash
# Load benchmark of the gateway (docs/performance.md). Runs side by side, in one go, the same
# `tools/call` against a fast upstream (nginx returning a static JSON-RPC answer):
#   direct      straight to the upstream
#   portcullis  through the gateway: a policy with a condition and two limits, audit on
#   nginx       through nginx as a plain reverse proxy (a worker per core, keep-alive to the
#               upstream)
#   floor       through the gateway's HTTP frame with nothing inside (same threads, server and
#               pooled client; no parsing, policy, Redis or audit: crates/gateway/examples/
#               floor_proxy.rs), the most any gateway built on this stack could do
# and prints throughput, p50/p99 latency and the ratios; then the p99 each adds at half of
# Portcullis's peak rate (and where a call waits inside the gateway meanwhile); then the gateway's RSS with 1,000 open sessions (their GET streams
# held open, upstream: the Python SDK's server). The targets take turns, ROUNDS times (default
# 3), and each figure is the median of the rounds with its range. Everything listens on
# 127.0.0.1.
#
# Idempotent: installs nginx (apt) and oha (cargo) when missing. Not part of the test suite.
# Usage: benches/gateway-load.sh [seconds per run, default 10] [connections, default 64]
# Knobs: ROUNDS; RATE (the fixed rate); PORTCULLIS_BIN, BENCH_POLICY (gateway-setup.sh);
# PERF_RECORD, PERF_ARGS (profile the gateway's first peak run).
set -euo pipefail
. "$(dirname "$0")/../deploy/local/lib.sh"
cd "$ROOT"

DURATION=${1:-10}
CONNS=${2:-64}
SESSIONS=1000
UP_PORT=18911 PROXY_PORT=18912 GW_PORT=18913 PY_PORT=18914 FLOOR_PORT=18915
# A Redis and a Postgres of the benchmark's own, and a control plane ingesting the audit into
# that Postgres: the whole system, as `deploy/local/run` starts it, with the CPU of each part
# told apart from whatever else the machine runs.
BENCH_PRIVATE=1 REDIS_PORT=18916 PG_PORT=18917 CP_PORT=18918

. "$ROOT/benches/gateway-setup.sh"

log "building and starting the floor proxy (:$FLOOR_PORT)"
cargo build --release --locked -p portcullis-gateway --example floor_proxy >/dev/null
"$CARGO_TARGET_DIR/release/examples/floor_proxy" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT" \
  >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_port "$FLOOR_PORT" "the floor proxy"
TARGETS="direct portcullis floor nginx"

declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/mcp"
  [portcullis]="http://127.0.0.1:$GW_PORT/g/$TOKEN/mcp"
  [nginx]="http://127.0.0.1:$PROXY_PORT/mcp"
  [floor]="http://127.0.0.1:$FLOOR_PORT/mcp"
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
# Postgres's CPU so far (ms): the postmaster's own and its reaped children's, and its live
# children's (a backend that exits moves its time from the second to the first).
pg_ms() {
  local master ticks children
  master=$(head -1 "$PG_DATA/postmaster.pid")
  ticks=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$master/stat")
  children=$(pgrep -P "$master" | xargs -r -I{} cat /proc/{}/stat 2>/dev/null | awk '{ s += $14 + $15 } END { print s + 0 }')
  echo $(((ticks + children) * 1000 / $(getconf CLK_TCK)))
}
# Waits until the control plane has ingested every audit entry (it deletes what it stored).
drained() {
  for _ in $(seq 1 1200); do
    [ "$(redis-cli -p "$REDIS_PORT" XLEN "$PREFIX:audit")" = 0 ] && return 0
    sleep 0.05
  done
  log "warning: the audit stream did not drain in 60 s"
}
UPSTREAM=$(pgrep -P "$(cat "$WORK/upstream.pid")")
PROXY=$(pgrep -P "$(cat "$WORK/proxy.pid")" | tr '\n' ' ')
# CPU used (ms) and requests served, summed over a target's peak runs: C[$t,$what].
declare -A RPS P50 P99 H99 C
# µs per request of what $2 used over target $1's peak runs.
per_request() {
  awk -v ms="${C[$1,$2]:-0}" -v n="${C[$1,requests]}" 'BEGIN { printf "%.1f", ms * 1000 / n }'
}
# Adds to C[$1,$2] the difference of two readings, $3 before and $4 after.
count() { C[$1,$2]=$(( ${C[$1,$2]:-0} + $4 - $3 )); }
# The median, the smallest and the largest of the numbers given: "median min max".
spread() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%s %s %s\n", m, v[1], v[NR] }'
}
# The targets take turns, ROUNDS times, so a slow spell of this shared machine falls on
# all of them alike; figures are the median of the rounds, with their range.
ROUNDS=${ROUNDS:-3}
log "peak: $ROUNDS rounds of $DURATION s each, $CONNS connections"
for t in $TARGETS; do
  oha --no-tui -z 2s -c "$CONNS" -m POST -H 'content-type: application/json' \
    -D "$WORK/body.json" "${URL[$t]}" >/dev/null  # warm-up
done
for r in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do
    # PERF_RECORD=file: profile the gateway during its first peak run (perf record -g).
    if [ "$t$r" = portcullis1 ] && [ -n "${PERF_RECORD:-}" ]; then
      perf record ${PERF_ARGS:--F 999 -g} -p "$GW_PID" -o "$PERF_RECORD" -- sleep $((DURATION / 2)) >/dev/null 2>&1 &
    fi
    # shellcheck disable=SC2086 # PROXY and REDIS_PID are lists of pids
    gw0=$(cpu_ms "$GW_PID") px0=$(cpu_ms $PROXY) up0=$(cpu_ms "$UPSTREAM") rd0=$(cpu_ms $REDIS_PID)
    fl0=$(cpu_ms "$FLOOR_PID") fk0=$(kernel_ms "$FLOOR_PID")
    gk0=$(kernel_ms "$GW_PID") pk0=$(kernel_ms $PROXY) id0=$(idle_ms)
    cp0=$(cpu_ms "$CP_PID") pg0=$(pg_ms)
    read -r rps p50 p99 ok rate < <(load "$t" "")
    RPS[$t,$r]=$rps P50[$t,$r]=$p50 P99[$t,$r]=$p99
    # The run's audit is the run's cost, however long ingesting it takes.
    if [ "$t" = portcullis ]; then drained; fi
    count "$t" control_plane "$cp0" "$(cpu_ms "$CP_PID")"
    count "$t" postgres "$pg0" "$(pg_ms)"
    # shellcheck disable=SC2086
    count "$t" gateway "$gw0" "$(cpu_ms "$GW_PID")"
    count "$t" proxy "$px0" "$(cpu_ms $PROXY)"
    count "$t" upstream "$up0" "$(cpu_ms "$UPSTREAM")"
    count "$t" redis "$rd0" "$(cpu_ms $REDIS_PID)"
    count "$t" gateway_kernel "$gk0" "$(kernel_ms "$GW_PID")"
    count "$t" proxy_kernel "$pk0" "$(kernel_ms $PROXY)"
    count "$t" floor "$fl0" "$(cpu_ms "$FLOOR_PID")"
    count "$t" floor_kernel "$fk0" "$(kernel_ms "$FLOOR_PID")"
    count "$t" idle "$id0" "$(idle_ms)"
    count "$t" requests 0 "$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { printf "%d", r * d }')"
    [ "$rate" = "1" ] || log "warning: $t success rate $rate"
  done
done
# Work per Redis round trip so far (the peak runs and their warm-ups): requests' charges and
# audit entries that shared one script call.
BATCH=$(curl -s "http://127.0.0.1:$GW_PORT/metrics" | awk '
  /^portcullis_gateway_redis_batch_size_sum/ { s = $2 } /^portcullis_gateway_redis_batch_size_count/ { c = $2 }
  END { if (c > 0) printf "%.0f round trips, %.1f operations each", c, s / c; else print "unknown" }')
# figure $1 over the rounds: "median min max" of the named array's values for target $2.
over_rounds() {
  local -n values=$1
  local r list=()
  for r in $(seq 1 "$ROUNDS"); do list+=("${values[$2,$r]}"); done
  spread "${list[@]}"
}
# RATE=n: measure the fixed-rate latency at n requests/s instead (to compare two builds at one rate).
read -r PEAK _ < <(over_rounds RPS portcullis)
HALF=${RATE:-$(awk -v r="$PEAK" 'BEGIN { printf "%d", r / 2 }')}
log "fixed rate (default: half of Portcullis's median peak): $HALF requests/s, $ROUNDS rounds"
WAITS="overhead limiter redis_batch upstream_head"
# The gateway's wait histograms from one read of its /metrics: a "name sum count" line each.
waits() {
  curl -s "http://127.0.0.1:$GW_PORT/metrics" | awk -v names="$WAITS" '
    BEGIN { n = split(names, w, " "); for (i = 1; i <= n; i++) want["portcullis_gateway_" w[i] "_seconds"] = w[i] }
    { name = $1; sub(/_(sum|count)$/, "", name) }
    (name in want) && $1 ~ /_sum$/ { s[want[name]] = $2 }
    (name in want) && $1 ~ /_count$/ { c[want[name]] = $2 }
    END { for (i = 1; i <= n; i++) print w[i], s[w[i]] + 0, c[w[i]] + 0 }'
}
declare -A RATIO ADDED
SNAPSHOTS=()
for r in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do
    if [ "$t" = portcullis ]; then waits >"$WORK/waits.$r.before"; fi
    read -r _ _ p99 _ _ < <(load "$t" "-q $HALF")
    H99[$t,$r]=$p99
    if [ "$t" = portcullis ]; then
      waits >"$WORK/waits.$r.after"
      SNAPSHOTS+=("$WORK/waits.$r.before" "$WORK/waits.$r.after")
      drained
    fi
  done
  for t in portcullis floor; do
    RATIO[$t,$r]=$(awk -v p="${RPS[$t,$r]}" -v n="${RPS[nginx,$r]}" 'BEGIN { print p / n }')
  done
  for t in portcullis floor nginx; do
    ADDED[$t,$r]=$(awk -v a="${H99[$t,$r]}" -v d="${H99[direct,$r]}" 'BEGIN { print a - d }')
  done
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

printf '\nmedian of %s rounds (range)\n' "$ROUNDS"
printf '%-11s %22s %9s %9s %22s\n' target "requests/s" "p50 ms" "p99 ms" "p99 ms @ $HALF/s"
for t in $TARGETS; do
  read -r rps lo hi < <(over_rounds RPS "$t")
  read -r p50 _ < <(over_rounds P50 "$t")
  read -r p99 _ < <(over_rounds P99 "$t")
  read -r h99 hlo hhi < <(over_rounds H99 "$t")
  printf '%-11s %6.0f (%6.0f-%6.0f) %9.3f %9.3f %8.3f (%.2f-%.2f)\n' \
    "$t" "$rps" "$lo" "$hi" "$p50" "$p99" "$h99" "$hlo" "$hhi"
done
# shellcheck disable=SC2086
printf '\nCPU per request (us): the upstream %s; nginx as proxy %s, %s of it in the kernel (%s workers);\n' \
  "$(per_request direct upstream)" "$(per_request nginx proxy)" "$(per_request nginx proxy_kernel)" \
  "$(echo $PROXY | wc -w)"
printf '  the floor proxy %s, %s of it in the kernel\n' \
  "$(per_request floor floor)" "$(per_request floor floor_kernel)"
GW=$(per_request portcullis gateway) RD=$(per_request portcullis redis)
printf '  portcullis %s in the gateway, %s of it in the kernel, + %s in Redis = %s (Redis: %s)\n' \
  "$GW" "$(per_request portcullis gateway_kernel)" "$RD" \
  "$(awk -v a="$GW" -v b="$RD" 'BEGIN { printf "%.1f", a + b }')" "$BATCH"
CP=$(per_request portcullis control_plane) PG=$(per_request portcullis postgres)
awk -v g="$GW" -v r="$RD" -v c="$CP" -v p="$PG" -v f="$(per_request floor floor)" 'BEGIN {
  printf "  portcullis (gateway + Redis) / the floor proxy: %.2fx (target: at most 1.8x)\n", (g + r) / f
  printf "  the whole system per enforced call: gateway %s + Redis %s + control plane ingesting %s + Postgres %s = %.1f us (target: at most 90)\n", g, r, c, p, g + r + c + p
  printf "  ingestion: %.0f events/s per core of the control plane, %.0f per core of Postgres, %.0f per core of both\n", 1e6 / c, 1e6 / p, 1e6 / (c + p)
}'
# Rows written and rewritten: an event whose decision and outcome were stored apart is an
# insert and an update.
psql -At "$DB_URL" -c "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0)
                       FROM pg_stat_user_tables WHERE relname LIKE 'audit_events%'" | tr '|' ' ' | {
  read -r ins upd
  printf '  audit rows: %s inserted, %s updated afterwards (%.1f%%)\n' "$ins" "$upd" \
    "$(awk -v i="$ins" -v u="$upd" 'BEGIN { print (i > 0 ? u * 100 / i : 0) }')"
}
# A request's share of the machine at a given rate is cores / rate. At 0.8x nginx's rate, the
# gateway and Redis could use at most that share minus what everything else (the load
# generator, the upstream) used per request in the Portcullis runs (their share minus the
# gateway, Redis and the machine's idle time).
read -r NGINX _ < <(over_rounds RPS nginx)
awk -v c="$(getconf _NPROCESSORS_ONLN)" -v p="$PEAK" -v n="$NGINX" -v g="$GW" -v r="$RD" \
    -v i="$(per_request portcullis idle)" 'BEGIN {
  printf "  at 0.8x nginx'"'"'s throughput the gateway and Redis could use %.1f us per request\n",
    c * 1e6 / (0.8 * n) - (c * 1e6 / p - g - r - i)
}'
read -r ratio rlo rhi < <(over_rounds RATIO portcullis)
read -r padd palo pahi < <(over_rounds ADDED portcullis)
read -r nadd nalo nahi < <(over_rounds ADDED nginx)
read -r fratio flo fhi < <(over_rounds RATIO floor)
read -r fadd falo fahi < <(over_rounds ADDED floor)
printf '\nthroughput portcullis/nginx: %.2f (%.2f-%.2f, each round against its own nginx run)\n' \
  "$ratio" "$rlo" "$rhi"
printf 'throughput floor/nginx: %.2f (%.2f-%.2f); portcullis/floor: %.2f\n' \
  "$fratio" "$flo" "$fhi" "$(awk -v p="$ratio" -v f="$fratio" 'BEGIN { print p / f }')"
printf 'p99 added at %s/s: portcullis %.3f ms (%.2f-%.2f)   nginx %.3f ms (%.2f-%.2f)\n' \
  "$HALF" "$padd" "$palo" "$pahi" "$nadd" "$nalo" "$nahi"
printf 'p99 added at %s/s: floor %.3f ms (%.2f-%.2f)\n' "$HALF" "$fadd" "$falo" "$fahi"
printf 'inside the gateway at %s/s, mean ms:' "$HALF"
# Each run's after minus its before, added up over the rounds.
awk 'FNR == 1 { f++ } { k = f % 2 ? -1 : 1; s[$1] += k * $2; c[$1] += k * $3; if (f == 1) order[FNR] = $1 }
  END { for (i = 1; i in order; i++) { w = order[i]; printf " %s %.3f", w, (c[w] > 0 ? s[w] * 1000 / c[w] : 0) } }' \
  "${SNAPSHOTS[@]}"
printf ' (overhead: before forwarding; limiter: a charge, asked to answered; redis_batch: a round trip; upstream_head: waiting for the answer head)\n'
printf 'gateway RSS: %d MB idle after load, %d MB with %s open sessions\n' \
  $((RSS_BEFORE / 1024)) $((RSS_SESSIONS / 1024)) "$SESSIONS"
