#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite. Extra arguments go to pytest (e.g. -k export -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
VENV="${QGRAPH_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest -q tests "$@"
