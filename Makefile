# make test        - the test suite (creates .venv on first run; needs only Python 3.10+ and pip)
# make test-compat - the whole suite again under transformers 4.30.2 / tokenizers 0.13 (AUTOMATIC1111's pin)
# make lint        - ruff (lint and format check) and mypy, from .venv
# make bench       - CPU benchmarks; prints a table and writes bench/results/*.json
# make gpu-check   - the prepared CUDA check (bench/README.md); a reduced CPU run where there is no CUDA
PYTHON ?= python3
VENV := .venv
COMPAT_VENV := .venv-compat
PYTEST_ARGS ?=

$(VENV)/.installed: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

$(COMPAT_VENV)/.installed: requirements-compat.txt
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-compat.txt
	touch $@

.PHONY: test test-compat lint bench gpu-check clean
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: $(VENV)/.bench-installed
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# Needs only what the GPU machine has (torch, transformers, safetensors, sentencepiece, tokenizers): no venv.
# Uses .venv where it exists, else $(PYTHON) (python3, the GPU machine's torch).
GPU_CHECK_PYTHON := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,$(PYTHON))
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_CHECK_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache
