# Developer shortcuts. CI runs .ci/run, which installs as the README says and then runs these checks.
PYTHON ?= python

.PHONY: install test test-fast lint format bench ci

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

ci:
	bash .ci/run
