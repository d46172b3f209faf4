#!/usr/bin/env bash
# What permessage-deflate costs: the same direct-message run with and without compression,
# alternating (plain, deflate, plain, …), each on a fresh node; the server's CPU time
# (utime + stime from /proc) while the bench sends, divided by the messages delivered.
# natter-bench's own loss, duplicate and order checks must pass in every run.
#
#   scripts/bench-deflate.sh [BIN_DIR]     (default target/release: natter, natter-bench)
#
# PAIRS (200), RATE (5000 msg/s), SECS (20), ROUNDS (3), PORT (18295), BODY (64 bytes) from
# the environment.
set -euo pipefail
BIN="${1:-target/release}"
PAIRS="${PAIRS:-200}"; RATE="${RATE:-5000}"; SECS="${SECS:-20}"; ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-18295}"; BODY="${BODY:-64}"
URL="http://127.0.0.1:$PORT"
TICK="$(getconf CLK_TCK)"
ulimit -n 20000

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() { # mode(plain|deflate)
    local mode="$1" data out pid flags=()
    data="$(mktemp -d /tmp/natter-deflate.XXXXXX)"
    out="$(mktemp)"
    [[ "$mode" == deflate ]] && flags+=(--deflate)
    "$BIN/natter" serve --data-dir "$data" --listen "127.0.0.1:$PORT" --send-per-sec 0 \
        --frames-per-sec 0 --max-connections-per-ip 0 >"$data.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fsS "$URL/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    # The server's CPU from the moment the bench starts sending (its "sending" line: after
    # registration, whose password hashing would swamp the figure) to the end of the run.
    "$BIN/natter-bench" --server "$URL" --json --body-bytes "$BODY" "${flags[@]}" direct \
        --pairs "$PAIRS" --rate "$RATE" --secs "$SECS" 2> >(while IFS= read -r line; do
            [[ "$line" == *"] sending "* ]] && cpu_ticks "$pid" >"$out.t0"
        done) >"$out"
    local t1
    t1="$(cpu_ticks "$pid")"
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -s "$out.t0" ]] && break; sleep 0.1; done
    python3 - "$mode" "$out" "$((t1 - $(cat "$out.t0")))" "$TICK" <<'PY'
import json, sys
mode, path, ticks, tick = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path))
delivered = r["round"]["counts"]["delivered"]
cpu_us = ticks / tick * 1e6 / max(delivered, 1)
print(f"{mode:8} delivered {delivered:>8}  server CPU {ticks / tick:6.2f} s = {cpu_us:5.1f} us/msg  "
      f"p99 {r['round']['deliver_latency']['p99_ms']:.1f} ms  checks {'ok' if r['ok'] else 'FAILED'}")
PY
    rm -rf "$data" "$data.log" "$out" "$out.t0"
}

for _ in $(seq "$ROUNDS"); do
    run_one plain
    run_one deflate
done
