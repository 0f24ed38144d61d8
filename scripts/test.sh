#!/usr/bin/env bash
# The one command that installs everything and runs the whole test suite:
#   make test        (or: bash scripts/test.sh)
# Creates ./.venv, installs agentsched with its dev extras, checks the services,
# then runs pytest (ruff and mypy --strict first, so style breaks fail fast).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

bash scripts/services.sh

.venv/bin/ruff check agentsched tests bench apps
.venv/bin/mypy
exec .venv/bin/pytest "$@"
