#!/usr/bin/env bash
# Set up (if needed) and run the quickstart demo: train, quantize, export, compare FP32 vs INT8.
# Extra arguments go to examples/quickstart.py (e.g. --out DIR, --recipe w8a16).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
VENV="${QGRAPH_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" examples/quickstart.py "$@"
