#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the pinned CPU PyTorch wheel first (so no CUDA
# packages are pulled on CPU machines), then this package and its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${UNMASK_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # On a GPU machine, install the CUDA build of torch yourself before running this script.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "ready: $VENV/bin/unmask"
