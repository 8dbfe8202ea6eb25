#!/usr/bin/env bash
# The whole test suite on a fresh or prepared machine (sets up first; setup is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
"${UNMASK_VENV:-.venv}/bin/python" -m pytest -q --durations=15 "$@"
