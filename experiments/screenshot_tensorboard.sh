#!/usr/bin/env bash
# Renders TensorBoard's Scalars tab for a run directory in headless Chromium
# (Debian's `chromium`) and saves a PNG: a check of what a user sees.
# Usage: bash experiments/screenshot_tensorboard.sh RUN_DIR OUT.png [TAG_FILTER]
set -euo pipefail
run_dir=$1 out=$2 filter=${3:-val_}
port=6123
tensorboard --logdir "$run_dir/tensorboard" --port $port --host 127.0.0.1 > /dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/data/runs" > /dev/null && break; sleep 1; done
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1400,800 --virtual-time-budget=40000 \
    --screenshot="$out" "http://127.0.0.1:$port/#scalars&tagFilter=$filter" 2>/dev/null
rm -rf "$profile"
echo "wrote $out"
