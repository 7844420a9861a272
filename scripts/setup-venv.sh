#!/usr/bin/env bash
# Creates (or reuses) the Python venv the interop tests use: pkilint, cryptography, grpcio-tools,
# grpcio-reflection (the v1alpha-only reflection client).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PKI_VENV:-$PWD/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import pkilint, cryptography, grpc_tools, grpc_reflection" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi
echo "venv ready: $venv"
