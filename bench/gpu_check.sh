#!/usr/bin/env bash
# The GPU check (issue 27 item 6): one command for a machine with one GPU, JAX and PyTorch but no
# TensorFlow and no network, that finishes in under 9 minutes and writes its results as files:
#   1. bench/gpu_throughput.py: ResNet-18 train/eval images/s, Keras on JAX vs PyTorch (2 rounds);
#   2. bench/paper_seed_gpu.py: as much of one paper-budget seed as fits 170 s (ResNet-18,
#      5 EMAs at T=16, 6 models evaluated per epoch, 313 steps per epoch), projected to 200 epochs:
#      the "one GPU" cost of a seed in the analysis plan's power rows.
# Keras is installed from the wheels in .whl/ when the machine lacks it; prepare them here with
#   pip download --only-binary=:all: --python-version 3.11 -d .whl keras==3.15.1
# (the target's Python version), and carry .whl/ to the machine. Results go to $OUT (default
# bench/results/gpu/): gpu_throughput.json, paper_seed_gpu.json and each step's log.
# Never a test dependency: nothing in tests/ runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
if ! python -c "import keras" 2>/dev/null; then
    python -m pip install -q --no-index --find-links .whl keras || { echo "no Keras and no usable .whl/" >&2; exit 2; }
fi
export KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
status=0
timeout 270 python bench/gpu_throughput.py --repeats 2 --out "$OUT/gpu_throughput.json" \
    > "$OUT/gpu_throughput.log" 2>&1 || { echo "gpu_throughput failed or timed out: $OUT/gpu_throughput.log" >&2; status=1; }
timeout 240 python bench/paper_seed_gpu.py --deadline-seconds 170 --out "$OUT/paper_seed_gpu.json" \
    > "$OUT/paper_seed_gpu.log" 2>&1 || { echo "paper_seed_gpu failed or timed out: $OUT/paper_seed_gpu.log" >&2; status=1; }
tail -n 3 "$OUT"/*.log
exit $status
