# The README's two commands: `make demo` (set up, then evaluate the bundled lab model) and
# `make test` (set up, then run the test suite). Both start from nothing: the virtual
# environment is created on first use. TORCH lets users with CUDA pick their own build.
#
# Reproducible set-up: pyproject.toml keeps version ranges (for people who install fewstep as a
# library); `make setup` installs with constraints.txt, the exact versions the test suite passed
# with. `make lock` moves the lock to the newest versions the ranges allow and reruns the tests;
# constraints.txt changes only when they pass. A different TORCH can need other versions of
# torch's own dependencies: `make setup TORCH=... CONSTRAINTS=/dev/null` then installs without the lock.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
EXTRAS ?= dev,eval,lmeval,serve
PY := $(VENV)/bin/python
FEWSTEP := $(VENV)/bin/fewstep

.PHONY: setup demo test test-fast lint docs lab-models clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

# Main job: answer one question, then one table on 300 arith test problems, every row on the same problems
# and batches: the LLaDA baseline of tiny-dlm at full steps, threshold decoding, the distilled student
# (tiny-dlm-cd) and a warm start from the tiny-ar drafter (tiny-dlm-edit with its recommended warm-start
# settings); accuracy with its interval, forwards, tokens per forward, wall-clock speed-up and AUP. Writes
# runs/demo/bench.md, bench.json and pareto.png. About 1-3 minutes on 2 CPU cores once set up.
DEMO_ROWS := llada;threshold:threshold=0.9;threshold:threshold=0.9,model=tiny-dlm-cd;threshold:threshold=0.6,model=tiny-dlm-traj;threshold:threshold=0.9,model=tiny-dlm-edit,drafter=tiny-ar
demo: setup
	$(FEWSTEP) generate "Mia has 7 pens . She buys 5 more . She gives away 3 . How many pens does Mia have ?" --stats
	$(FEWSTEP) bench --task arith --model tiny-dlm --strategies "$(DEMO_ROWS)" --limit 300 --batch-size 100 \
		--repeats 1 --overwrite --out runs/demo

# The suite runs on every core (pytest-xdist): under 3 minutes on 2 CPU cores.
test: setup
	$(PY) -m pytest -q -n auto

# The suite without the tests marked slow (each over about 3 seconds on one thread).
test-fast: setup
	$(PY) -m pytest -q -n auto -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/mypy

# The documentation site (mkdocs-material): the reference pages are generated from the parser and the
# declarations first (scripts/gen_reference.py), then every page, link and anchor is checked (--strict).
docs: setup
	$(PY) scripts/gen_reference.py
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# Reproduce the bundled lab models (hours on 2 CPU cores; resumable: rerun after an interruption).
lab-models: setup
	$(FEWSTEP) train --kind dlm --steps 3000 --lr 0.0015 --snapshot-every 250 --stop-at 2500 --out runs/tiny-dlm --export src/fewstep/assets/tiny-dlm
	$(FEWSTEP) train --kind ar --steps 1000 --batch-size 64 --d-model 128 --n-layers 4 --n-heads 4 --mlp-hidden 320 --lr 0.002 --snapshot-every 100 --stop-at 900 --out runs/tiny-ar --export src/fewstep/assets/tiny-ar
	$(FEWSTEP) distill --teacher tiny-dlm --objective edit --edit-random 0.05 --edit-self 0.05 --edit-drafter 0.15 --steps 500 --batch-size 64 --lr 5e-5 --warmup 50 --min-lr-ratio 0.1 --val-size 512 --val-every 100 --patience 0 --threads 1 --save-dtype bfloat16 --out runs/tiny-dlm-edit --export src/fewstep/assets/tiny-dlm-edit
	$(PY) scripts/choose_warm_start.py --model src/fewstep/assets/tiny-dlm-edit --out runs/choose-tiny-dlm-edit --write
	$(FEWSTEP) distill --teacher tiny-dlm --steps 600 --batch-size 64 --lr 2e-4 --warmup 50 --min-lr-ratio 0.1 --val-size 512 --val-every 100 --threads 1 --out runs/tiny-dlm-cd --export src/fewstep/assets/tiny-dlm-cd
	$(FEWSTEP) rollouts --teacher tiny-dlm --strategy llada:steps=8 --steps 600 --batch-size 64 --val-size 512 --threads 1 --out runs/rollouts-llada8
	$(FEWSTEP) distill --teacher tiny-dlm --objective trajectory --rollouts runs/rollouts-llada8 --certainty-weight 0 --steps 600 --batch-size 64 --lr 2e-4 --warmup 50 --min-lr-ratio 0.1 --val-size 512 --val-every 100 --threads 1 --save-dtype bfloat16 --out runs/traj-c0 --export src/fewstep/assets/tiny-dlm-traj

# Refresh the lock: upgrade every dependency to the newest version pyproject's ranges allow (torch
# stays at TORCH), run the test suite, and only then write constraints.txt (pip freeze, less torch
# and fewstep itself). About 5 minutes on 2 CPU cores plus the downloads.
.PHONY: lock
lock: setup
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[$(EXTRAS)]"
	$(PY) -m pytest -q -n auto
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|fewstep)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(VENV)/.installed

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
