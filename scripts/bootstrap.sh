#!/usr/bin/env bash
# Set up toposched in ./.venv (idempotent) and run the demo or the test suite.
#   ./scripts/bootstrap.sh demo   install, then run the demo on the embedded example cluster
#   ./scripts/bootstrap.sh test   install, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"; shift || true
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "toposched needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing toposched and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# nixl's wheels declare torch (a multi-GB CUDA build) although the Python API does not
# need it for host memory: install them without dependencies (docs/install-gpu.md).
.venv/bin/python -m pip install -q --no-deps 'nixl==1.5.1' 'nixl-cu12==1.5.1'

case "$mode" in
  demo) exec .venv/bin/toposched demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: $0 demo|test [args...]" >&2; exit 2 ;;
esac
