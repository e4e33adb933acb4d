"""Every average sharded like its weight under `keras.distribution.ModelParallel` (JAX).

One subprocess (tests/sharded_averages.py; JAX reads the device count at
start) trains a Dense + BatchNorm model with MultiEMA, SWA, PowerFunctionEMA
and BatchNormRecompute on one device and on a 2 x 4 ("batch", "model") mesh of
8 virtual CPU devices, kernels split on "model", and reports; the tests assert
on its report. ~30 s on 2 CPU cores.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("sharded") / "report.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "tests.sharded_averages", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_average_evaluation_and_file_equals_the_one_device_run(report):
    differences = report["one_vs_mesh"]
    kinds = {key.split("/")[0] for key in differences}
    # Weights, logs, every average and selection, swapped-in evaluations, BN-recomputed
    # results, every saved weights file and every post-hoc snapshot were compared.
    assert kinds == {"weight", "history", "ema", "swa", "power", "evaluate", "bn_summary", "file", "snapshot"}
    worst = max(differences, key=differences.get)
    assert differences[worst] < 1e-5, (worst, differences[worst])


def test_each_device_holds_its_shard_of_every_average_once_per_average(report):
    rows = report["memory"]
    assert len(rows) == 8
    for row in rows:
        # Measured from the arrays' addressable shards: the averages hold (the device's
        # shard of the averaged weights) x (number of averages), never a replica.
        assert row["ema_averages"] == 3 * row["ema_weights"]
        assert row["power_averages"] == 2 * row["power_weights"]
        assert row["swa_averages"] == row["swa_weights"]
        assert row["ema_weights"] < row["full_weights"] / 2  # the kernels are split 4 ways
        # The kept copies (selected epochs, SWA's final model, BN-recomputed selections)
        # stay on the devices, sharded like the model, none gathered to the host.
        assert row["selected_copy"] == row["swa_final"] == row["bn_selected"] == row["model_weights"]
        assert not row["selected_on_host"]


def test_averages_have_the_weights_layout_behind_an_unsharded_decay_axis(report):
    for average, weight in zip(report["average_layouts"], report["weight_layouts"]):
        assert average == [None] + weight
    assert ["model"] in report["weight_layouts"] and [None, "model"] in report["weight_layouts"]


def test_the_compiled_update_runs_shard_local(report):
    assert report["update_hlo_has_sharding"]
    assert report["collectives_in_update"] == []


def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(report):
    differences = report["resumed_vs_uninterrupted"]
    assert report["resumed_snapshots"]  # the snapshots written after the resume are compared too
    worst = max(differences, key=differences.get)
    assert differences[worst] == 0.0, (worst, differences[worst])
