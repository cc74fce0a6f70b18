#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite. Extra arguments go to pytest (e.g. -k export -x;
# -n 0 runs it in one process). The tests run in QGRAPH_TEST_JOBS pytest-xdist workers (default: one per
# core, at most 4), each with its share of torch's threads (tests/conftest.py): 6:47 on two cores
# against 12:48 in one process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
VENV="${QGRAPH_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/ruff" check .
CORES="$(nproc 2>/dev/null || echo 2)"
JOBS="${QGRAPH_TEST_JOBS:-$(( CORES < 4 ? CORES : 4 ))}"
exec "$VENV/bin/python" -m pytest -q -n "$JOBS" tests "$@"
