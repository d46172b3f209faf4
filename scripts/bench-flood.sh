#!/usr/bin/env bash
# The flood benchmark: what one flooding user does to everybody else's delivery latency.
#
#   scripts/bench-flood.sh [OUT_DIR]
#
# One release node on a fresh data dir; a quiet `direct` run (QUIET_PAIRS pairs at
# QUIET_RATE msg/s in total, well under the per-user limit) measures send→deliver latency
# three ways, each in its own bench process beside the same server:
#   quiet      nothing else runs;
#   limited    a second bench process floods from one pair at FLOOD_RATE msg/s, with the
#              server's default rate limits (the flooder gets `too_many_requests`);
#   unlimited  the same flood, against a node started with `--send-per-sec 0
#              --frames-per-sec 0` (what the node did before it had rate limits).
# Each report goes to OUT_DIR as JSON; the script prints the quiet run's p50/p99 of each.
# Sizes from the environment: QUIET_PAIRS (50), QUIET_RATE (1000), FLOOD_RATE (50000),
# SECS (10), PORT (18190), and NATTER / NATTER_BENCH (binaries; default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_METRICS_TOKEN=bench-flood-metrics-token

OUT="${1:-bench-flood-out}"
QUIET_PAIRS="${QUIET_PAIRS:-50}"
QUIET_RATE="${QUIET_RATE:-1000}"
FLOOD_RATE="${FLOOD_RATE:-50000}"
SECS="${SECS:-10}"
PORT="${PORT:-18190}"
NATTER="${NATTER:-$PWD/target/release/natter}"
BENCH="${NATTER_BENCH:-$PWD/target/release/natter-bench}"
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
if [[ ! -x "$NATTER" || ! -x "$BENCH" ]]; then
    cargo build --release -p natter-server -p natter-bench
fi

SERVER_PID=""
DATA=""
start_server() {
    DATA="$(mktemp -d /tmp/natter-flood.XXXXXX)"
    # Metrics behind a token, as in production; both bench processes come from 127.0.0.1.
    "$NATTER" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --metrics-token "$NATTER_METRICS_TOKEN" \
        "$@" >"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -fsS "$URL/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "the server did not start" >&2
    exit 1
}
stop_server() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    [[ -n "$DATA" ]] && rm -rf "$DATA"
    SERVER_PID=""
}
trap stop_server EXIT

quiet() {
    "$BENCH" --server "$URL" --json direct --pairs "$QUIET_PAIRS" --rate "$QUIET_RATE" \
        --secs "$SECS" >"$OUT/$1.json"
}
flood() {
    # The flooder's refusals are expected: its own report's exit code is not the point.
    "$BENCH" --server "$URL" --json --max-in-flight 1024 direct --pairs 1 \
        --rate "$FLOOD_RATE" --secs "$((SECS + 4))" >"$OUT/$1-flooder.json" || true
}
# The quiet run starts once the flooder is sending (its setup is a few logins).
with_flood() {
    flood "$1" &
    local flooder=$!
    sleep 2
    quiet "$1"
    wait "$flooder"
}

summary() {
    python3 - "$OUT/$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["round"]["deliver_latency"]
print(f'{sys.argv[2]:>10}: delivered {r["round"]["delivered_rate"]:.0f} msg/s, '
      f'p50 {d["p50_ms"]:.2f} ms, p99 {d["p99_ms"]:.2f} ms, checks {"ok" if r["ok"] else "FAILED"}')
PY
}

start_server
quiet quiet
with_flood limited
stop_server
start_server --send-per-sec 0 --frames-per-sec 0
with_flood unlimited
stop_server
for run in quiet limited unlimited; do
    summary "$run"
done
python3 - "$OUT" <<'PY'
import json, sys
f = json.load(open(f"{sys.argv[1]}/limited-flooder.json"))
errors = f.get("errors", {})
print(f"   flooder (limited): acked {f['round']['counts']['acked']} of {f['round']['counts']['sent']} sent, refusals {errors}")
PY
