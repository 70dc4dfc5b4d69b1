# Everything a fresh machine needs to run the demo and the tests; see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ADAPTERS := $(sort $(dir $(wildcard adapters/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: install pure test demo docs check wheel-check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a pyproject changes: `make test` stays fast on a second run.
$(STAMP): $(BIN)/python pyproject.toml $(wildcard adapters/*/pyproject.toml)
	$(BIN)/python -m pip install --quiet -e '.[dev,examples,docs]' $(foreach a,$(ADAPTERS),-e $(a))
	touch $(STAMP)

# The memory tier's hot modules and the miss path's (accessor, fence, loader) compiled with
# mypyc, the decorator's C hit (_hitcall.c), the sketch's counters (_sketch.c) and the JSON
# codec's batch guard (_plainjson.c), when a C compiler is present; without one (or with
# TIERED_CORE_PURE=1, or for a source changed since the build) the library runs on the
# pure-Python sources (tiered_cache/compiled.py).
# `make pure` removes the build.
CORE := $(VENV)/.core
# Its prerequisites are the sources tiered_cache/compiled.py lists (the one owner of that list).
CORE_SOURCES := $(shell $(PYTHON) tools/build_core.py --sources)
$(CORE): $(STAMP) tools/build_core.py tiered_cache/compiled.py $(CORE_SOURCES)
	$(BIN)/python tools/build_core.py
	touch $(CORE)

install: $(STAMP) $(CORE)

pure: $(STAMP)
	$(BIN)/python tools/build_core.py --remove
	rm -f $(CORE)

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

# A wheel of the core carries the compiled core when a C compiler is present (setup.py): built,
# its files checked, installed into a fresh venv and asked (tools/check_wheel.py; a few minutes).
wheel-check: install
	cd tools && ../$(BIN)/python check_wheel.py

# Every benchmark in quick mode, one after another (about 5 minutes on an idle 2-core machine).
# Each prints a "run:" line (command, commit, date, load, the core that ran: compiled or
# pure-Python) first: paste the output into docs/ as is.
# Not here: check_history.py and mutation_score.py (long checks, not benchmarks).
bench: install
	$(BIN)/python benchmarks/bench_local_hit.py
	$(BIN)/python benchmarks/bench_memory_tier.py --rounds 5 --skip-memory
	$(BIN)/python benchmarks/bench_redis.py --quick
	$(BIN)/python benchmarks/bench_get_many_parts.py --rounds 10
	$(BIN)/python benchmarks/bench_redis_steps.py --rounds 5
	$(BIN)/python benchmarks/bench_bus_delay.py --writes 100
	$(BIN)/python benchmarks/bench_dynamodb_batch.py --rounds 3
	$(BIN)/python benchmarks/bench_hit_ratio.py --quick
	$(BIN)/python benchmarks/bench_source_protection.py --rounds 2
	$(BIN)/python benchmarks/bench_faults.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build/core
	rm -f tiered_cache/*.so tiered_cache/compiled.json
