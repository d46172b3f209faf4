#!/usr/bin/env bash
# The media benchmark: upload and download throughput on the local blob store beside plain
# file copies on the same disk, and what uploads do to message latency.
#
#   scripts/bench-media.sh [OUT_DIR]
#
# Release nodes on fresh data dirs (per-user upload rate limit and quota off). In order:
#   copy      `cp` of one TOTAL-MiB file within /tmp, then `cat` of it to /dev/null, then
#             `cp` again followed by `sync` of the copy: the disk's write and read speed
#             as a plain copy sees them (page cache included, as for the server), and
#             durable writes (the server syncs an upload before answering);
#   media     `natter-bench media`: UPLOADERS users upload FILES files of SIZE_MIB MiB at
#             once, then download them all, against a node without the ingest cap
#             (`--media-ingest-bytes-per-sec 0`): what the node can do;
#   quiet     on a new node with the default ingest cap: `natter-bench direct` alone (PAIRS
#             pairs at RATE msg/s), send→deliver latency;
#   busy      the same `direct` run while `natter-bench media --secs` uploads the same files
#             over and over beside it (each upload is hashed and staged whole).
# Each report goes to OUT_DIR as JSON; the script prints the figures. Sizes from the
# environment: UPLOADERS (8), FILES (4), SIZE_MIB (32), PAIRS (50), RATE (1000), SECS (10),
# PORT (18290), and NATTER / NATTER_BENCH (binaries; default target/release). DATA_ROOT
# (/tmp) holds the nodes' data directories; MEDIA_ROOT, when set, their `--media-dir`
# (uploads on another disk than the store); DEFAULT_ARGS, more flags for the latency node.
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

DATA="$(mktemp -d "${DATA_ROOT:-/tmp}/natter-media-bench.XXXXXX")"
MEDIA=()
if [[ -n "${MEDIA_ROOT:-}" ]]; then
    MEDIA_DIR="$(mktemp -d "$MEDIA_ROOT/natter-media-bench.XXXXXX")"
    MEDIA=(--media-dir "$MEDIA_DIR")
fi
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA" "${MEDIA_DIR:-}"
}
trap cleanup EXIT

# ---- plain copy ----
head -c "$((TOTAL_MIB << 20))" /dev/urandom >"$DATA/src"
sync
t0=$(date +%s.%N); cp "$DATA/src" "$DATA/dst"; t1=$(date +%s.%N)
cat "$DATA/dst" >/dev/null; t2=$(date +%s.%N)
# And with the copy made durable, as an upload is before its answer.
t3=$(date +%s.%N); cp "$DATA/src" "$DATA/dst2"; sync "$DATA/dst2"; t4=$(date +%s.%N)
COPY_W=$(python3 -c "print(round($TOTAL_MIB / ($t1 - $t0)))")
COPY_R=$(python3 -c "print(round($TOTAL_MIB / ($t2 - $t1)))")
COPY_S=$(python3 -c "print(round($TOTAL_MIB / ($t4 - $t3)))")
rm -f "$DATA/src" "$DATA/dst" "$DATA/dst2"
sync
echo "{\"cp_mib_per_s\": $COPY_W, \"cp_sync_mib_per_s\": $COPY_S, \"cat_mib_per_s\": $COPY_R, \"mib\": $TOTAL_MIB}" >"$OUT/copy.json"

# ---- the nodes ----
# One without the ingest cap for the throughput figures, then one with default settings
# (bar the per-user upload rate and quota) for the latency figures.
start_node() {
    "$NATTER" serve --data-dir "$DATA/node-$1" --listen "127.0.0.1:$PORT" \
        --metrics-token "$NATTER_METRICS_TOKEN" --media-uploads-per-min 0 \
        --media-quota-bytes 1099511627776 "${MEDIA[@]}" "${@:2}" >"$OUT/server-$1.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -fsS "$URL/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "the server did not start" >&2
    exit 1
}
stop_node() {
    kill "$SERVER_PID" && wait "$SERVER_PID" || true
    SERVER_PID=""
    rm -rf "$DATA"/node-*
    if [[ -n "${MEDIA_DIR:-}" ]]; then rm -rf "${MEDIA_DIR:?}"/*; fi
    sync
}

media() {
    "$BENCH" --server "$URL" --json media --uploaders "$UPLOADERS" --files "$FILES" \
        --size-mib "$SIZE_MIB" "$@"
}
direct() {
    "$BENCH" --server "$URL" --json direct --pairs "$PAIRS" --rate "$RATE" --secs "$SECS"
}

start_node uncapped --media-ingest-bytes-per-sec 0
media >"$OUT/media.json"
stop_node

start_node default ${DEFAULT_ARGS:-}
direct >"$OUT/quiet.json"
# Uploads all through the direct run (its setup included): the same files over and over.
media --secs "$((SECS + 15))" >"$OUT/beside.json" 2>"$OUT/beside.log" &
LOAD=$!
for _ in $(seq 300); do
    grep -q uploading "$OUT/beside.log" 2>/dev/null && break
    sleep 0.1
done
direct >"$OUT/busy.json"
wait "$LOAD"
stop_node

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
copy = json.load(open(os.path.join(out, "copy.json")))
media = json.load(open(os.path.join(out, "media.json")))
def lat(name):
    d = json.load(open(os.path.join(out, name)))
    l = d["round"]["deliver_latency"]
    return l["p50_ms"], l["p99_ms"], d.get("ok")
q, b = lat("quiet.json"), lat("busy.json")
beside = json.load(open(os.path.join(out, "beside.json")))
print(f"plain copy of {copy['mib']} MiB: cp {copy['cp_mib_per_s']} MiB/s, cp+sync {copy['cp_sync_mib_per_s']} MiB/s, cat {copy['cat_mib_per_s']} MiB/s")
print(f"natter upload {media['upload_mib_per_s']:.0f} MiB/s, download {media['download_mib_per_s']:.0f} MiB/s")
print(f"send->deliver p50/p99 alone {q[0]:.2f}/{q[1]:.2f} ms, beside uploads {b[0]:.2f}/{b[1]:.2f} ms (ok: {q[2]}, {b[2]})")
print(f"uploads beside the direct run: {beside['uploaded_mib']:.0f} MiB at {beside['upload_mib_per_s']:.0f} MiB/s")
PY
