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

.PHONY: help run test test-tools test-alibi lint typecheck schemas dashboards clean bench-seq-performance

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

# statsmodels: nannyml 0.13.1 imports it without declaring it (category-encoders, which brought
# it in, dropped it in 2.8), so a fresh venv fails at `import nannyml` without it.
$(NANNYML_STAMP):
	$(PYTHON) -m venv $(NANNYML_VENV)
	$(NANNYML_VENV)/bin/pip install --quiet --upgrade pip
	$(NANNYML_VENV)/bin/pip install --quiet 'nannyml==0.13.1' statsmodels
	touch $(NANNYML_STAMP)

## bench-seq-performance: the AUROC CUSUM against NannyML's chunks (docs/benchmarks.md)
bench-seq-performance: $(STAMP) $(NANNYML_STAMP)
	PYTHONPATH=. $(BIN)/python -m benchmarks.seq_performance --explore

## run: the main job on embedded defaults (its own PostgreSQL server with the cluster in
## .radsentry/pg, bundled broker, simulated sites; RADSENTRY_DATABASE__URL names a server
## instead); run again, it resumes; `make run ARGS=--fresh` starts over (ARGS: any `radsentry
## demo` options); Ctrl-C stops it with status 0
run: $(STAMP)
	$(BIN)/radsentry demo $(ARGS)

## test: lint, type check, then the whole suite, then the alibi-detect cross-checks in their own
## venv. Nothing to start by hand: the tests start an embedded PostgreSQL server (or use the one
## RADSENTRY_TEST_PG_URL names) and the bundled broker themselves. The suite runs on
## TEST_WORKERS pytest-xdist workers (default 2), a module at a time each, the longest first
## (tests/conftest.py); TEST_WORKERS=0 runs it in one process. The set-up steps run two at
## once, so on a fresh clone the two venvs build side by side (2 min 2 s against 3 min 17 s
## one after the other on the 2-core box, docs/benchmarks.md "Test suite time").
TEST_WORKERS ?= 2
test:
	$(MAKE) -j2 test-tools $(ALIBI_STAMP) lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
	$(MAKE) test-alibi

## test-alibi: our detectors against alibi-detect (tests/alibi, never collected by the main run);
## --confcutdir keeps tests/conftest.py, which needs the service's dependencies, out of it
test-alibi: $(ALIBI_STAMP)
	$(ALIBI_BIN)/python -m pytest tests/alibi --confcutdir=tests/alibi

# Debian packages the tests run: promtool checks and unit-tests the alert rules, prometheus serves
# the dashboards' queries, Chromium renders pages headless. As root they are installed here (as
# .ci/run did); otherwise the command to run is printed and make stops.
TEST_TOOLS := promtool:prometheus prometheus:prometheus chromium:chromium

## test-tools: install (as root) or ask for the Debian packages the tests need
test-tools:
	@missing=""; \
	for pair in $(TEST_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || case " $$missing " in \
	    *" $${pair##*:} "*) ;; *) missing="$$missing $${pair##*:}";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (Debian packages the tests need)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "make test needs the Debian packages$$missing; install them with:" >&2; \
	    echo "    sudo apt-get install -y$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

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
