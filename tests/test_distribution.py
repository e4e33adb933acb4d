"""Data parallelism on 2 CPU devices equals 1 device, on TensorFlow and JAX (issue 12).

Each run is a subprocess (tests/two_devices.py): TensorFlow's logical devices
and JAX's host device count must be set before the backend starts.

- A small model, with and without synchronized BatchNorm: weights, both EMAs
  (EMAN statistics, warm-up, T=2), SWA, power-function EMAs and the EMAs'
  BN-recomputed evaluations equal the 1-device run to float32 rounding (2e-7
  measured); the control, per-replica BN on TensorFlow, differs by far more.
- `app.train` on 2 devices: tests/test_distribution_app.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
BACKENDS = ["tensorflow", "jax"]
ARGV = ["--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR, "--limit-train", "128",
        "--limit-validation", "64", "--batch-size", "32", "--epochs", "3", "--lr", "0.0001",
        "--ema-decays", "0.9", "0.99", "--ema-every-steps", "2", "--bn-recompute", "epoch", "--swa",
        "--swa-start-epoch", "2", "--swa-lr", "0.0001", "--sync-batch-norm", "--post-hoc-ema", "--post-hoc-snapshot-every-steps", "2",
        "--deterministic", "--keep-checkpoint", "--checkpoint-every-steps", "3"]
needs_cifar10 = pytest.mark.skipif(not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")),
                                   reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")


def _run(backend, *argv, env=None):
    env = dict(os.environ, KERAS_BACKEND=backend, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               **(env or {}))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    # tests/run.sh gives each worker one core's thread pools; 2 devices' replicas run side by side on
    # TensorFlow's inter-op threads, which one thread made slower (a pair of 2-device runs: 56 s -> 64-69 s).
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "tests.two_devices", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _arrays(path):
    with np.load(path) as contents:
        return {key: contents[key] for key in contents.files}


def _toy(backend, mode, tmp_path, devices=(1, 2)):
    """The toy fit's arrays on each device count, the fits one after the other in one process."""
    outs = [str(tmp_path / f"{mode}-{count}.npz") for count in devices]
    result = _run(backend, mode, *[item for pair in zip(map(str, devices), outs) for item in pair])
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [_arrays(out) for out in outs]
    assert [int(arrays.pop("devices")) for arrays in runs] == [2] * len(devices)  # the devices there
    return runs


@pytest.mark.parametrize("mode", [pytest.param("toy", marks=pytest.mark.extended), "toy-bn"])  # CI: with BatchNorm
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_model_on_two_devices_equals_one(backend, mode, tmp_path):
    one, two = _toy(backend, mode, tmp_path)
    assert sorted(one) == sorted(two)
    for prefix in ("average/", "power/average/", "swa/", "log/ema_0.99_val_accuracy"):
        assert any(k.startswith(prefix) for k in one), prefix
    if mode == "toy-bn":
        assert "log/ema_0.99_bn_val_loss" in one
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    if mode == "toy-bn" and backend == "tensorflow":
        # The control: per-replica BatchNorm (each replica normalizes its 16 examples) is another model.
        local, = _toy(backend, "toy-bn-local", tmp_path, devices=(2,))
        assert max(np.max(np.abs(local[k] - one[k])) for k in one if k.startswith("weight/")) > 1e-3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--devices", "8"], "--devices 8: this machine has 1 CPU device for tensorflow; use at most 1"),
        (["--devices", "3"], "--batch-size 32 does not split across --devices 3; use a multiple of 3"),
    ],
)
@needs_cifar10  # the device count is checked once the data are read
def test_bad_device_counts_are_one_line_errors(tmp_path, extra, message):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "app.train", *ARGV, *extra, "--out", str(tmp_path / "o")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: " + message), result.stderr
    assert not (tmp_path / "o").exists()
