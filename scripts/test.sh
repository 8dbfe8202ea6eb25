#!/usr/bin/env bash
# The whole test suite on a fresh or prepared machine (sets up first; setup is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# two worker processes, whole test files each (module fixtures once); UNMASK_TEST_WORKERS=0 runs them in this one
"${UNMASK_VENV:-.venv}/bin/python" -m pytest -q --durations=15 -n "${UNMASK_TEST_WORKERS:-2}" --dist loadfile "$@"
