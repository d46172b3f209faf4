#!/usr/bin/env bash
# Runs Natter's whole test suite: formatting, lints, unit tests, the store suite, the
# end-to-end tests against real servers on 127.0.0.1, and the web client's and TypeScript
# SDK's tests (Node, and Chromium driven by playwright-core). This is the README's test command and
# what CI runs (.ci/run). Everything the tests need is installed and started from here.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# ---- Tools: PostgreSQL, Redis and HAProxy ----
# The store suite uses the PostgreSQL started below; the cluster tests
# (crates/server/tests/cluster_*.rs) start their own PostgreSQL, redis-server and haproxy
# processes on free ports, so only the binaries are needed for them. One apt-get for
# whatever is missing. (Installing redis-server or haproxy may start a system service on
# its default port where init scripts are allowed to run; no test uses those.)
pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true
}

install_tools() {
    local missing=() bindir
    bindir="$(pg_bindir)"
    if [[ -z "$bindir" || ! -x "$bindir/pg_ctl" ]] || ! command -v psql >/dev/null; then
        missing+=(postgresql)
    fi
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        missing+=(redis-server)
    fi
    command -v haproxy >/dev/null || missing+=(haproxy)
    # The web client and SDK tests: Node and npm, Debian's Chromium for playwright-core, and
    # an emoji font so that reactions render in the screenshots.
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || missing+=(fonts-noto-color-emoji)
    # promtool (Debian's prometheus package ships it) checks ops/prometheus.
    command -v promtool >/dev/null || missing+=(prometheus)
    if ((${#missing[@]})); then
        echo "== installing ${missing[*]}"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
}

install_tools
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 20)); then
    echo "Node.js 20 or newer is needed for web/ (found $(node --version))" >&2
    exit 1
fi

# ---- moto, the S3-compatible server of the media tests (crates/e2e/tests/e2e/media_s3.rs) ----
# From PyPI into a virtualenv kept between runs; each test starts its own server on a free
# port (NATTER_MOTO_SERVER names the binary).
install_moto() {
    local venv="${NATTER_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/natter-tools}/moto"
    if [[ ! -x "$venv/bin/moto_server" ]]; then
        echo "== installing moto (PyPI) in $venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
            rm -rf "$venv"
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.*'
    fi
    # The push tests' stand-ins (crates/e2e/tests/e2e/push_providers.rs): a Web Push
    # receiver that decrypts with http-ece and checks VAPID with cryptography, and aiosmtpd
    # as the SMTP server of the email digests.
    if ! "$venv/bin/python" -c 'import http_ece, aiosmtpd, cryptography' 2>/dev/null; then
        echo "== installing http-ece and aiosmtpd (PyPI) in $venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            'http-ece==1.2.*' 'aiosmtpd==1.4.*' 'cryptography>=42'
    fi
    # schemathesis, run against a live server's OpenAPI document
    # (crates/e2e/tests/e2e/openapi.rs).
    if [[ ! -x "$venv/bin/schemathesis" ]]; then
        echo "== installing schemathesis (PyPI) in $venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.*'
    fi
    export NATTER_MOTO_SERVER="$venv/bin/moto_server"
    export NATTER_PYTHON="$venv/bin/python"
    export NATTER_SCHEMATHESIS="$venv/bin/schemathesis"
}

install_moto

# ---- PostgreSQL for the store suite (STYLE.md section 9) ----
# A throwaway cluster in a temp directory on a free port, owned by the `postgres` user
# (PostgreSQL refuses to run as root), stopped and removed on exit.
start_postgres() {
    if [[ -n "${TEST_POSTGRES_URL:-}" ]]; then
        echo "== using TEST_POSTGRES_URL from the environment"
        return
    fi
    local bindir
    bindir="$(pg_bindir)"
    PG_DIR="$(mktemp -d /tmp/natter-pg.XXXXXX)"
    chmod 755 "$PG_DIR"
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    local as_pg=()
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$PG_DIR"
        as_pg=(runuser -u postgres --)
    fi
    PG_CTL=("${as_pg[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data")
    trap stop_postgres EXIT
    echo "== starting postgresql ($bindir) on 127.0.0.1:$port"
    "${as_pg[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U natter --auth=trust -E UTF8 >"$PG_DIR/initdb.log"
    "${PG_CTL[@]}" -l "$PG_DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c max_connections=300" start >/dev/null
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U natter natter
    export TEST_POSTGRES_URL="postgres://natter@127.0.0.1:$port/natter"
}

stop_postgres() {
    if [[ -n "${PG_DIR:-}" ]]; then
        "${PG_CTL[@]}" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}

start_postgres

# ---- The web client and the TypeScript SDK (web/, docs/web.md) ----
# The server embeds the client built into crates/server/assets/web/; it must be what the
# sources build, so it is built again here and compared with what is committed.
echo "== web: npm ci, type checks, build"
(cd web && npm ci --no-audit --no-fund --loglevel=error)
(cd web && npm run --silent build -w sdk && npm run --silent typecheck -w app && npm run --silent build -w app)
if ! git diff --quiet -- crates/server/assets/web \
    || [[ -n "$(git ls-files --others --exclude-standard -- crates/server/assets/web)" ]]; then
    echo "crates/server/assets/web is not what web/app builds:" >&2
    git status --short -- crates/server/assets/web >&2
    echo "run (cd web && npm run build -w app) and commit the result" >&2
    exit 1
fi

# Installing prometheus may start its service where init scripts run; only promtool is used.
echo "== promtool: alert rules (ops/prometheus)"
promtool check rules ops/prometheus/alerts.yml
(cd ops/prometheus && promtool test rules alerts_test.yml)

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== web: SDK tests and browser tests (Chromium) against target/debug/natter"
cargo build --locked -p natter-server
(cd web && NATTER_BIN="$PWD/../target/debug/natter" npm test --silent)
