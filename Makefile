# streamer: the README names these targets. `make demo` and `make test` install what is missing.
#
# The virtual env lives outside the repository (PyTorch is a large download: install it once and
# reuse it from every clone); this checkout is installed into it in editable mode.

VENV     ?= $(HOME)/.cache/streamer/venv
PY       := $(VENV)/bin/python
SERVICES := deploy/local/services.sh
STAMP    := build/.installed
PYTHON   ?= python3

# The tests run against their own Kafka and Redis on other ports than the demo's.
TEST_ENV := KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 KAFKA_SASL_PORT=19094 KAFKA_SSL_PORT=19095 \
            REDIS_PORT=16379             REDIS_CLUSTER_PORT=17000 STREAMER_SERVICES_DIR=$(HOME)/.cache/streamer/test-services

.PHONY: install demo test unit docs lint bench bench-scale gpu-check gpu-wheels services-up services-down services-status clean

# Installs into the shared env when it is missing, when pyproject.toml changed, or when the env's
# editable install points at another checkout (CI clones the repository elsewhere).
install:
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } \
	  || { echo "cannot create a virtual env: apt-get install python3-venv"; exit 1; }
	@if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ] || ! (cd / && $(PY) -c \
	    "import streamer, sys; sys.exit(streamer.__file__ != '$(CURDIR)/streamer/__init__.py')" \
	    2>/dev/null); then \
	  echo "installing streamer and its dependencies into $(VENV)"; \
	  $(PY) -m pip install --quiet --upgrade pip && \
	  $(PY) -m pip install --quiet --progress-bar off -e ".[dev]" && \
	  mkdir -p $(dir $(STAMP)) && touch $(STAMP); \
	fi

demo: install services-up
	$(VENV)/bin/streamer demo

# The tests also need Debian's chromium and chromedriver (the dashboard's browser test) and
# promtool (the Prometheus files' checks); both scripts install them when missing.
test: install
	deploy/local/browser.sh
	deploy/local/promtool.sh
	$(TEST_ENV) KAFKA_FRESH=1 $(SERVICES) up
	$(PY) -m pytest; rc=$$?; $(TEST_ENV) $(SERVICES) down; exit $$rc

unit: install
	$(PY) -m pytest tests/unit

# The documentation site (MkDocs, Material theme) into build/site; the tests build it too.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Starts its own Kafka and Redis (ports 29092, 26379) and stops them at the end; a few minutes.
# Then what each model kind costs the batch path (no sockets; under a minute).
bench: install
	$(PY) bench/throughput.py
	$(PY) bench/model_kinds.py

# Throughput with 1 and 2 workers, failover (kill -9), leave and join times; same services, minutes.
bench-scale: install
	$(PY) bench/scale.py

# The GPU check (bench/gpu_check.sh): the predictor's equality tests on CUDA against the in-memory
# store, and entity-steps/s on CUDA and CPU. On a machine with an NVIDIA GPU and PyTorch, from the
# repository root: `bash bench/gpu_check.sh` (the wheels of `make gpu-wheels` travel in .whl/).
# Here, without a GPU, the same script runs on the CPU.
gpu-check: install
	PATH=$(VENV)/bin:$$PATH bench/gpu_check.sh

# The project's pure-Python and binary wheels that a CUDA machine with Python 3.12 lacks, into .whl/.
GPU_WHEELS := orjson pydantic pydantic_core annotated-types typing-inspection redis pydantic-settings \
              python-dotenv typing_extensions pytest pytest-asyncio pytest-timeout
gpu-wheels: install
	rm -rf .whl && $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$($(PY) -m pip freeze | grep -i -E "^($$(echo $(GPU_WHEELS) | tr ' ' '|'))==" )

lint: install
	$(VENV)/bin/ruff check streamer workers tests bench examples
	$(VENV)/bin/ruff format --check streamer workers tests bench examples
	$(VENV)/bin/mypy

services-up:
	$(SERVICES) up

services-down:
	$(SERVICES) down

services-status:
	$(SERVICES) status

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
