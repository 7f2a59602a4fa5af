# The lanes of CONTRIBUTING.md. Tools come from .venv/bin/ when there is a
# .venv (README's install), so nothing needs activating; else from PATH.
# tests/integration/test_makefile.py holds these recipes to the commands the
# docs and .ci/run give.

BIN := $(if $(wildcard .venv/bin/python),.venv/bin/,)
PYTHON := $(if $(BIN),$(BIN)python,python3)

.PHONY: help test-fast test lint bench

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

test-fast:  ## the unit lane while editing: pure code, in-memory stores, under a minute
	$(PYTHON) -m pytest tests/unit

test:  ## the whole suite before a PR: README's test command, as .ci/run runs it
	$(PYTHON) -m pytest

lint:  ## what CI checks before the tests
	$(BIN)ruff check .
	$(BIN)ruff format --check .
	$(BIN)mypy

bench:  ## the quick variants of docs/PERFORMANCE.md's benchmarks (minutes: run alone)
	$(PYTHON) scripts/bench.py --quick
	$(PYTHON) scripts/bench_hostile.py --quick
