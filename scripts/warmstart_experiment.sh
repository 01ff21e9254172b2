#!/usr/bin/env bash
# The warm-start experiment (README "Warm starts"): tiny-dlm with and without tiny-ar's draft, on
# the full arith test set, on top of llada at full steps and of threshold 0.9: one bench per commit
# policy, so the first row of each table (no warm start) is the baseline of every Δ and ratio.
# Same problems, batch size and machine for every row; the drafter's forwards and seconds are inside
# every wall-clock figure. About 30-60 minutes on 2 CPU cores; pass --limit 100 for a quick look.
set -euo pipefail
OUT=${OUT:-runs/results/warmstart}
W="drafter=tiny-ar"
SKEPTIC="remask_threshold=0.5,confirm_threshold=0.5"
VERIFY="remask_threshold=0.3,verify_groups=2,verify_prefix=true"
for base in "llada" "threshold:threshold=0.9"; do
  sep=$([[ $base == *:* ]] && echo "," || echo ":")
  S="$base"
  S+=";$base${sep}$W,init=inject,rho=0.5"
  S+=";$base${sep}$W,init=inject,rho=0.5,$SKEPTIC"
  S+=";$base${sep}$W,init=inject,rho=1.0"
  S+=";$base${sep}$W,init=inject,rho=1.0,$SKEPTIC"
  S+=";$base${sep}$W,init=interpolate,alpha=0.5"
  S+=";$base${sep}$W,init=interpolate,alpha=0.9"
  S+=";$base${sep}$W,init=inject,draft_min_confidence=0.9"
  S+=";$base${sep}$W,init=inject,$VERIFY"
  S+=";$base${sep}$W,init=inject,$VERIFY,revise_threshold=0.05"
  fewstep bench --task arith --model tiny-dlm --batch-size 100 --repeats 1 --out "$OUT-${base%%:*}" --strategies "$S" "$@"
done
