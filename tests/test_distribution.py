"""Data parallelism on 2 CPU devices equals 1 device, on TensorFlow and JAX.

Each run is a subprocess (tests/two_devices.py): TensorFlow's logical devices
and JAX's host device count must be set before the backend starts.

Not here yet (issue 12 is open): `app.train` on 2 devices against 1 device.
For the tiny ResNet-20 run the two drift apart (2e-4 in the weights after 8
steps at lr 0.001; after 4 steps 1.5e-2 / 1.9e-3 / 7.7e-6 at lr 0.1 / 0.01 /
0.001 on JAX, from 1e-6 after one step), on both backends. On one device a
1e-7 relative nudge of the initial weights moves the same 4 steps by 6.4e-2 /
2.6e-5 at lr 0.1 / 0.001: the run is chaotic at float32 rounding, so the test
must compare single steps from identical weights instead (not written yet).
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
        "--limit-validation", "64", "--batch-size", "32", "--epochs", "2", "--ema-decays", "0.9", "0.99",
        "--ema-every-steps", "2", "--bn-recompute", "epoch", "--sync-batch-norm", "--deterministic",
        "--keep-checkpoint", "--checkpoint-every-steps", "100"]


def _run(backend, *argv):
    env = dict(os.environ, KERAS_BACKEND=backend, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "tests.two_devices", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _arrays(path):
    with np.load(path) as contents:
        return {key: contents[key] for key in contents.files}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_without_batch_norm_on_two_devices_equals_one(backend, tmp_path):
    runs = {}
    for devices in (1, 2):
        out = str(tmp_path / f"{devices}.npz")
        result = _run(backend, "toy", str(devices), out)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = _arrays(out)
    assert int(runs[2].pop("devices")) == 2 and int(runs[1].pop("devices")) == 2
    assert sorted(runs[1]) == sorted(runs[2]) and any(k.startswith("average/") for k in runs[1])
    for key in runs[1]:
        np.testing.assert_allclose(runs[2][key], runs[1][key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--devices", "8"], "--devices 8: this machine has 1 CPU device for tensorflow; use at most 1"),
        (["--devices", "3"], "--batch-size 32 does not split across --devices 3; use a multiple of 3"),
    ],
)
def test_bad_device_counts_are_one_line_errors(tmp_path, extra, message):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "app.train", *ARGV, *extra, "--out", str(tmp_path / "o")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: " + message), result.stderr
    assert not (tmp_path / "o").exists()
