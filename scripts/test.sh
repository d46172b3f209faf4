#!/usr/bin/env bash
# Runs Natter's whole test suite: formatting, lints, unit tests, the store suite and the
# end-to-end tests against real servers on 127.0.0.1. This is the README's test command and
# what CI runs (.ci/run). Everything the tests need is installed and started from here.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
