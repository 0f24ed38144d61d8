#!/usr/bin/env bash
# The one command that installs everything and runs the whole test suite:
#   make test        (or: bash scripts/test.sh [pytest options])
# Creates ./.venv, installs agentsched with its dev extras, checks the services,
# runs ruff and mypy --strict (style breaks fail fast), then pytest on
# PYTEST_WORKERS processes (pytest-xdist; every test isolates its Redis keys, its
# PostgreSQL database per process, its ports and its files, so they run side by side).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# --- extra system packages for tests go here (one line each) ---
bash scripts/browser.sh  # Debian chromium for the dashboard's browser tests

bash scripts/services.sh

.venv/bin/ruff check agentsched tests bench apps
.venv/bin/mypy
# Most tests wait on Redis, PostgreSQL or subprocesses, so more workers than cores pay.
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-4}" "$@"
