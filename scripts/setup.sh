#!/usr/bin/env bash
# Create the virtual environment (if missing) and install qgraph with its CI dependencies.
# Idempotent: when requirements-ci.txt and setup.cfg have not changed since the last successful
# run and qgraph still imports, it returns in well under a second.
#
#   QGRAPH_VENV  where the venv lives (default: <repo>/.venv)
#   PYTHON       interpreter used to create it (default: python3)
#   QGRAPH_FORCE_INSTALL=1  reinstall even when up to date
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QGRAPH_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    echo "setup: creating venv at $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi

# Headless Chromium for the HTML explorer's browser test (tests/test_inspect_browser.py skips without it).
# Only where apt exists and no Chromium is installed; never fatal.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
    echo "setup: installing chromium (apt) for the browser test" >&2
    { $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }; } \
        || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi

STAMP="$VENV/.qgraph-setup-stamp"
WANT="$(cat "$ROOT/requirements-ci.txt" "$ROOT/setup.cfg" | sha256sum | cut -d' ' -f1) $ROOT"
if [[ "${QGRAPH_FORCE_INSTALL:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
    && (cd / && "$PY" -c "import importlib.util as u, sys; s = u.find_spec('qgraph'); sys.exit(not (s and s.origin.startswith(sys.argv[1])))" "$ROOT" 2>/dev/null); then
    exit 0
fi

echo "setup: installing requirements into $VENV" >&2
t0=$SECONDS
"$PY" -m pip install --quiet -r "$ROOT/requirements-ci.txt"
"$PY" -m pip install --quiet -e "$ROOT[test]"
echo "$WANT" > "$STAMP"
echo "setup: done in $((SECONDS - t0)) s" >&2
