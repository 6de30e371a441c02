# Sightline. `make demo` and `make test` work on a fresh machine with Python 3.11:
# each creates the virtualenv it needs in .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test lint bench serve worker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.runtime  ## the whole system on http://127.0.0.1:8000 with synthetic samples
	$(BIN)/sightline demo

lint: $(VENV)/.test
	$(BIN)/ruff check service worker models migrations tests
	$(BIN)/ruff format --check service worker models migrations tests
	$(BIN)/mypy models service worker

test: lint  ## unit, API, integration (PostgreSQL + Redis + real Celery worker) and deploy checks
	$(BIN)/pytest

bench: $(VENV)/.test  ## benchmarks; writes reports/benchmark.md
	PYTHONPATH=.:tests $(BIN)/python tests/bench/run.py --report reports/benchmark.md

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
