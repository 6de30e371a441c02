# Sightline. `make demo` and `make test` work on a fresh machine with Python 3.11:
# each creates the virtualenv it needs in .venv, from the hashed lock files (`make lock` regenerates them).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# torch is locked to its CPU build (torch==2.13.0+cpu). These machines carry that wheel in /opt/wheels;
# elsewhere, let pip find it on PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
UV_COMPILE  = $(BIN)/uv pip compile pyproject.toml --quiet --python-version 3.11 --generate-hashes \
              --custom-compile-command "make lock"

.PHONY: demo test lint bench explanations serve worker clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The locks pin every package with its hashes; the project itself goes in editable, without dependencies.
$(VENV)/.runtime: $(BIN)/python requirements.lock pyproject.toml
	$(PIP) install --quiet --require-hashes -r requirements.lock
	$(PIP) install --quiet --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.lock
	$(PIP) install --quiet --require-hashes --no-deps $(FIND_LINKS) -r requirements-test.lock
	touch $@

# Regenerate both locks after changing pyproject.toml's dependencies (needs network: PyPI, and the torch CPU
# wheel above). The test lock is constrained by the runtime lock, so both venvs agree on shared packages.
$(BIN)/uv: $(BIN)/python
	$(PIP) install --quiet uv

lock: $(BIN)/uv
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --extra test --extra train -c requirements.lock $(FIND_LINKS) --no-emit-package torchvision \
	  -o requirements-test.lock

demo: $(VENV)/.runtime  ## the whole system on http://127.0.0.1:8000 with synthetic samples
	$(BIN)/sightline demo

lint: $(VENV)/.test
	$(BIN)/ruff check service worker models migrations training tests
	$(BIN)/ruff format --check service worker models migrations training tests
	$(BIN)/mypy models service worker training

test: lint  ## unit, API, integration (PostgreSQL + Redis + real Celery worker) and deploy checks
	$(BIN)/pytest

bench: $(VENV)/.test  ## benchmarks; writes reports/benchmark.md
	PYTHONPATH=.:tests $(BIN)/python tests/bench/run.py --report reports/benchmark.md

# Sanity, faithfulness and localisation of every CAM method (CPU, about 15 minutes): trains a small CNN on
# generated phantoms with known lesion masks, then writes reports/explanations.md and the numbers the API serves.
explanations: $(VENV)/.test
	$(BIN)/python -m training.explanation_report --out reports/explanations.md --json models/explanation_metrics.json

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
