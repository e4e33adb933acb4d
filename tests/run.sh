#!/usr/bin/env bash
# The project's test command (README "Test"): the whole suite on the
# TensorFlow backend, then the backend-neutral averaging callbacks and models
# on the JAX backend, each spread over TEST_WORKERS pytest-xdist workers
# (default 2; a file's tests stay on one worker, so its module fixtures are
# built once).
#   bash tests/run.sh          # the CI tier: all but the tests marked `extended` (pytest.ini)
#   bash tests/run.sh full     # everything: also the extended variants (before changing resume,
#                              # signal, multi-device or multi-process code)
#   bash tests/run.sh quick    # the inner loop: the tests that train no ResNet
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=(-n "${TEST_WORKERS:-2}" --dist loadfile)
# Each worker's TensorFlow gets its share of the cores, not all of them: on 2
# cores, test_resume.py + test_train.py over 2 workers took 293 s this way, 314 s
# with TensorFlow's default thread pools (which oversubscribe the cores 2x).
# (tests/test_distribution.py gives its 2-device runs the default back.)
SHARE=$(( $(nproc) / ${TEST_WORKERS:-2} ))
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$(( SHARE > 0 ? SHARE : 1 ))}"
export TF_NUM_INTEROP_THREADS="${TF_NUM_INTEROP_THREADS:-$(( SHARE > 0 ? SHARE : 1 ))}"
JAX_FILES=(tests/test_ema.py tests/test_ema_rules.py tests/test_batch_norm.py tests/test_swa.py
           tests/test_bootstrap.py tests/test_stability.py tests/test_readme_example.py
           tests/test_power_ema.py tests/test_posthoc.py tests/test_callback_state.py)
# Under a minute on 2 cores: MultiEMA and SWA on small models, the rest NumPy and argument checks.
# BatchNormRecompute, the EMA selection rules and PowerFunctionEMA (70 s more) run in `ci` and `full` only.
QUICK_FILES=(tests/test_stats.py tests/test_schedules.py tests/test_metrics.py tests/test_optimizer.py
             tests/test_cli.py tests/test_report.py tests/test_noise_claims.py tests/test_bootstrap.py
             tests/test_ema.py tests/test_swa.py tests/test_run_dir.py tests/test_tiny_imagenet.py
             tests/test_regime.py tests/test_doc_references.py)
case "${1:-ci}" in
    ci|full)
        if [ "${1:-ci}" = full ]; then SELECT=(); else SELECT=(-m "not extended"); fi
        python -m pytest -q "${WORKERS[@]}" "${SELECT[@]}" tests
        echo "--- the same callback tests on the JAX backend:"
        KERAS_BACKEND=jax python -m pytest -q "${WORKERS[@]}" "${SELECT[@]}" "${JAX_FILES[@]}"
        ;;
    quick)
        python -m pytest -q "${WORKERS[@]}" "${QUICK_FILES[@]}"
        ;;
    *)
        echo "usage: bash tests/run.sh [ci|full|quick]" >&2
        exit 2
        ;;
esac
