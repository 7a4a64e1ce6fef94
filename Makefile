# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the main job on embedded defaults (SQLite, bundled broker, simulated sites)
run: $(STAMP)
	$(BIN)/radsentry demo

## test: lint, type check, then the whole suite (PostgreSQL must be reachable; the tests start
## the bundled broker themselves)
test: lint typecheck
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check monitor retrain pccp tests benchmarks
	$(BIN)/ruff format --check monitor retrain pccp tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/radsentry schemas --out docs/schemas

clean:
	rm -rf $(VENV) .radsentry .pytest_cache .mypy_cache .ruff_cache
