# Everything installs into .venv; each target sets it up first, so a fresh clone needs only `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-fast lint clean

install: $(STAMP)

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: install
	$(PY) -m ruff check lightning_sota tests benchmarks train.py
	$(PY) -m ruff format --check lightning_sota tests benchmarks train.py

clean:
	rm -rf $(VENV) .pytest_cache
