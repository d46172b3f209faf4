#!/usr/bin/env bash
# The push benchmark (issue 14): pushes per second the dispatcher sustains against a local
# gateway, commit→push latency, and message delivery latency in the same run.
#
#   scripts/bench-push.sh [OUT_DIR]
#
# One release node on a fresh data dir, started with a config file whose `[push]` points
# the `webhook` provider at the gateway `natter-bench push` plays (GATEWAY); then, for each
# rate in RATES, RUNS runs of `natter-bench push` one after the other (each registers its
# own users). Each report goes to OUT_DIR as JSON; the script prints one line per run and
# the medians per rate. The node is stopped at the end.
# Settings from the environment: WINDOW_MS (push.window_ms, 1), PER_USER_PER_MIN
# (push.per_user_per_min, 0 = no cap; unset it with PER_USER_PER_MIN=default to keep the
# server's 30), N_GROUPS (200), OFFLINE (1), RATES ("200 1000 2000"), SECS (10), RUNS (3),
# DELAY_MS (the gateway's answer delay, 0), PORT (18290), GATEWAY (127.0.0.1:18299), and
# NATTER / NATTER_BENCH (binaries; default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_METRICS_TOKEN=bench-push-metrics-token
# Every bench connection comes from 127.0.0.1 (docs/benchmarks.md).
export NATTER_MAX_CONNECTIONS_PER_IP=0 NATTER_MAX_SESSIONS_PER_USER=1000

OUT="${1:-bench-push-out}"
WINDOW_MS="${WINDOW_MS:-1}"
PER_USER_PER_MIN="${PER_USER_PER_MIN:-0}"
N_GROUPS="${N_GROUPS:-200}"
OFFLINE="${OFFLINE:-1}"
RATES="${RATES:-200 1000 2000}"
SECS="${SECS:-10}"
RUNS="${RUNS:-3}"
DELAY_MS="${DELAY_MS:-0}"
PORT="${PORT:-18290}"
GATEWAY="${GATEWAY:-127.0.0.1:18299}"
NATTER="${NATTER:-$PWD/target/release/natter}"
BENCH="${NATTER_BENCH:-$PWD/target/release/natter-bench}"
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
if [[ ! -x "$NATTER" || ! -x "$BENCH" ]]; then
    cargo build --release -p natter-server -p natter-bench
fi
ulimit -n 20000

{
    echo "[push]"
    echo "webhook_url = \"http://$GATEWAY/push\""
    echo "window_ms = $WINDOW_MS"
    if [[ "$PER_USER_PER_MIN" != default ]]; then
        echo "per_user_per_min = $PER_USER_PER_MIN"
    fi
} >"$OUT/push.toml"

SERVER_PID=""
DATA="$(mktemp -d /tmp/natter-push.XXXXXX)"
stop_server() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    rm -rf "$DATA"
    SERVER_PID=""
}
trap stop_server EXIT
# The server's defaults but for the push settings above and the capacity runs' rate limits.
"$NATTER" serve --config "$OUT/push.toml" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
    --metrics-token "$NATTER_METRICS_TOKEN" --send-per-sec 0 --frames-per-sec 0 \
    >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$URL/readyz" >/dev/null || { echo "the server did not start" >&2; exit 1; }

# CPU once a second: the server's and the bench's user+system ticks and the machine's
# /proc/stat line (what else ran shows as machine time beyond the two).
sample_cpu() {
    local bench stat
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        stat="$(cut -d' ' -f14,15 "/proc/$SERVER_PID/stat" 2>/dev/null || echo "0 0")"
        bench="$(cat "$OUT/bench.pid" 2>/dev/null || true)"
        bench="$( [[ -n "$bench" ]] && cut -d' ' -f14,15 "/proc/$bench/stat" 2>/dev/null || echo "0 0")"
        echo "$(date +%s%3N) $stat $bench $(head -1 /proc/stat | cut -d' ' -f2-)"
        sleep 1
    done
}
sample_cpu >"$OUT/cpu.txt" &
SAMPLER_PID=$!

for rate in $RATES; do
    for run in $(seq "$RUNS"); do
        { echo "## rate $rate run $run"; uptime; top -bn1 | sed -n 7,12p; } >>"$OUT/load.txt"
        echo "# rate $rate run $run: $(uptime)" >&2
        "$BENCH" --server "$URL" --json push --groups "$N_GROUPS" --offline "$OFFLINE" \
            --rate "$rate" --secs "$SECS" --window-ms "$WINDOW_MS" \
            --gateway-listen "$GATEWAY" --gateway-delay-ms "$DELAY_MS" \
            >"$OUT/rate$rate-run$run.json" 2>"$OUT/rate$rate-run$run.log" &
        echo $! >"$OUT/bench.pid"
        wait "$!" || true
        rm -f "$OUT/bench.pid"
    done
done
stop_server
kill "$SAMPLER_PID" 2>/dev/null || true

python3 - "$OUT" "$RATES" "$RUNS" <<'PY'
import json, statistics, sys
out, rates, runs = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
samples = []
for line in open(f"{out}/cpu.txt"):
    f = [int(x) for x in line.split()]
    # ms, server, bench, machine (user..steal), idle + iowait
    samples.append((f[0], f[1] + f[2], f[3] + f[4], sum(f[5:13]), f[8] + f[9]))
def cpu(r):
    """Median per-second CPU (% of one core) of server, bench and machine while sending."""
    start = r["send_start_unix_ms"] + 1000
    end = r["send_start_unix_ms"] + r["secs"] * 1000
    rows = [(b[1] - a[1], b[2] - a[2], (b[3] - a[3]) - (b[4] - a[4]), b[0] - a[0])
            for a, b in zip(samples, samples[1:]) if a[0] >= start and b[0] <= end]
    if not rows:
        return (float("nan"),) * 3
    # Ticks are 1/100 s: ticks per second = % of one core.
    return tuple(statistics.median(x[i] * 1000 / x[3] for x in rows) for i in range(3))
def row(r):
    p, d = r["push"], r["round"]["deliver_latency"]
    server, bench, machine = cpu(r)
    return {
        "pushes/s": p["steady_rate"],
        "commit->push p50": p["commit_to_push"]["p50_ms"],
        "p99": p["commit_to_push"]["p99_ms"],
        "oldest p50": p["oldest_to_push"]["p50_ms"],
        "oldest p99": p["oldest_to_push"]["p99_ms"],
        "deliver p50": d["p50_ms"],
        "deliver p99": d["p99_ms"],
        "msgs/push": p["messages_covered"] / max(p["notify"], 1),
        "cpu% server": server,
        "bench": bench,
        "machine": machine,
    }
for rate in rates:
    rows = []
    for run in range(1, runs + 1):
        try:
            r = json.load(open(f"{out}/rate{rate}-run{run}.json"))
        except (OSError, ValueError):
            print(f"rate {rate} run {run}: no report (see {out}/rate{rate}-run{run}.log)")
            continue
        x = row(r)
        rows.append(x)
        cells = ", ".join(f"{k} {v:.1f}" for k, v in x.items())
        print(f"rate {rate} run {run}: {cells}; checks {'ok' if r['ok'] else 'FAILED'}")
    if rows:
        med = ", ".join(f"{k} {statistics.median(x[k] for x in rows):.1f}" for k in rows[0])
        print(f"rate {rate} median of {len(rows)}: {med}")
PY
