# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# alibi-detect (the cross-check oracle) needs numpy < 2 and is under the BSL, so it gets a venv of
# its own with only what monitor.drift imports (ADR 0006). Keep ALIBI_REQS in step with the
# [alibi] extra and with the runtime pins of torch, scipy and pydantic in pyproject.toml.
ALIBI_VENV  := .venv-alibi
ALIBI_BIN   := $(ALIBI_VENV)/bin
ALIBI_STAMP := $(ALIBI_VENV)/.installed
ALIBI_REQS  := 'alibi-detect[torch]>=0.13,<0.14' 'torch==2.13.0' 'scipy>=1.11' 'pydantic>=2.7' \
               'pytest>=8'

# NannyML (benchmarks/seq_performance.py's comparison) gets a venv of its own too: heavy
# dependencies, never imported by the service or the tests.
NANNYML_VENV  := .venv-nannyml
NANNYML_STAMP := $(NANNYML_VENV)/.installed

.PHONY: help run test test-alibi lint typecheck schemas dashboards clean bench-seq-performance

## help: list these targets and what each does (the `## target: text` comments here)
help:
	@awk '/^## [a-z-]+:/ { sub(/^## /, ""); at = index($$0, ":"); \
	        printf "  %-22s %s\n", substr($$0, 1, at - 1), substr($$0, at + 2); next } \
	      /^## / { sub(/^## /, ""); printf "  %-22s %s\n", "", $$0 }' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(ALIBI_STAMP): pyproject.toml
	$(PYTHON) -m venv $(ALIBI_VENV)
	$(ALIBI_BIN)/pip install --quiet $(ALIBI_REQS)
	$(ALIBI_BIN)/pip install --quiet --no-deps -e .
	touch $(ALIBI_STAMP)

$(NANNYML_STAMP):
	$(PYTHON) -m venv $(NANNYML_VENV)
	$(NANNYML_VENV)/bin/pip install --quiet --upgrade pip
	$(NANNYML_VENV)/bin/pip install --quiet 'nannyml==0.13.1'
	touch $(NANNYML_STAMP)

## bench-seq-performance: the AUROC CUSUM against NannyML's chunks (docs/benchmarks.md)
bench-seq-performance: $(STAMP) $(NANNYML_STAMP)
	PYTHONPATH=. $(BIN)/python -m benchmarks.seq_performance --explore

## run: the main job on embedded defaults (SQLite, bundled broker, simulated sites); run again,
## it resumes; `make run ARGS=--fresh` starts over (ARGS: any `radsentry demo` options);
## Ctrl-C stops it with status 0
run: $(STAMP)
	$(BIN)/radsentry demo $(ARGS)

## test: lint, type check, then the whole suite (PostgreSQL must be reachable; the tests start
## the bundled broker themselves), then the alibi-detect cross-checks in their own venv
test: lint typecheck
	$(BIN)/python -m pytest
	$(MAKE) test-alibi

## test-alibi: our detectors against alibi-detect (tests/alibi, never collected by the main run);
## --confcutdir keeps tests/conftest.py, which needs the service's dependencies, out of it
test-alibi: $(ALIBI_STAMP)
	$(ALIBI_BIN)/python -m pytest tests/alibi --confcutdir=tests/alibi

## lint: ruff check and ruff format --check
lint: $(STAMP)
	$(BIN)/ruff check monitor retrain pccp dashboards tests benchmarks
	$(BIN)/ruff format --check monitor retrain pccp dashboards tests benchmarks

## typecheck: mypy --strict on the packages
typecheck: $(STAMP)
	$(BIN)/mypy

## schemas: regenerate the JSON Schemas in docs/schemas
schemas: $(STAMP)
	$(BIN)/radsentry schemas --out docs/schemas

## dashboards: regenerate dashboards/generated/*.json from the code in dashboards/
dashboards: $(STAMP)
	rm -f dashboards/generated/*.json
	$(BIN)/radsentry dashboards export --out dashboards/generated

## clean: remove the virtual environments and the embedded data (.radsentry)
clean:
	rm -rf $(VENV) $(ALIBI_VENV) .radsentry .pytest_cache .mypy_cache .ruff_cache
