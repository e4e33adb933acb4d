"""`python -m app.posthoc`: bad input in one line (exit 2), and a real run end to end.

The error cases need no data: a run directory with config.json and snapshot
files written with NumPy. The end-to-end case trains ResNet-20 on 256 CIFAR-10
images with `--post-hoc-ema`, rebuilds, and checks the numbers against a
second path: the power-function EMA of a tracked σ_rel at the last epoch is
the last snapshot itself, so with `--bn average` its validation accuracy must
equal that of a model loaded straight from the snapshot file.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from callbacks import power_snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def posthoc(*argv):
    return subprocess.run([sys.executable, "-m", "app.posthoc", *argv], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def _fake_run(path, snapshot_steps=(10, 20, 30, 40), every_steps=1):
    """config.json (10 steps per epoch, 4 epochs) and snapshots of two power-function EMAs."""
    os.makedirs(path)
    config = {"dataset": "cifar10", "model": "resnet20", "limit_train": 320, "batch_size": 32, "epochs": 4,
              "ema_decays": [0.9], "ema_every_steps": every_steps, "ema_warmup": "steps"}
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(config, handle)
    for step in snapshot_steps:
        power_snapshots.write_snapshot(os.path.join(path, "power_ema"), step, (0.05, 0.1), (16.97, 6.94), [0],
                                       ["dense/kernel"], [[np.zeros(3)], [np.ones(3)]])
    return str(path)


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (lambda p: os.makedirs(p), ["--epochs", "1"],
         "is not a run directory (no config.json); pass one written by python -m app.train"),
        (lambda p: _fake_run(p, snapshot_steps=()), ["--epochs", "1"],
         "has no post-hoc EMA snapshots (power_ema/); train it with python -m app.train --post-hoc-ema"),
        (_fake_run, ["--epochs", "5"], "--epochs 5: the run's snapshots end at step 40 (epoch 4); use epochs in 1..4"),
        (_fake_run, ["--decays", "0.5", "--epochs", "4"],
         "EMA 0.5 at epoch 4: the snapshots represent its profile only to a relative least-squares residual of"),
        (_fake_run, ["--decays", "1.5", "--epochs", "4"], "--decays 1.5: expected"),
        (_fake_run, ["--sigma-rels", "0.4", "--decays", "--epochs", "4"], "--sigma-rels 0.4: expected values in (0, 0.2887)"),
        (_fake_run, ["--bn", "tracked", "--epochs", "4"], "unknown --bn mode 'tracked'"),
        (_fake_run, ["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    ],
    ids=["not-a-run", "no-snapshots", "epoch-beyond", "residual", "bad-decay", "bad-sigma", "bad-bn", "epoch-0"],
)
def test_bad_input_is_one_line_with_exit_status_2(tmp_path, setup, argv, message):
    run = str(tmp_path / "run")
    setup(run)
    before = sorted(os.listdir(run))
    result = posthoc(run, *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ")
    assert sorted(os.listdir(run)) == before  # nothing written


def test_the_residual_refusal_names_the_worst_target_and_the_fixes(tmp_path):
    run = _fake_run(str(tmp_path / "run"))
    result = posthoc(run, "--decays", "0.5", "0.99", "--epochs", "2", "4")
    assert result.returncode == 2
    assert "(> --max-residual 0.05;" in result.stderr and "--post-hoc-snapshot-every-steps" in result.stderr


@pytest.mark.skipif(not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")),
                    reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
def test_a_real_run_is_rebuilt_and_evaluated(tmp_path):
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "app.train", "--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR,
         "--limit-train", "256", "--limit-validation", "96", "--batch-size", "32", "--epochs", "3",
         "--ema-decays", "0.9", "--ema-every-steps", "1", "--post-hoc-ema", "--post-hoc-snapshot-every-steps", "2",
         "--out", str(run)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "post-hoc EMA: power-function EMAs sigma_rel 0.05, 0.1, a float32 snapshot every 2 steps: 12 snapshots" \
        in train.stdout
    assert len(power_snapshots.list_snapshots(str(run / "power_ema"))) == 12
    result = posthoc(str(run), "--sigma-rels", "0.05", "--epochs", "2", "3", "--bn", "average")
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "posthoc"
    assert sorted(os.listdir(out)) == ["best.weights.h5", "heatmap.png", "posthoc.csv", "posthoc.json", "posthoc.md"]
    report = json.loads((out / "posthoc.json").read_text())
    rows = {(row["profile"], row["value"], row["epoch"]): row for row in report["targets"]}
    assert set(rows) == {("ema", 0.9, 2), ("ema", 0.9, 3), ("power", 0.05, 2), ("power", 0.05, 3)}
    assert all(row["profile_residual"] < 0.05 for row in rows.values())
    last = rows[("power", 0.05, 3)]
    assert last["profile_residual"] < 1e-6 and last["step"] == 24
    # Second path: the model straight from the last snapshot file (NumPy), evaluated by Keras.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from data import loading
    from evaluation import predictions
    from training import run_dir

    config = run_dir.load_config(str(run))
    data = loading.load_data(config)
    model = predictions.build_model(config, data.num_classes, data.image_size)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    with np.load(run / "power_ema" / "power_ema-000000024.npz") as snapshot:
        weights = model.get_weights()
        for i, index in enumerate(snapshot["weight_indices"]):
            weights[index] = snapshot[f"average/0/{i}"]
    model.set_weights(weights)
    metrics = model.evaluate(data.validation, verbose=0, return_dict=True)
    assert metrics["accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    # The best target's weights were saved: they score what the table says.
    model.load_weights(out / "best.weights.h5")
    best = model.evaluate(data.validation, verbose=0, return_dict=True)
    assert best["accuracy"] == pytest.approx(report["best"]["val_accuracy"], abs=1e-6)
    assert report["best"]["val_accuracy"] == max(row["val_accuracy"] for row in rows.values())
    # The run tracked EMA 0.9: compared with its reconstruction at the selected epoch.
    (comparison,) = report["tracked_vs_rebuilt"]
    assert comparison["decay"] == 0.9 and comparison["profile_residual"] < 0.05
    assert comparison["relative_weight_distance"] < 0.05
    assert "| EMA 0.9 |" in (out / "posthoc.md").read_text()
