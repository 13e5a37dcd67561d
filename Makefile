# One command runs the tests, one runs the demo; both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned to the CPU build that this machine's package index serves; the project's own
# range (torch>=2.4) is then already satisfied, so no CUDA wheels are ever pulled.
TORCH ?= torch==2.13.0

.PHONY: install test test-fast wheel-smoke demo bench clean train-default

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

# The bundled default agent's recipe (about 11 minutes): a corpus, the transition prior's stage 1 on it,
# stage 2 on the planner's histories, the agent checkpoint; then python training/bundle.py evaluates and bundles it.
PRIOR_CORPUS_WEIGHTS := explore=0.4,mixed_a=0.1,mixed_b=0.1,mixed_c=0.1,mixed_d=0.1,qlearn=0.1,random=0.1,distill_a=0,distill_b=0,oracle=0
train-default: install
	$(VENV)/bin/anymdp-agent generate --out data/prior-corpus --tasks 1024 --seq-len 4096 --n-states 8:32 \
		--n-actions 2:5 --weights $(PRIOR_CORPUS_WEIGHTS) --no-progress
	$(PY) -m anymdp_agent.training.transition_prior --corpus data/prior-corpus --out runs/prior-stage1
	$(PY) -m anymdp_agent.training.transition_prior --init_from runs/prior-stage1 --iters 1500 --out runs/prior \
		--agent_out runs/anymdp-agent-model-based-cpu

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks.sampler
	$(PY) -m benchmarks.env_step
	$(PY) -m benchmarks.harness

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
