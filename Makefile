# Developer shortcuts. CI runs .ci/run, which installs as the README says and then runs these checks.
PYTHON ?= python

.PHONY: install test test-fast lint format bench bench-train bench-trl bench-learning ci

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

# Every quick benchmark (benchmarks/: tiny model, data pipeline, judge client, CPU rollout), one table and
# one JSON line; ARGS=--quick for fewer repeats and sizes, ARGS="--only NAME[,NAME]" for some.
bench:
	$(PYTHON) -m benchmarks $(ARGS)

# The full tiny learning run (about a quarter of an hour on 2 cores): time, peak memory, the val curve.
bench-train:
	$(PYTHON) -m benchmarks.train $(ARGS)

# One GRPO step of this trainer against TRL's GRPOTrainer, side by side (issue 18; ~12 min, ARGS=--quick ~5).
bench-trl:
	$(PYTHON) -m benchmarks.trl_step $(ARGS)

# Does the loop learn? tiny on 3 seeds, per row group, with the proof's checks (~30 min on 2 cores);
# ARGS=--ablation adds plain GRPO and the scalar safety reward (~80 min).
bench-learning:
	$(PYTHON) -m benchmarks.learning $(ARGS)

ci:
	bash .ci/run
