#!/usr/bin/env bash
# Before/after benchmark of two builds in one sitting: the same scenarios against each
# build's release binaries, alternating (A B A B A B), each run on a fresh node and data dir,
# each build's own natter-bench driving it. Prints every run and the medians.
#
#   scripts/bench-ab.sh A_DIR B_DIR [OUT_DIR]
#
# A_DIR and B_DIR hold `natter` and `natter-bench` (e.g. copies of target/release of two
# commits). Scenarios: direct (PAIRS pairs at DIRECT_RATE msg/s), group (1 group of 100,
# 10 senders at GROUP_RATE msg/s), connections (CONNS idle connections). Rate limits are
# turned off (`--send-per-sec 0 --frames-per-sec 0`) where the build knows them. ROUNDS (3),
# SECS (10), PORT (18290) from the environment.
set -euo pipefail
A="$1"; B="$2"; OUT="${3:-bench-ab-out}"
PAIRS="${PAIRS:-500}"; DIRECT_RATE="${DIRECT_RATE:-20000}"; GROUP_RATE="${GROUP_RATE:-3030}"
CONNS="${CONNS:-15000}"; ROUNDS="${ROUNDS:-3}"; SECS="${SECS:-10}"; PORT="${PORT:-18290}"
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
ulimit -n 20000

run_one() { # build-dir label scenario args...
    local dir="$1" label="$2" scenario="$3"; shift 3
    local data flags=()
    data="$(mktemp -d /tmp/natter-ab.XXXXXX)"
    local help
    help="$("$dir/natter" serve --help)"
    # Whatever the build knows of: rate limits off, the caps meant for the open Internet
    # lifted (every bench connection comes from 127.0.0.1), metrics behind a token.
    if grep -q -- '--send-per-sec' <<<"$help"; then
        flags+=(--send-per-sec 0 --frames-per-sec 0)
    fi
    if grep -q -- '--max-connections-per-ip' <<<"$help"; then
        flags+=(--max-connections-per-ip 0 --max-sessions-per-user 1000)
    fi
    if grep -q -- '--metrics-token' <<<"$help"; then
        flags+=(--metrics-token bench-ab-metrics-token)
    fi
    "$dir/natter" serve --data-dir "$data" --listen "127.0.0.1:$PORT" "${flags[@]}" \
        >"$OUT/$label-$scenario.server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -fsS "$URL/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    NATTER_METRICS_TOKEN=bench-ab-metrics-token "$dir/natter-bench" --server "$URL" --json "$scenario" "$@" \
        >"$OUT/$label-$scenario.json" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}

for round in $(seq "$ROUNDS"); do
    for side in A B; do
        dir="$A"; [[ "$side" == B ]] && dir="$B"
        label="$side$round"
        echo "== $label direct"
        run_one "$dir" "$label" direct --pairs "$PAIRS" --rate "$DIRECT_RATE" --secs "$SECS" --drain-secs 30
        echo "== $label group"
        run_one "$dir" "$label" group --groups 1 --size 100 --senders 10 --rate "$GROUP_RATE" --secs "$SECS"
        echo "== $label connections"
        run_one "$dir" "$label" connections --n "$CONNS" --hold-secs 10 --conns-per-user 100
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(label, scenario):
    try:
        return json.load(open(f"{out}/{label}-{scenario}.json"))
    except Exception:
        return None
def direct(r): return (r["round"]["delivered_rate"], r["round"]["deliver_latency"]["p99_ms"], r["ok"])
def group(r): return (r["round"]["delivered_rate"], r["round"]["deliver_latency"]["p99_ms"], r["ok"])
def conns(r):
    return (r["rss_per_connection_bytes"] / 1024, r["connect_rate"], r["ok"])
for scenario, f, names in [("direct", direct, ("msg/s", "p99 ms")), ("group", group, ("deliveries/s", "p99 ms")), ("connections", conns, ("KiB/conn", "conn/s"))]:
    for side in "AB":
        rows = [f(r) for r in (load(f"{side}{i}", scenario) for i in range(1, rounds + 1)) if r]
        if not rows:
            print(f"{scenario:12} {side}: no result"); continue
        a = [x[0] for x in rows]; b = [x[1] for x in rows]
        print(f"{scenario:12} {side}: {names[0]} {[round(x, 1) for x in a]} median {statistics.median(a):.1f}; "
              f"{names[1]} {[round(x, 2) for x in b]} median {statistics.median(b):.2f}; checks {'ok' if all(x[2] for x in rows) else 'FAILED'}")
PY
