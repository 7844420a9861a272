#!/usr/bin/env bash
# The whole test suite: unit, property, interop and end-to-end tests.
# Needs openssl, keytool and the venv of scripts/setup-venv.sh (created here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "${PKI_VENV:-.venv}/bin/lint_pkix_cert" ] || scripts/setup-venv.sh
# Build the daemon binary first: the end-to-end tests start it.
cargo build -q -p ca-daemon --bin ca-daemon
export CA_DAEMON_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/ca-daemon"
cargo test --workspace --no-fail-fast "$@"
