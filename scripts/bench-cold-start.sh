#!/usr/bin/env bash
# Cold start: how long a node takes from its process starting to `/readyz` answering 200, on
# an embedded store that already holds MESSAGES messages (seeded once with natter-bench's
# search scenario: MESSAGES messages in CONVS groups, full-text indexed). Each start is a new
# process on the same data directory, stopped with SIGINT after it is ready; prints every
# start and the median.
#
#   scripts/bench-cold-start.sh [BIN_DIR]     (default target/release: natter, natter-bench)
#
# MESSAGES (1000000), CONVS (3000), STARTS (5), PORT (18297), DATA (a temp dir; kept if given,
# so a seeded store can be measured again without seeding) from the environment; with
# DROP_CACHES=1 (root) the page cache is emptied before each start, so the binary and the
# store are read from disk.
set -euo pipefail
BIN="${1:-target/release}"
MESSAGES="${MESSAGES:-1000000}"; CONVS="${CONVS:-3000}"; STARTS="${STARTS:-5}"
PORT="${PORT:-18297}"
URL="http://127.0.0.1:$PORT"
SERVE=(serve --listen "127.0.0.1:$PORT" --send-per-sec 0 --search-per-min 0 --create-per-min 0
    --member-adds-per-min 0 --max-pending-invitations 100000)
if [[ -n "${DATA:-}" ]]; then KEEP=1; else DATA="$(mktemp -d /tmp/natter-cold.XXXXXX)"; KEEP=0; fi
ulimit -n 20000

ready_ms() { # starts the node on DATA; prints the milliseconds until /readyz is 200
    local start pid
    if [[ "${DROP_CACHES:-0}" == 1 ]]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
    start="$(date +%s%N)"
    "$BIN/natter" "${SERVE[@]}" --data-dir "$DATA" >>"$DATA.log" 2>&1 &
    pid=$!
    until curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "the node exited; see $DATA.log" >&2; exit 1; }
        sleep 0.002
    done
    echo $(( ($(date +%s%N) - start) / 1000000 ))
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

if [[ ! -e "$DATA/natter.db" ]]; then
    echo "== seeding $MESSAGES messages in $CONVS groups into $DATA"
    "$BIN/natter" "${SERVE[@]}" --data-dir "$DATA" >>"$DATA.log" 2>&1 &
    pid=$!
    until curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null; do sleep 0.05; done
    "$BIN/natter-bench" --server "$URL" search --messages "$MESSAGES" --conversations "$CONVS" \
        >/dev/null 2>"$DATA.seed.log" || { tail -5 "$DATA.seed.log"; exit 1; }
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
fi
du -sh "$DATA" | sed 's/^/== store: /'
times=()
for i in $(seq "$STARTS"); do
    ms="$(ready_ms)"
    echo "start $i: ready in $ms ms"
    times+=("$ms")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " ms"}'
[[ "$KEEP" == 1 ]] || rm -rf "$DATA" "$DATA.log" "$DATA.seed.log"
