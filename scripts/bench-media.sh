#!/usr/bin/env bash
# The media benchmark: upload and download throughput on the local blob store beside plain
# file copies on the same disk, and what uploads do to message latency.
#
#   scripts/bench-media.sh [OUT_DIR]
#
# One release node on a fresh data dir (upload rate limit and quota off). In order:
#   copy      `cp` of one TOTAL-MiB file within /tmp, then `cat` of it to /dev/null: the
#             disk's write and read speed as a plain copy sees them (page cache included,
#             as for the server);
#   media     `natter-bench media`: UPLOADERS users upload FILES files of SIZE_MIB MiB at
#             once, then download them all;
#   quiet     `natter-bench direct` alone (PAIRS pairs at RATE msg/s): send→deliver latency;
#   busy      the same `direct` run while `natter-bench media` runs over and over beside it.
# Each report goes to OUT_DIR as JSON; the script prints the figures. Sizes from the
# environment: UPLOADERS (8), FILES (4), SIZE_MIB (32), PAIRS (50), RATE (1000), SECS (10),
# PORT (18290), and NATTER / NATTER_BENCH (binaries; default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_METRICS_TOKEN=bench-media-metrics-token

OUT="${1:-bench-media-out}"
UPLOADERS="${UPLOADERS:-8}"
FILES="${FILES:-4}"
SIZE_MIB="${SIZE_MIB:-32}"
PAIRS="${PAIRS:-50}"
RATE="${RATE:-1000}"
SECS="${SECS:-10}"
PORT="${PORT:-18290}"
NATTER="${NATTER:-$PWD/target/release/natter}"
BENCH="${NATTER_BENCH:-$PWD/target/release/natter-bench}"
URL="http://127.0.0.1:$PORT"
TOTAL_MIB=$((UPLOADERS * FILES * SIZE_MIB))
mkdir -p "$OUT"
if [[ ! -x "$NATTER" || ! -x "$BENCH" ]]; then
    cargo build --release -p natter-server -p natter-bench
fi

DATA="$(mktemp -d /tmp/natter-media-bench.XXXXXX)"
SERVER_PID=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

# ---- plain copy ----
head -c "$((TOTAL_MIB << 20))" /dev/urandom >"$DATA/src"
sync
t0=$(date +%s.%N); cp "$DATA/src" "$DATA/dst"; t1=$(date +%s.%N)
cat "$DATA/dst" >/dev/null; t2=$(date +%s.%N)
COPY_W=$(python3 -c "print(round($TOTAL_MIB / ($t1 - $t0)))")
COPY_R=$(python3 -c "print(round($TOTAL_MIB / ($t2 - $t1)))")
rm -f "$DATA/src" "$DATA/dst"
echo "{\"cp_mib_per_s\": $COPY_W, \"cat_mib_per_s\": $COPY_R, \"mib\": $TOTAL_MIB}" >"$OUT/copy.json"

# ---- the node ----
"$NATTER" serve --data-dir "$DATA/node" --listen "127.0.0.1:$PORT" \
    --metrics-token "$NATTER_METRICS_TOKEN" --media-uploads-per-min 0 \
    --media-quota-bytes 1099511627776 >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

media() {
    "$BENCH" --server "$URL" --json media --uploaders "$UPLOADERS" --files "$FILES" \
        --size-mib "$SIZE_MIB"
}
direct() {
    "$BENCH" --server "$URL" --json direct --pairs "$PAIRS" --rate "$RATE" --secs "$SECS"
}

media >"$OUT/media.json"
direct >"$OUT/quiet.json"
# Uploads over and over while the direct run measures.
(
    i=0
    while [[ ! -e "$OUT/.direct-done" ]]; do
        media >"$OUT/media-beside-$i.json" 2>/dev/null || true
        i=$((i + 1))
    done
) &
LOOP=$!
rm -f "$OUT/.direct-done"
direct >"$OUT/busy.json"
touch "$OUT/.direct-done"
wait "$LOOP" || true
rm -f "$OUT/.direct-done"

python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
copy = json.load(open(os.path.join(out, "copy.json")))
media = json.load(open(os.path.join(out, "media.json")))
def lat(name):
    d = json.load(open(os.path.join(out, name)))
    l = d["round"]["deliver_latency"]
    return l["p50_ms"], l["p99_ms"], d.get("ok")
q, b = lat("quiet.json"), lat("busy.json")
beside = [json.load(open(p)) for p in glob.glob(os.path.join(out, "media-beside-*.json")) if os.path.getsize(p)]
print(f"plain copy of {copy['mib']} MiB: cp {copy['cp_mib_per_s']} MiB/s, cat {copy['cat_mib_per_s']} MiB/s")
print(f"natter upload {media['upload_mib_per_s']:.0f} MiB/s, download {media['download_mib_per_s']:.0f} MiB/s")
print(f"send->deliver p50/p99 alone {q[0]:.2f}/{q[1]:.2f} ms, beside uploads {b[0]:.2f}/{b[1]:.2f} ms (ok: {q[2]}, {b[2]})")
if beside:
    print("uploads beside the direct run: " + ", ".join(f"{m['upload_mib_per_s']:.0f}" for m in beside) + " MiB/s")
PY
