#!/usr/bin/env bash
# One command from a fresh machine to a running server or a green test run.
#   bash scripts/dev.sh serve   # install what is missing, start sm1-server with the shipped checkpoint
#   bash scripts/dev.sh test    # install what is missing (test extras, system packages), run the tests
# It uses the active Python environment (make a venv first if you want one). GPU users: install your
# own CUDA build of torch before running this; otherwise torch 2.13.0 (CPU build) is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${SM1_TORCH_SPEC:-torch==2.13.0}

ensure_torch() {
    if ! "$PY" -c "import torch" 2>/dev/null; then
        "$PY" -m pip install --quiet "$TORCH_SPEC"
    fi
}

ensure_system_packages() {
    # The MIDI stack (JACK) and the browser used by the client tests come from Debian's packages.
    local missing=()
    command -v jackd >/dev/null || missing+=(jackd2 libjack-jackd2-0)
    command -v chromium >/dev/null || missing+=(chromium)
    if ((${#missing[@]})) && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

case "${1:-}" in
    serve)
        ensure_torch
        "$PY" -m pip install --quiet -e .
        shift
        exec sm1-server "$@"
        ;;
    test)
        ensure_system_packages
        ensure_torch
        "$PY" -m pip install --quiet -e '.[dev]'
        shift
        "$PY" -m ruff check .
        exec "$PY" -m pytest "$@"
        ;;
    *)
        echo "usage: bash scripts/dev.sh serve|test [args...]" >&2
        exit 2
        ;;
esac
