#!/usr/bin/env bash
# Runs every claim of `python -m app.reproduce` at --budget small, shared runs
# first and each run's evaluation right after it (weights are not committed, so
# a run must be evaluated in the session that trained it): the lr tuning and the
# three 80/20 validation runs (fig1b), their test evaluation (table5), the final
# runs with their SWA branch and test evaluation (table1, swa), consistency
# (table3), then label noise (fig2, table2) and Adda et al. Each step resumes
# where it stopped. Run it from a clean checkout (every run records its commit
# and whether the tree was clean). Log: reproductions/small.log.
# Usage: nohup bash experiments/run_small_reproductions.sh &
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "the checkout has uncommitted changes; commit them (runs record the commit) or use a clean clone" >&2
    exit 2
fi
export TF_CPP_MIN_LOG_LEVEL=2
for claim in fig1b table5 table1 swa table3 fig1a fig2 table2 adda-constant-lr; do
    python -m app.reproduce "$claim" --budget small --data-dir ../shared/data/tfds \
        >> reproductions/small.log 2>&1 || echo "claim $claim failed" >> reproductions/small.log
done
python experiments/publish_results.py --budget small >> reproductions/small.log 2>&1
