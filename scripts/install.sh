#!/usr/bin/env bash
# Set up .venv on a fresh machine: a virtualenv, the CPU torch wheel first (an
# unpinned torch would pull several GB of CUDA packages), then optical-ray with its
# test, MiniLM, tracking and docs extras. Idempotent: a second run only reinstalls what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

make_venv() {
    "$PYTHON" -m venv "$VENV" 2>/dev/null && return 0
    rm -rf "$VENV"
    # Debian splits venv/ensurepip into python3-venv; install it when we can.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing python3-venv (Debian ships venv separately)"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        "$PYTHON" -m venv "$VENV" && return 0
    fi
    echo "error: '$PYTHON -m venv' failed; install your distribution's venv package (Debian: apt-get install python3-venv)" >&2
    exit 1
}

stamp="$VENV/.optical-ray-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || make_venv
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[test,minilm,tracking,docs]"
touch "$stamp"
echo "installed optical-ray into $VENV"
