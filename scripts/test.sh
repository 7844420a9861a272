#!/usr/bin/env bash
# The whole test suite: unit, property, interop and end-to-end tests.
# Needs openssl, keytool and the venv of scripts/setup-venv.sh (created here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# Creates the venv if missing, and adds what a newer requirements list needs (a quick import check).
scripts/setup-venv.sh >/dev/null
# Build the daemon binary first: the end-to-end tests start it.
cargo build -q -p ca-daemon --bin ca-daemon
export CA_DAEMON_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/ca-daemon"
cargo test --workspace --no-fail-fast "$@"
# The suites that make sense for both stores run again with every daemon on PostgreSQL (a real
# server the harness starts itself: integration/src/pg.rs; issue #15 item 7).
CA_DAEMON_TEST_STORE=postgresql cargo test -p integration --no-fail-fast \
  --test enrollment --test revocation --test operations --test crash "$@"
