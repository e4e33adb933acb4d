"""app.tune_swa (docs/analysis-plan.md, Comparators: the SWA lr tuned on validation) against app.train's own branch.

A tuning branch at lr x must be the very branch `app.train --swa --swa-lr x`
trains: same branch point, schedule, captures and BatchNorm recompute. So a
second run trained with --swa-lr 0.01 is the independent computation of the
0.01 trial; the run's own 0.05 branch is reused, not retrained.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from app import cli, tune_swa
from tests.test_resume import ENV, ROOT, TFDS_DIR, pytestmark  # noqa: F401 (pytestmark: needs the prepared cifar10)

BASE = ["--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR, "--limit-train", "96",
        "--batch-size", "32", "--limit-validation", "64", "--epochs", "3", "--ema-decays", "0.9"]
ARGS = [*BASE, "--swa", "--swa-start-epoch", "2", "--deterministic"]


def _train(out, *extra):
    done = subprocess.run([sys.executable, "-m", "app.train", *ARGS, *extra, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]


def _weights(path):
    import h5py

    arrays = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.append((name, item[()])) if hasattr(item, "shape") else None)
    return arrays


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_swa")
    _train(root / "val", "--swa-lr", "0.05", "--keep-checkpoint")
    _train(root / "at-0.01", "--swa-lr", "0.01")
    return root


def test_each_trial_is_the_branch_app_train_trains_and_the_best_is_chosen(runs, capsys):
    run = runs / "val"
    result = tune_swa.main([str(run), "--swa-lr", "0.01", "0.05"])
    trials = {trial["swa_lr"]: trial for trial in result["trials"]}
    # The run's own budget-long branch serves lr 0.05; 0.01 is trained from the kept branch point.
    assert trials[0.05]["reused"] and not (run / "swa-tuning" / "lr-0.05").exists()
    own = json.loads((run / "summary.json").read_text())["swa"]
    assert trials[0.05]["val_accuracy"] == own["val_accuracy"]
    reference = json.loads((runs / "at-0.01" / "summary.json").read_text())["swa"]
    assert trials[0.01]["val_accuracy"] == pytest.approx(reference["val_accuracy"], abs=1e-6)
    assert trials[0.01]["models_averaged"] == reference["models_averaged"] == 3  # the start + epochs 2, 3
    got = _weights(run / "swa-tuning" / "lr-0.01" / "weights" / "swa.weights.h5")
    want = _weights(runs / "at-0.01" / "weights" / "swa.weights.h5")
    assert [name for name, _ in got] == [name for name, _ in want]
    assert max(float(np.max(np.abs(a - b))) for (_, a), (_, b) in zip(got, want)) < 1e-5
    # The run's own files are untouched: its weights are still the 0.05 average.
    assert os.path.exists(run / "weights" / "swa.weights.h5")
    best = max(result["trials"], key=lambda trial: trial["val_accuracy"])["swa_lr"]
    written = json.loads((run / "swa-tuning" / "best_swa_lr.json").read_text())
    assert written["swa_lr"] == result["swa_lr"] == best
    assert written["provenance"]["git_commit"] and not (run / "swa-tuning" / "lr-0.01" / "checkpoint").exists()
    assert f"chosen: SWA lr {best:g}" in capsys.readouterr().out
    # A rerun reads the finished trials (nothing trains) and gives the same choice.
    assert tune_swa.main([str(run), "--swa-lr", "0.01", "0.05"])["trials"] == result["trials"]
    # app.train takes the choice.
    config = cli.parse_config([*ARGS, "--swa-lr-from", str(run)])
    assert config.swa_lr == best


def test_refusals_are_one_line(runs, tmp_path, capsys):
    no_point = tmp_path / "no-branch-point"
    shutil.copytree(runs / "at-0.01", no_point)  # trained without --keep-checkpoint
    cases = [
        ([str(no_point)], "kept no SWA branch point"),
        ([str(tmp_path / "missing")], "is not a finished run"),
        ([str(runs / "val"), "--swa-lr", "0.01", "-1"], "--swa-lr must be > 0"),
    ]
    for argv, words in cases:
        with pytest.raises(SystemExit) as exit:
            tune_swa.main(argv)
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and words in err
    for argv, words in ((["--swa-lr", "0.05", "--swa-lr-from", str(runs / "val")], "not both"),
                        (["--swa-lr-from", str(tmp_path)], "run python -m app.tune_swa")):
        with pytest.raises(Exception, match=words):
            cli.parse_config([*ARGS, *argv])
    with pytest.raises(Exception, match="add --swa"):
        cli.parse_config([*BASE, "--swa-lr-from", str(runs / "val")])
