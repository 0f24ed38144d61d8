# Developer entry points. `make test` is the one command CI runs (.ci/run).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint typecheck test bench run worker

install:
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'

lint: install
	$(BIN)/ruff check agentsched tests bench apps
	$(BIN)/ruff format --check agentsched apps

typecheck: install
	$(BIN)/mypy

test:
	bash scripts/test.sh

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	bash scripts/services.sh
	for b in bench/bench_*.py; do $(BIN)/python $$b || status=1; done; exit $${status:-0}

run: install
	$(BIN)/agentsched dev
