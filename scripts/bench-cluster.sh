#!/usr/bin/env bash
# The cluster benchmark: the local three-node cluster (scripts/cluster.sh) under more
# connections than one process may hold, with direct and group traffic checked meanwhile.
#
#   scripts/bench-cluster.sh [OUT_DIR]
#
# Two natter-bench processes open IDLE connections each (spread over the three nodes) and
# hold them; once all are open, a third runs `direct` and a fourth `group`, each checking
# its own traffic (no loss, duplicate or reorder; exit 1 otherwise), with their connections
# spread over the nodes too, so most messages cross nodes. The bench talks to the nodes
# directly: HAProxy would hold two sockets per connection, more than its process may have.
# Every process writes its JSON report to OUT_DIR (default ./bench-cluster-out).
#
# Sizes and rates come from the environment: IDLE (per idle process, default 9800), PAIRS
# (500), DIRECT_RATE (5000 msg/s), N_GROUPS (2), GROUP_SIZE (100), GROUP_SENDERS (10),
# GROUP_RATE (1000 msg/s), SECS (20), HOLD (seconds the idle ones stay open; 2 × SECS + 90)
# and NATTER_CLUSTER_PORT (18080: the nodes take the
# next three ports). The cluster is stopped and its data removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-bench-cluster-out}"
IDLE="${IDLE:-9800}"
PAIRS="${PAIRS:-500}"
DIRECT_RATE="${DIRECT_RATE:-5000}"
N_GROUPS="${N_GROUPS:-2}"
GROUP_SIZE="${GROUP_SIZE:-100}"
GROUP_SENDERS="${GROUP_SENDERS:-10}"
GROUP_RATE="${GROUP_RATE:-1000}"
SECS="${SECS:-20}"
export NATTER_CLUSTER_PORT="${NATTER_CLUSTER_PORT:-18080}"
export NATTER_METRICS_TOKEN="${NATTER_METRICS_TOKEN:-natter-local-metrics-token}"
HOLD="${HOLD:-$((SECS * 2 + 90))}"

mkdir -p "$OUT"
cargo build --release -p natter-bench -p natter-server
BENCH="$PWD/target/release/natter-bench"
SERVERS=()
for i in 1 2 3; do
    SERVERS+=(--server "http://127.0.0.1:$((NATTER_CLUSTER_PORT + i))")
done

bash scripts/cluster.sh start
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null || true
    bash scripts/cluster.sh clean >/dev/null || true
}
trap cleanup EXIT

# The sum of natter_connections over the three nodes.
connections() {
    local total=0 n i
    for i in 1 2 3; do
        n="$(curl -fsS -H "Authorization: Bearer $NATTER_METRICS_TOKEN" \
            "http://127.0.0.1:$((NATTER_CLUSTER_PORT + i))/metrics" |
            awk '$1 == "natter_connections" { print int($2) }')"
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

echo "== ${IDLE} idle connections from each of two processes, held ${HOLD} s"
pids=()
for k in 1 2; do
    "$BENCH" "${SERVERS[@]}" --json --run-id "idle$k" --setup-concurrency 2 \
        connections --n "$IDLE" --hold-secs "$HOLD" --conns-per-user 500 \
        >"$OUT/idle$k.json" 2>"$OUT/idle$k.log" &
    pids+=($!)
done
deadline=$((SECONDS + 300))
until (($(connections) >= 2 * IDLE)); do
    ((SECONDS < deadline)) || { echo "idle connections did not all open" >&2; exit 1; }
    sleep 1
done
echo "== $(connections) connections open; direct and group traffic now"

status=0
"$BENCH" "${SERVERS[@]}" --json --run-id direct \
    direct --pairs "$PAIRS" --rate "$DIRECT_RATE" --secs "$SECS" --drain-secs 30 \
    >"$OUT/direct.json" 2>"$OUT/direct.log" &
direct=$!
"$BENCH" "${SERVERS[@]}" --json --run-id group \
    group --groups "$N_GROUPS" --size "$GROUP_SIZE" --senders "$GROUP_SENDERS" \
    --rate "$GROUP_RATE" --secs "$SECS" \
    >"$OUT/group.json" 2>"$OUT/group.log" &
group=$!
peak=0
while kill -0 "$direct" 2>/dev/null || kill -0 "$group" 2>/dev/null; do
    now="$(connections)"
    ((now > peak)) && peak=$now
    sleep 2
done
wait "$direct" || status=1
wait "$group" || status=1
echo "== peak connections across the nodes: $peak" | tee "$OUT/peak.txt"
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
for f in idle1 idle2 direct group; do
    echo "---- $f"
    cat "$OUT/$f.log"
done
exit "$status"
