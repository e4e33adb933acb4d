#!/usr/bin/env bash
# Runs every claim of `python -m app.reproduce` at --budget small, shared runs
# first and each run's test evaluation right after it (weights are not committed,
# so a run must be evaluated in the session that trained it; the claims whose
# steps interleave them come first): the lr tuning, the three 80/20 validation
# runs each with its test evaluation (table5; then fig1b, fig1a), the final runs
# with their SWA branch, each tested (table1, swa), consistency (table3), then
# label noise (table2, fig2) and Adda et al. Each step resumes where it stopped. Run it from a clean checkout (every run records its commit
# and whether the tree was clean). Log: reproductions/small.log.
# Usage: nohup bash experiments/run_small_reproductions.sh &
set -uo pipefail
cd "$(dirname "$0")/.."
# Changes under reproductions/ (results a rerun deletes) are not code (training/provenance.py).
if [ -n "$(git status --porcelain --untracked-files=no -- . ':(exclude)reproductions')" ]; then
    echo "the checkout has uncommitted changes; commit them (runs record the commit) or use a clean clone" >&2
    exit 2
fi
export TF_CPP_MIN_LOG_LEVEL=2
for claim in table5 fig1b fig1a table1 swa table3 table2 fig2 adda-constant-lr; do
    python -m app.reproduce "$claim" --budget small --data-dir ../shared/data/tfds \
        >> reproductions/small.log 2>&1 || echo "claim $claim failed" >> reproductions/small.log
done
python experiments/publish_results.py --budget small >> reproductions/small.log 2>&1
