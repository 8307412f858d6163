# `make test` and `make demo` each build .venv from nothing (idempotently) and then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build: it installs offline here and never pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: test demo bench install clean
BENCH_STAMP := $(VENV)/.installed-bench

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]' $(TORCH)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Trains the default: scikit-learn's digits, SNOpt on the symplectic adjoint (a couple of minutes on a CPU).
demo: $(STAMP)
	$(PY) -m nodeopt train

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]' $(TORCH)
	touch $(BENCH_STAMP)

# The full benchmark suite (tens of minutes); results go to benchmarks/RESULTS.md by hand.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.solvers
	$(PY) -m benchmarks.gradients
	$(PY) -m benchmarks.optimizers
	$(PY) -m benchmarks.snopt_stability
	$(PY) -m benchmarks.snopt_stress
	$(PY) -m benchmarks.train_loop
	$(PY) -m benchmarks.distributed
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.peers

clean:
	rm -rf $(VENV) build *.egg-info
