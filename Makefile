# Developer shortcuts. CI runs .ci/run, which installs as the README says and then runs these checks.
PYTHON ?= python

.PHONY: install test test-fast lint format bench bench-train ci

install:
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow"

lint:
	ruff check .
	ruff format --check .

format:
	ruff format .
	ruff check --fix .

bench:
	$(PYTHON) -m saferl.models.bench
	$(PYTHON) -m saferl.data.bench

# The full tiny learning run (about a quarter of an hour on 2 cores): time, peak memory, the val curve.
bench-train:
	$(PYTHON) -m saferl.bench_train

ci:
	bash .ci/run
