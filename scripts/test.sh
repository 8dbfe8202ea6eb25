#!/usr/bin/env bash
# The whole test suite on a fresh or prepared machine (sets up first; setup is idempotent).
#   bash scripts/test.sh                  the fast tier in this one process, then the slow tier on worker processes
#   bash scripts/test.sh -m "not slow"    the inner loop: the fast tier alone, in this one process
# The fast tier is CPU-bound (workers would only share the same cores and import torch twice); the slow tier runs on
# UNMASK_TEST_WORKERS worker processes (default 3: a third overlaps the waits on Ray and subprocess start-ups), whole
# test files each, the longest first (tests/conftest.py: LONGEST_FIRST).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null || exit 1
PYTEST=("${UNMASK_VENV:-.venv}/bin/python" -m pytest -q)
if [[ " $* " == *" -m "* || " $* " == *"not slow"* ]]; then  # the caller chose the tests: run exactly those
    exec "${PYTEST[@]}" "$@"
fi
"${PYTEST[@]}" -m "not slow" "$@"
fast=$?
"${PYTEST[@]}" -m slow --durations=10 -n "${UNMASK_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
slow=$?
[[ $fast -eq 0 || $fast -eq 5 ]] && [[ $slow -eq 0 || $slow -eq 5 ]]  # 5: no test in that tier was selected
