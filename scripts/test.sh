#!/usr/bin/env bash
# The whole test suite: formatting, lints (warnings are errors), unit, behaviour, end-to-end and
# doc tests. Installs what the tests need when it is missing (Debian packages), so it runs the same
# on a fresh machine and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
need_package() { # need_package COMMAND PACKAGE
    if command -v "$1" >/dev/null 2>&1; then return; fi
    echo "==> installing $2 (needed for the tests: $1 not found)"
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# The Redis store tests start their own redis-server on a free loopback port.
need_package redis-server redis-server
# The Redis Cluster tests join three servers with redis-cli (Debian's redis-tools).
need_package redis-cli redis-tools
# The cross-node metrics tests start their own Prometheus (free loopback port, data in a temporary
# directory); a system service the package may start on :9090 is not used.
need_package prometheus prometheus
# The chat example's browser test drives Debian's Chromium through playwright-core (Node.js 20 or
# newer; the machine image has it, Debian's own nodejs package is only the fallback).
need_package chromium chromium
need_package node nodejs
need_package npm npm

# A CI run builds once from a clean clone: incremental caches would only take disk and time.
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo test (unit, behaviour, end-to-end and doc tests)"
cargo test --workspace --all-features

echo "==> browser test of the chat example (headless Chromium)"
cargo build --example chat
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
(
    cd tests/browser
    npm ci --no-audit --no-fund --loglevel=error
    CHAT_BIN="$target_dir/debug/examples/chat" CHROMIUM="$(command -v chromium)" node --test
)
