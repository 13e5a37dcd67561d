# One command runs the tests, one runs the demo; both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned to the CPU build that this machine's package index serves; the project's own
# range (torch>=2.4) is then already satisfied, so no CUDA wheels are ever pulled.
TORCH ?= torch==2.13.0

.PHONY: install test test-fast wheel-smoke demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The wheel as users get it: built, installed in a fresh virtualenv, every job run from an empty folder.
wheel-smoke:
	TORCH=$(TORCH) PYTHON=$(PYTHON) .ci/wheel_smoke.sh

demo: install
	$(VENV)/bin/anymdp-agent demo

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks.sampler
	$(PY) -m benchmarks.env_step
	$(PY) -m benchmarks.harness

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
