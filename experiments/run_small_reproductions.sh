#!/usr/bin/env bash
# Runs every claim of `python -m app.reproduce` at --budget small, cheapest
# shared runs first, one after the other (each resumes where it stopped).
# Log: reproductions/small.log. Usage: nohup bash experiments/run_small_reproductions.sh &
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
for claim in fig1a fig1b table1 swa table3 adda-constant-lr table5 fig2 table2; do
    python -m app.reproduce "$claim" --budget small --data-dir ../shared/data/tfds \
        >> reproductions/small.log 2>&1 || echo "claim $claim failed" >> reproductions/small.log
done
