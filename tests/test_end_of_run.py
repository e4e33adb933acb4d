"""The end of an `app.train` run as a log shows it, and the best model it writes (best.keras).

One real `python -m app.train` process on CIFAR-10 (tiny budget, ResNet-20,
two EMAs that the warm-up does not tie together, a one-epoch SWA branch),
its stdout a pipe as when redirected to a file. The checks re-derive from
summary.json what the log must say; best.keras is loaded in another fresh
process and scored on the raw validation images.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TFDS_DIR

pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")), reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)"
)
ARGS = [
    "--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR,
    "--limit-train", "256", "--limit-validation", "128", "--batch-size", "64", "--epochs", "2",
    "--ema-decays", "0.9", "0.99", "--ema-every-steps", "2", "--ema-warmup", "none",
    "--swa", "--swa-start-epoch", "2",
]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
LABELS = {"best_val_accuracy": "acc.", "lowest_val_loss": "loss"}
# Loads best.keras with plain Keras (issue 31: no import of this repository, run from another directory
# without it on the path) and scores it on the run's validation images (given as an .npz).
SCORE = """
import json, sys
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1] + "/best.keras")
split = np.load(sys.argv[2])
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
print(json.dumps(model.evaluate(split["images"], split["labels"], verbose=0, return_dict=True)))
assert not {"models", "callbacks", "training"} & set(sys.modules), "imported this repository"
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("end") / "run")
    done = subprocess.run([sys.executable, "-m", "app.train", *ARGS, "--out", out], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, json.load(open(os.path.join(out, "summary.json")))


def _saved_models(summary):
    """(label, stem, metrics) of every model with a weights file, in the table's order."""
    yield "SGD (final)", "final", summary["sgd"]["final"]
    yield "SGD (early-stopped, acc.)", "sgd_early", summary["sgd"]["early_stopped"]
    for decay, entry in summary["ema"].items():
        for key, suffix in (("best_val_accuracy", "acc"), ("lowest_val_loss", "loss")):
            label = f"EMA {decay} ({LABELS[key]})"
            yield label, f"ema_{decay}_{suffix}", entry[key]
            yield label + " + BN recomputed", f"ema_{decay}_{suffix}_bn", entry[key]["bn_recomputed"]
    yield "SWA (BN recomputed)", "swa", summary["swa"]


def test_every_phase_after_the_last_epoch_says_what_it_does_in_plain_lines(finished):
    out, log, summary = finished
    assert "\r" not in log and "\x1b" not in log and "\b" not in log
    lines = log.splitlines()
    # The seconds of start-up (TensorFlow, the data) are announced before they pass (issue 31).
    assert lines[0] == "starting: importing TensorFlow, then reading cifar10 ..."
    last_epoch = lines.index(next(line for line in lines if line.startswith("epoch 2/2 |")))
    after = lines[last_epoch + 1:lines.index(f"Summary (validation split) — run directory: {out}")]
    # One BN recompute per distinct selected model: with the warm-up off the two
    # decays differ; one decay's two criteria are one model when they chose one epoch.
    selections = []
    for decay, entry in summary["ema"].items():
        same = entry["best_val_accuracy"]["epoch"] == entry["lowest_val_loss"]["epoch"]
        selections += [f"EMA {decay} (acc. = loss)"] if same else [f"EMA {decay} (acc.)", f"EMA {decay} (loss)"]
    count = len(selections)
    expected = [re.escape(f"recomputing BatchNorm for {label} [{number}/{count}] ...")
                for number, label in enumerate(selections, 1)]
    expected += [
        rf"BatchNorm recomputed for {count} selected EMA models in \d+ s",
        re.escape(f"saving the weights of every model to {out}/weights ..."),
        r"SWA branch from epoch 1 of the baseline: .*",
        r"epoch 2/2 \| .* \| ETA 0m00s",  # the branch's one epoch
        re.escape(f"recomputing BatchNorm for the SWA average of {summary['swa']['models_averaged']} models ..."),
        re.escape(f"writing the best model to {out}/best.keras ..."),
        "",
    ]
    assert len(after) == len(expected), after
    for line, pattern in zip(after, expected):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_the_summary_collapses_identical_rows_and_names_the_best_model_and_the_next_command(finished):
    out, log, summary = finished
    table = log[log.index("Summary (validation split)"):].splitlines()
    rows = [line[:28].rstrip() for line in table[2:] if not line.startswith(("best", "  ", "next", "wall"))]
    sgd = summary["sgd"]
    expected = (["SGD (final = early-stopped)"] if sgd["early_stopped"]["epoch"] == sgd["final"]["epoch"]
                else ["SGD (final)", "SGD (early-stopped)"])
    for decay, entry in summary["ema"].items():
        if entry["best_val_accuracy"]["epoch"] == entry["lowest_val_loss"]["epoch"]:
            expected.append(f"EMA {decay} (acc. = loss)")
        else:
            expected += [f"EMA {decay} (acc.)", f"EMA {decay} (loss)"]
    expected.append("SWA (BN recomputed)")
    assert rows == expected
    # The best: highest validation accuracy, then lowest loss, then the table's order.
    label, stem, metrics = min(_saved_models(summary), key=lambda m: (-m[2]["val_accuracy"], m[2]["val_loss"]))
    assert summary["best"]["name"] == stem and summary["best"]["val_accuracy"] == metrics["val_accuracy"]
    assert (f"best on the validation split (highest accuracy): {label}, {metrics['val_accuracy']:.4f}"
            in table)
    assert f"  weights: {out}/weights/{stem}.weights.h5" in table
    assert f"  whole Keras model (raw pixels in, logits out): {out}/best.keras" in table
    assert f"next: python -m app.evaluate {out}   (test accuracy, NLL and ECE of every saved model)" in table


def test_best_keras_loads_in_a_fresh_process_and_scores_its_table_value(finished):
    from data import loading
    from training import run_dir

    out, _, summary = finished
    arrays = loading.load_arrays(run_dir.load_config(out))
    elsewhere = os.path.join(os.path.dirname(out), "elsewhere")
    os.makedirs(elsewhere, exist_ok=True)
    split = os.path.join(elsewhere, "validation.npz")
    np.savez(split, images=arrays.validation_images, labels=arrays.validation_labels)
    env = {key: value for key, value in ENV.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SCORE, out, split], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads(done.stdout.strip().splitlines()[-1])
    # Raw pixels through the model's own normalization vs the run's tf.data normalization: float
    # rounding may move a borderline image at most.
    assert scored["accuracy"] == pytest.approx(summary["best"]["val_accuracy"], abs=1 / 128 + 1e-9)
    assert scored["loss"] == pytest.approx(summary["best"]["val_loss"], rel=1e-4)


def test_an_ema_kept_at_the_final_epoch_is_labelled_final_not_by_a_criterion(capsys):
    from app import train_report
    from training import run_dir

    final = {"epoch": 3, "val_accuracy": 0.75, "val_loss": 0.8, "selected_on": run_dir.FINAL_EPOCH_SELECTION}
    best = {"epoch": 2, "val_accuracy": 0.7, "val_loss": 0.9, "selected_on": "validation"}
    summary = {
        "evaluation_split": "validation",
        "sgd": {"final": {"epoch": 3, "val_accuracy": 0.6, "val_loss": 1.1},
                "best_val_accuracy": {"epoch": 3, "val_accuracy": 0.6, "val_loss": 1.1}},
        "ema": {"0.99": {"identical_to": [], "best_val_accuracy": final, "lowest_val_loss": final},
                "0.9": {"identical_to": [], "best_val_accuracy": best, "lowest_val_loss": best}},
        "wall_time_seconds": 1.0,
    }
    train_report.summary_table(summary, "runs/x")
    rows = [line[:28].rstrip() for line in capsys.readouterr().out.splitlines()]
    # --ema-select final (summary.json's selected_on) vs a run that selected by both criteria.
    assert "EMA 0.99 (final)" in rows and "EMA 0.9 (acc. = loss)" in rows


@pytest.mark.parametrize("selected_on, label, note", [
    ("validation", "SGD (early-stopped)", None),
    ("validation (run runs/val)", "SGD (early-stopped)", "  epoch chosen on the validation split of runs/val"),
    ("test", "SGD (best test acc.)", None),  # a --full-train run without --stop-epochs-from says so
])
def test_sgds_early_stopped_row_is_the_saved_model_and_says_what_chose_it(capsys, selected_on, label, note):
    from app import train_report

    early = {"epoch": 2, "val_accuracy": 0.7, "val_loss": 1234.56789, "selected_on": selected_on,
             "weights": "weights/sgd_early.weights.h5"}
    final = {"epoch": 3, "val_accuracy": 0.6, "val_loss": 1.1}
    summary = {"evaluation_split": "test" if selected_on != "validation" else "validation",
               "sgd": {"final": final, "best_val_accuracy": {**early, "epoch": 1}, "early_stopped": early},
               "wall_time_seconds": 1.0}
    train_report.summary_table(summary, "runs/x")
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(label))
    # The saved model's epoch (2), not the best epoch of the split shown (1); a 4-digit loss stays apart.
    assert row.split() == label.split() + ["2", "0.7000", "1234.5679"]
    assert (lines[lines.index(row) + 1] == note) if note else not lines[lines.index(row) + 1].startswith("  epoch")
