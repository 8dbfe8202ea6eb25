#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the pinned PyTorch wheel first, then this package
# and its test tools. Safe to re-run. On this project's CPU machines `torch==2.13.0` resolves to a CPU
# wheel kept on disk; elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the
# CUDA build, or install your CUDA build of torch before running this script on a GPU machine.
# pip's own output goes to $VENV/setup.log and is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${UNMASK_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
LOG="$VENV/setup.log"
# Done before with this pyproject.toml, in this checkout: nothing to do (the test command runs this every time).
STAMP="$VENV/.unmask-setup"
WANT="$(sha256sum pyproject.toml | cut -c1-64) $(pwd)"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('unmask') and u.find_spec('torch')" 2>/dev/null; then
    echo "ready: $VENV/bin/unmask"
    exit 0
fi
quietly() { "$@" >"$LOG" 2>&1 || { cat "$LOG" >&2; echo "setup failed: $*" >&2; exit 1; }; }
quietly "$VENV/bin/python" -m pip install --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    quietly "$VENV/bin/python" -m pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi
quietly "$VENV/bin/python" -m pip install -e ".[dev]"
echo "$WANT" > "$STAMP"
echo "ready: $VENV/bin/unmask"
