# Everything a fresh machine needs to run the demo and the tests; see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ADAPTERS := $(sort $(dir $(wildcard adapters/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: install test demo docs check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a pyproject changes: `make test` stays fast on a second run.
$(STAMP): $(BIN)/python pyproject.toml $(wildcard adapters/*/pyproject.toml)
	$(BIN)/python -m pip install --quiet -e '.[dev,examples,docs]' $(foreach a,$(ADAPTERS),-e $(a))
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python -m examples.tweets.demo

docs: install
	$(BIN)/mkdocs build --strict

# The second mypy run checks the public types as a user's code sees them (tests/typing).
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy tests/typing

bench: install
	$(BIN)/python benchmarks/bench_local_hit.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
