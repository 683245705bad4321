# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv if missing.
#
# TORCH_SPEC is the one place torch is pinned: a CPU build (on this project's machines, a local wheel that
# installs in seconds). A GPU user swaps it, e.g. `make demo TORCH_SPEC='torch>=2.3'` (PyPI's default CUDA build)
# or installs their own torch into .venv first. The package itself only asks for torch>=2.3.
TORCH_SPEC ?= torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= results/demo

.PHONY: demo test lint venv mutation

venv: $(VENV)/.installed

# The package and its runtime dependencies (what the demo needs).
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .
	touch $@

# Plus the test tools and every optional extra the tests exercise (Ray backend, LunarLander, MuJoCo fallback).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,ray,box2d,mujoco]"
	touch $@

# The whole chain on a small default: train ppo_sam on CartPole, probe its sharpness (quick measure set), evaluate
# its robustness on the task's default suite, then run the smoke study (configs/smoke.yaml) and report on it.
demo: venv
	rm -rf $(DEMO_DIR)
	$(PY) -m rlflat.train ppo_sam CartPole --steps 30000 --out $(DEMO_DIR)/ppo_sam-CartPole
	$(PY) -m rlflat.probe $(DEMO_DIR)/ppo_sam-CartPole --quick
	$(PY) -m rlflat.evaluate $(DEMO_DIR)/ppo_sam-CartPole
	$(PY) -m rlflat.sweep configs/smoke.yaml --out $(DEMO_DIR)/smoke
	$(PY) -m rlflat.report $(DEMO_DIR)/smoke

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check rlflat tests benchmarks
	$(VENV)/bin/ruff format --check rlflat tests benchmarks
	$(VENV)/bin/mypy rlflat

test: lint
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n auto --maxprocesses 4 --dist loadfile

# Mutation score of the numeric core per module (benchmarks/mutation.py; not part of `make test`: it takes
# hours for every mutant, so MUTATION_ARGS defaults to a seeded sample of 30 mutants per module, run in one pass).
MUTATION_ARGS ?= --sample 30 --together
mutation: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 $(PY) benchmarks/mutation.py $(MUTATION_ARGS)
