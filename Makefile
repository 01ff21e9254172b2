# The README's two commands: `make demo` (set up, then evaluate the bundled lab model) and
# `make test` (set up, then run the test suite). Both start from nothing: the virtual
# environment is created on first use. TORCH lets users with CUDA pick their own build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
FEWSTEP := $(VENV)/bin/fewstep

.PHONY: setup demo test lint lab-models clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,eval,lmeval]"
	touch $@

setup: $(VENV)/.installed

# Main job: the LLaDA baseline of the bundled tiny-dlm on the full arith test set.
demo: setup
	$(FEWSTEP) generate "Mia has 7 pens . She buys 5 more . She gives away 3 . How many pens does Mia have ?" --stats
	$(FEWSTEP) eval --task arith --model tiny-dlm --strategy llada --batch-size 100 --out runs/demo-llada

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/mypy

# Reproduce the bundled lab models (hours on 2 CPU cores; resumable: rerun after an interruption).
lab-models: setup
	$(FEWSTEP) train --kind dlm --steps 3000 --lr 0.0015 --snapshot-every 250 --stop-at 2500 --out runs/tiny-dlm --export src/fewstep/assets/tiny-dlm
	$(FEWSTEP) train --kind ar --steps 1000 --batch-size 64 --d-model 128 --n-layers 4 --n-heads 4 --mlp-hidden 320 --lr 0.002 --snapshot-every 100 --stop-at 900 --out runs/tiny-ar --export src/fewstep/assets/tiny-ar
	$(FEWSTEP) distill --teacher tiny-dlm --steps 600 --batch-size 64 --lr 2e-4 --warmup 50 --min-lr-ratio 0.1 --val-size 512 --val-every 100 --threads 1 --out runs/tiny-dlm-cd --export src/fewstep/assets/tiny-dlm-cd

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
