#!/usr/bin/env bash
# Does a warm start pay? For each diffusion model of MODELS and each commit policy (threshold 0.9;
# llada at full steps), one `fewstep bench` whose first row is the same model and policy without a
# warm start, so every Δ (Newcombe interval, McNemar p) and every ratio is against it; then tiny-ar's
# draft with the model's own warm-start settings (`drafter=tiny-ar` and nothing else), then a few
# explicit variants. Same problems, batch size and machine for every row; the drafter's forwards and
# seconds are inside every wall-clock figure (bench.md: "drafter NFE", "drafter s", "wall ratio").
#
# Settings are chosen on the validation split (TASK=arith-val, the default) and reported once on
# the test set (TASK=arith). A model that is not installed is skipped with a message.
#   bash scripts/warmstart_pays.sh                       # all of arith-val, every model of MODELS
#   MODELS="tiny-dlm" bash scripts/warmstart_pays.sh --limit 100     # quick look (flags go to bench)
#   TASK=arith bash scripts/warmstart_pays.sh            # the test-set report, settings fixed
#   python scripts/pareto_plot.py runs/results/warmstart-pays/arith-val/* --out pareto.png
set -euo pipefail
MODELS=${MODELS:-"tiny-dlm tiny-dlm-edit"}
TASK=${TASK:-arith-val}
DRAFTER=${DRAFTER:-tiny-ar}
OUT=${OUT:-runs/results/warmstart-pays/$TASK}
FEWSTEP=${FEWSTEP:-fewstep}
PYTHON=${PYTHON:-python}
W="drafter=$DRAFTER"
B16="drafter_dtype=bfloat16"
VARIANTS=(  # explicit warm-start settings, each added to the policy after "$W,"
  "$B16,init=inject,remask_threshold=0.5,confirm_threshold=0.5"            # prior skepticism at 0.5
  "$B16,init=inject,remask_threshold=0.9,confirm_threshold=0.9"            # one-forward verification at 0.9
  "$B16,init=inject,verify_prefix=true,remask_threshold=0.7,confirm_threshold=0.7"  # prefix verification
  "$B16,init=inject,verify_prefix=true,remask_threshold=0.5,confirm_threshold=0.5,reject=edit,edit_min_confidence=0.5"
  "$B16,init=interpolate,alpha=0.3,alpha_decay=0.5"                        # the embedding prior
)
POLICIES=${POLICIES:-"threshold:threshold=0.9 llada"}
for model in $MODELS; do
  if ! "$PYTHON" -c "import sys; from fewstep.models.loading import resolve; resolve(sys.argv[1])" "$model" 2>/dev/null; then
    echo "warmstart_pays: skipping $model (not installed)" >&2
    continue
  fi
  for base in $POLICIES; do
    sep=$([[ $base == *:* ]] && echo "," || echo ":")
    S="$base;$base$sep$W"
    for v in "${VARIANTS[@]}"; do S+=";$base$sep$W,$v"; done
    "$FEWSTEP" bench --task "$TASK" --model "$model" --batch-size 100 --repeats 1 \
      --out "$OUT/$(echo "$model" | sed 's#^runs/##; s#/#-#g')-${base%%:*}" --strategies "$S" "$@"
  done
done
