#!/usr/bin/env bash
# The project's test command (README "Test"): the whole suite on the
# TensorFlow backend, then the backend-neutral averaging callbacks and models
# on the JAX backend.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q tests
KERAS_BACKEND=jax python -m pytest -q tests/test_ema.py tests/test_ema_rules.py tests/test_batch_norm.py tests/test_swa.py tests/test_bootstrap.py tests/test_stability.py tests/test_readme_example.py tests/test_power_ema.py tests/test_posthoc.py
