#!/usr/bin/env bash
# The issue-4 commands end to end on real CIFAR-10, small budget: two seeds of
# ResNet-20, then evaluate, consistency, transfer and report, each timed.
#   bash experiments/small_pipeline.sh runs/small-2seeds
set -euo pipefail
out=${1:-runs/small-2seeds}
data=${DATA_DIR:-../shared/data/tfds}
timed() { local start=$SECONDS; "$@"; echo "[time] $* : $((SECONDS - start)) s"; }
timed python -m app.train --dataset cifar10 --model resnet20 --data-dir "$data" \
    --limit-train 2000 --limit-validation 2000 --epochs 4 --ema-every 2 \
    --ema-decays 0.99 0.998 --swa --seeds 0 1 --out "$out"
timed python -m app.evaluate "$out" --limit-test 2000
timed python -m app.consistency "$out" --limit-test 2000
timed python -m app.transfer "$out/seed-0" --dataset cifar10 --epochs 5 --limit-train 2000 --limit-test 2000
timed python -m app.report "$out" --out "$out/report"
