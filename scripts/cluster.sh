#!/usr/bin/env bash
# A local Natter cluster in one command: PostgreSQL, Redis, three `natter serve` nodes and
# HAProxy (TCP, round robin, health-checked on /readyz) in front of them, all on 127.0.0.1.
#
#   scripts/cluster.sh start    build the release binary, start everything, wait until healthy
#   scripts/cluster.sh status   what runs, and whether it answers
#   scripts/cluster.sh rolling-restart
#                               restart the nodes one at a time (SIGTERM: each drains, then
#                               starts again), as a deploy does; clients move, nobody is lost
#   scripts/cluster.sh stop     stop everything (the data stays for the next start)
#   scripts/cluster.sh clean    stop, then delete the data
#
# Clients connect to http://127.0.0.1:$NATTER_CLUSTER_PORT (default 8080); the nodes listen on
# the next three ports. PIDs, logs and data are under ./.natter-cluster/. Each node's /metrics
# wants `Authorization: Bearer $NATTER_METRICS_TOKEN` (default: natter-local-metrics-token).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${NATTER_CLUSTER_PORT:-8080}"
PG_PORT="${NATTER_CLUSTER_PG_PORT:-15432}"
REDIS_PORT="${NATTER_CLUSTER_REDIS_PORT:-16379}"
NODES=(node-1 node-2 node-3)
DIR="$PWD/.natter-cluster"
BIN="$PWD/target/release/natter"
DATABASE_URL="postgres://natter@127.0.0.1:$PG_PORT/natter"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export NATTER_METRICS_TOKEN="${NATTER_METRICS_TOKEN:-natter-local-metrics-token}"

node_port() { echo $((PORT + $1 + 1)); }

say() { echo "== $*"; }
die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

# ---- tools ----

pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true
}

install_tools() {
    local missing=() bindir
    bindir="$(pg_bindir)"
    [[ -n "$bindir" && -x "$bindir/pg_ctl" ]] || missing+=(postgresql)
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
}

# ---- processes ----

# The pid in $DIR/$1.pid if that process is alive and its command line contains $2 (so a
# stale pid file never makes us signal an unrelated process).
live_pid() {
    local file="$DIR/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(head -n 1 "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2" || return 1
    echo "$pid"
}

# Whether $1 runs (an exited process waiting to be reaped, a zombie, does not count: our
# daemons' parent is init, which may take a while to reap them).
alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "${stat##*) }" != Z* ]]
}

# Sends SIGTERM and waits up to $3 seconds, then SIGKILL.
stop_pid() {
    local name="$1" pid="$2" wait_s="$3"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    echo "$name did not stop within ${wait_s}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Runs $@ until it succeeds, for up to $1 seconds; false if it never did.
retry() {
    local secs="$1"
    shift
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

healthy() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/$2" >/dev/null
}

# ---- PostgreSQL ----

# Where the database lives: under .natter-cluster/ when the postgres user can reach it,
# otherwise (e.g. a checkout in /root) in /var/tmp. Remembered for stop and clean.
pg_dir() {
    if [[ -f "$DIR/pg.dir" ]]; then
        cat "$DIR/pg.dir"
    elif [[ "$(id -u)" != 0 ]] || runuser -u postgres -- test -x "$DIR"; then
        echo "$DIR/pg"
    else
        echo "/var/tmp/natter-cluster-pg-$(echo "$DIR" | md5sum | cut -c1-8)"
    fi
}

as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local bindir pgdir
    bindir="$(pg_bindir)"
    pgdir="$(pg_dir)"
    echo "$pgdir" >"$DIR/pg.dir"
    if [[ ! -f "$pgdir/data/PG_VERSION" ]]; then
        mkdir -p "$pgdir"
        if [[ "$(id -u)" == 0 ]]; then
            chown postgres: "$pgdir"
        fi
        as_pg "$bindir/initdb" -D "$pgdir/data" -U natter --auth=trust -E UTF8 >"$DIR/initdb.log"
    fi
    say "postgresql on 127.0.0.1:$PG_PORT ($pgdir)"
    as_pg "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgresql.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $pgdir -c max_connections=300" \
        start >/dev/null || die "postgresql did not start; see $pgdir/postgresql.log"
    ln -sf "$pgdir/postgresql.log" "$DIR/postgresql.log"
    if ! "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U natter -d postgres -Atc \
        "SELECT 1 FROM pg_database WHERE datname = 'natter'" | grep -q 1; then
        "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U natter natter
    fi
}

pg_running() {
    local pgdir
    pgdir="$(pg_dir)"
    [[ -f "$pgdir/data/postmaster.pid" ]] && as_pg "$(pg_bindir)/pg_ctl" -D "$pgdir/data" status >/dev/null 2>&1
}

stop_postgres() {
    if pg_running; then
        say "stopping postgresql"
        as_pg "$(pg_bindir)/pg_ctl" -D "$(pg_dir)/data" -m fast -w stop >/dev/null
    fi
}

# ---- commands ----

start() {
    mkdir -p "$DIR"
    for name in "${NODES[@]}" haproxy redis; do
        if [[ -n "$(live_pid "$name" .)" ]]; then
            die "already running ($name); try: scripts/cluster.sh status, or stop"
        fi
    done
    pg_running && die "postgresql is already running; try: scripts/cluster.sh stop"
    for p in "$PORT" "$(node_port 0)" "$(node_port 1)" "$(node_port 2)" "$PG_PORT" "$REDIS_PORT"; do
        port_in_use "$p" && die "port $p is in use (set NATTER_CLUSTER_PORT, _PG_PORT or _REDIS_PORT)"
    done
    install_tools
    say "cargo build --release -p natter-server"
    cargo build --release -p natter-server

    # If anything fails from here on, stop what was started.
    trap 'if [[ -z "${STARTED:-}" ]]; then echo "cluster.sh: start failed; stopping" >&2; stop; fi' EXIT
    start_postgres

    say "redis on 127.0.0.1:$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR"
    retry 30 redis-cli -p "$REDIS_PORT" ping || fail_start redis "$DIR/redis.log"

    for i in "${!NODES[@]}"; do
        start_node "$i"
        # The first node migrates the database; the others start once it is ready.
        if ((i == 0)); then
            wait_node 0
        fi
    done
    for i in "${!NODES[@]}"; do
        wait_node "$i"
    done

    say "haproxy on 127.0.0.1:$PORT"
    {
        echo "global"
        echo "    stats socket $DIR/haproxy.sock level admin"
        echo "defaults"
        echo "    mode tcp"
        echo "    log stdout format raw local0"
        echo "    option tcplog"
        echo "    timeout connect 2s"
        echo "    timeout client 1h"
        echo "    timeout server 1h"
        echo "    option redispatch"
        echo "    retries 3"
        echo "listen natter"
        echo "    bind 127.0.0.1:$PORT"
        echo "    balance roundrobin"
        # A draining node fails /readyz at once and keeps serving for drain_unready_ms
        # (2 s): longer than the 2 failed checks (1 s) that take it out.
        echo "    option httpchk GET /readyz"
        echo "    http-check expect status 200"
        for i in "${!NODES[@]}"; do
            echo "    server ${NODES[$i]} 127.0.0.1:$(node_port "$i") check inter 500ms fall 2 rise 2"
        done
    } >"$DIR/haproxy.cfg"
    setsid nohup haproxy -f "$DIR/haproxy.cfg" -db >"$DIR/haproxy.log" 2>&1 </dev/null &
    echo $! >"$DIR/haproxy.pid"
    retry 30 healthy "$PORT" healthz || fail_start haproxy "$DIR/haproxy.log"
    STARTED=1

    echo
    echo "Natter cluster: http://127.0.0.1:$PORT  (HAProxy over ${NODES[*]} on ports $(node_port 0)-$(node_port 2))"
    echo "Logs and data in $DIR; scripts/cluster.sh status | stop"
}

start_node() {
    local i="$1" name="${NODES[$1]}"
    say "$name on 127.0.0.1:$(node_port "$i")"
    mkdir -p "$DIR/$name"
    # One URL-signing key for all nodes, made once per cluster directory (in the environment,
    # not on the command line, where ps would show it).
    [[ -s "$DIR/media.key" ]] || (umask 077; head -c 48 /dev/urandom | base64 -w0 >"$DIR/media.key")
    # Every client reaches the nodes from 127.0.0.1 (through HAProxy, or the bench directly):
    # no cap per client address.
    NO_COLOR=1 NATTER_MEDIA_SECRET="$(cat "$DIR/media.key")" setsid nohup "$BIN" serve --listen "127.0.0.1:$(node_port "$i")" \
        --data-dir "$DIR/$name" --database-url "$DATABASE_URL" --redis-url "$REDIS_URL" \
        --node-id "$name" --max-connections-per-ip 0 >"$DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
}

# Until the node is ready (its store answers); fails at once if it exits.
wait_node() {
    local name="${NODES[$1]}"
    for ((i = 0; i < 600; i++)); do
        live_pid "$name" natter >/dev/null || fail_start "$name" "$DIR/$name.log"
        healthy "$(node_port "$1")" readyz 2>/dev/null && return 0
        sleep 0.1
    done
    fail_start "$name" "$DIR/$name.log"
}

fail_start() {
    echo "cluster.sh: $1 is not healthy; the end of $2:" >&2
    tail -n 30 "$2" >&2 || true
    exit 1
}

# A deploy: each node in turn gets SIGTERM and drains (readiness fails, HAProxy takes it
# out, its sessions close over drain_spread_ms and reconnect to the others, its commits
# finish), then starts again; the next goes once HAProxy has it back.
rolling_restart() {
    local pid k
    [[ -n "$(live_pid haproxy haproxy)" ]] || die "the cluster is not running; try: scripts/cluster.sh start"
    # Not `i`: the helpers' loops use (and change) that one.
    for k in "${!NODES[@]}"; do
        local name="${NODES[$k]}"
        if pid="$(live_pid "$name" natter)"; then
            say "draining $name"
            stop_pid "$name" "$pid" 30
        fi
        start_node "$k"
        wait_node "$k"
        # HAProxy puts it back after 2 passed checks 500 ms apart.
        sleep 1.5
        say "$name is back"
    done
}

stop() {
    local pid
    if pid="$(live_pid haproxy haproxy)"; then
        say "stopping haproxy"
        stop_pid haproxy "$pid" 5
    fi
    # Nodes drain their sessions (close 1012) and flush pending commits on SIGTERM.
    for name in "${NODES[@]}"; do
        if pid="$(live_pid "$name" natter)"; then
            say "stopping $name"
            stop_pid "$name" "$pid" 15
        fi
    done
    if pid="$(live_pid redis redis-server)"; then
        say "stopping redis"
        stop_pid redis "$pid" 5
    fi
    stop_postgres
    rm -f "$DIR"/*.pid "$DIR/haproxy.sock"
}

status() {
    local pid
    printf '%-10s %s\n' postgresql "$(pg_running && echo "running on 127.0.0.1:$PG_PORT" || echo stopped)"
    if pid="$(live_pid redis redis-server)"; then
        printf '%-10s running (pid %s) on 127.0.0.1:%s\n' redis "$pid" "$REDIS_PORT"
    else
        printf '%-10s stopped\n' redis
    fi
    for i in "${!NODES[@]}"; do
        local name="${NODES[$i]}" port
        port="$(node_port "$i")"
        if pid="$(live_pid "$name" natter)"; then
            printf '%-10s running (pid %s) on 127.0.0.1:%s, %s\n' "$name" "$pid" "$port" \
                "$(healthy "$port" readyz && echo ready || echo "not ready")"
        else
            printf '%-10s stopped\n' "$name"
        fi
    done
    if pid="$(live_pid haproxy haproxy)"; then
        printf '%-10s running (pid %s) on 127.0.0.1:%s, %s\n' haproxy "$pid" "$PORT" \
            "$(healthy "$PORT" healthz && echo answering || echo "not answering")"
    else
        printf '%-10s stopped\n' haproxy
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
rolling-restart) rolling_restart ;;
status) status ;;
clean)
    stop
    pgdir="$(pg_dir)"
    rm -rf "$DIR"
    if [[ "$pgdir" == /var/tmp/natter-cluster-pg-* ]]; then
        rm -rf "$pgdir"
    fi
    say "removed the cluster's data"
    ;;
*)
    echo "usage: scripts/cluster.sh start|status|rolling-restart|stop|clean" >&2
    exit 2
    ;;
esac
