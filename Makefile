# Everything installs into .venv; each target sets it up first, so a fresh clone needs only `make test`.
# The venv's Python: python3.11 where it really runs (a version manager's shim may exist and fail),
# else python3 (3.10 or newer); PYTHON=... picks another.
PYTHON ?= $(shell python3.11 -c '' 2>/dev/null && echo python3.11 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# The resolved set of every dependency the tests last passed with (make lock refreshes it).
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(PY) -m pip install --quiet -c $(CONSTRAINTS)

.PHONY: install install-bench install-test train test test-fast lint bench ablation lock clean gpu-wheels

install: $(STAMP)

# Re-install only when the dependency list or the resolved set changes.
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "make: $(PYTHON) is older than Python 3.10: set PYTHON=python3.X"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench

install-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[dev,bench]'
	touch $(BENCH_STAMP)

train: install
	$(PY) train.py $(ARGS)

# The tests compare our optimizers with fastai's own (the bench extra), check the ONNX export with
# onnxruntime (export) and log offline to wandb and mlflow (loggers).
TEST_STAMP := $(VENV)/.installed-test

install-test: $(TEST_STAMP)

$(TEST_STAMP): $(BENCH_STAMP)
	$(PIP_INSTALL) -e '.[dev,bench,export,loggers]'
	touch $(TEST_STAMP)

# One pytest-xdist worker per core (tests/conftest.py gives each its share of the threads), a
# file at a time: a file's module fixtures are built once and the README's commands run in order.
PARALLEL ?= -n auto --dist loadfile

test: install-test
	$(PY) -m pytest $(PARALLEL) $(ARGS)

test-fast: install-test
	$(PY) -m pytest -m "not slow" $(PARALLEL) $(ARGS)

# The chapter's table: experiments x seeds as one Hydra multirun, then the report. A rerun skips
# the jobs that already wrote a complete results.json.
SCALE ?= quick
SEEDS ?= 3
EXPERIMENTS ?= baseline normalize progressive_resize mixup label_smoothing sota
ABLATION_RUNS := outputs/ablation/runs/$(SCALE)
comma := ,
space := $(subst ,, )

ablation: install
	$(PY) train.py -m +experiment=$(subst $(space),$(comma),$(strip $(EXPERIMENTS))) \
		seed=$$(seq -s, 0 $$(($(SEEDS) - 1))) scale=$(SCALE) tta=fastai skip_completed=true \
		hydra.sweep.dir=$(ABLATION_RUNS) 'hydra.sweep.subdir=$${name}/seed$${seed}' $(ARGS)
	$(PY) -m lightning_sota.report.ablation $(ABLATION_RUNS) --out outputs/ablation

# Speed and accuracy beside fastai on the same machine (IMAGENETTE_ROOT: the full official split).
BENCH_ARGS ?=
THROUGHPUT_ARGS ?=
SMALL_MAP_ARGS ?=
bench: install-bench
	@test -n "$(IMAGENETTE_ROOT)" || { echo "make bench: set IMAGENETTE_ROOT to a folder with train/ and val/ (README)"; exit 2; }
	$(PY) benchmarks/vs_fastai.py --root $(IMAGENETTE_ROOT) $(BENCH_ARGS)
	$(PY) benchmarks/throughput.py --root $(IMAGENETTE_ROOT) $(THROUGHPUT_ARGS)
	$(PY) benchmarks/small_map_conv.py $(SMALL_MAP_ARGS)
	$(PY) benchmarks/host_overhead.py --root $(IMAGENETTE_ROOT) $(HOST_ARGS)

# What a lent GPU machine lacks (it has torch, Lightning, timm, torchmetrics; no network): Hydra's
# wheels, at the versions constraints.txt pins, into .whl/ for benchmarks/gpu_check.sh to carry.
gpu-wheels: install
	rm -rf .whl && mkdir .whl
	$(PY) -m pip download --quiet --no-deps -c $(CONSTRAINTS) -d .whl hydra-core omegaconf
	$(PY) -m pip wheel --quiet --no-deps -c $(CONSTRAINTS) -w .whl antlr4-python3-runtime

# Re-resolve every dependency (all extras) to the newest releases pyproject.toml allows, in a
# scratch venv, record them in constraints.txt, then reinstall .venv from it and run the tests.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,bench,tensorboard,export,loggers]'
	{ echo "# Written by make lock (pip freeze of .[dev,bench,tensorboard,export,loggers]); make install installs from it."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	$(MAKE) test

lint: install
	$(PY) -m ruff check lightning_sota tests benchmarks train.py setup.py
	$(PY) -m ruff format --check lightning_sota tests benchmarks train.py setup.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache
