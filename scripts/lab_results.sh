#!/usr/bin/env bash
# The measurements behind the README's results tables, on the bundled lab models and the full
# arith test set (1,000 problems). Run from the repository root after `make setup`:
#   bash scripts/lab_results.sh [OUT]      (default OUT=runs/results; every step resumes)
set -euo pipefail
OUT=${1:-runs/results}
FS=${FEWSTEP:-.venv/bin/fewstep}
PY=${PYTHON:-.venv/bin/python}

# Issue-3 baselines: tiny-dlm with llada at one token per step and at a quarter of the steps; tiny-ar greedy.
$FS eval --task arith --model tiny-dlm --strategy llada --batch-size 100 --out "$OUT/dlm-llada-24" --no-progress
$FS eval --task arith --model tiny-dlm --strategy llada --set steps=6 --batch-size 100 --out "$OUT/dlm-llada-6" --no-progress
$FS eval --task arith --model tiny-ar --strategy ar --batch-size 100 --out "$OUT/ar-greedy" --no-progress

# Learning curve of tiny-dlm (needs the training run directory runs/tiny-dlm from `make lab-models`).
if [ -d runs/tiny-dlm/snapshots ]; then
  $PY scripts/learning_curve.py --run runs/tiny-dlm --limit 300 --out "$OUT/learning-curve"
fi

# The accuracy / NFE frontier of every strategy (one timed repeat), then timings (three repeats).
$FS bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT/frontier" --no-progress \
  --strategies "llada;llada:steps=12;llada:steps=8;llada:steps=6;llada:steps=4;threshold:threshold=0.99;threshold:threshold=0.95;threshold:threshold=0.9;threshold:threshold=0.8;factor:factor=0.5;factor:factor=1.0;factor:factor=2.0;cad:tau=0.99;cad:tau=0.95;cad:tau=0.9"
$FS bench --task arith --model tiny-dlm --batch-size 32 --repeats 3 --limit 320 --out "$OUT/timing-b32" --no-progress \
  --strategies "llada;threshold:threshold=0.8;factor:factor=1.0;cad:tau=0.9"

# Batch invariance on 200 prompts, alone vs ragged batches of 32.
$PY scripts/check_batch_invariance.py --model tiny-dlm --n 200 --batch-size 32 | tee "$OUT/batch-invariance.txt"

# The entropy-bounded sampler on the full test set (README frontier, eb rows).
$FS bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT/frontier-eb" --no-progress \
  --strategies "llada;threshold:threshold=0.9;eb:entropy_bound=0.01;eb:entropy_bound=0.1;eb:entropy_bound=0.3;eb:entropy_bound=1.0;eb:entropy_bound=3.0"
$FS bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT/frontier-eb-small" --no-progress \
  --strategies "threshold:threshold=0.9;eb:entropy_bound=0.001;eb:entropy_bound=0.003;eb:entropy_bound=0.03"
$FS bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT/frontier-eb-zero" --no-progress \
  --strategies "threshold:threshold=0.9;eb:entropy_bound=0.0;eb:entropy_bound=0.0001"
$FS bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT/frontier-eb-conf" --no-progress \
  --strategies "threshold:threshold=0.9;eb:order=confidence,entropy_bound=0.01;eb:order=confidence,entropy_bound=0.1;eb:order=confidence,entropy_bound=0.3;eb:order=confidence,entropy_bound=1.0"
$FS bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT/frontier-eb-conf-small" --no-progress \
  --strategies "threshold:threshold=0.9;eb:order=confidence,entropy_bound=0.0;eb:order=confidence,entropy_bound=0.001;eb:order=confidence,entropy_bound=0.003"

# Warm starts (README "Warm starts") and the engine's step cost (README "The decode engine").
OUT="$OUT/warmstart" PATH="$(dirname "$FS"):$PATH" bash scripts/warmstart_experiment.sh --no-progress
$PY scripts/step_memory.py | tee "$OUT/step-memory.json"
