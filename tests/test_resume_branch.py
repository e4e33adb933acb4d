"""Reliability, continued from test_resume.py: a cyclic SWA branch killed mid-cycle resumes exactly;
Ctrl-C before the first checkpoint; divergence stops before any average or checkpoint sees it.

Each run is a real `python -m app.train` process on real CIFAR-10 (test_resume.py's
tiny budget). Apart from test_resume.py so that the suite's workers share the two.
"""

import json

import numpy as np
import pytest

from tests import test_resume
from tests.test_resume import _untimed, _untimed_csv, checkpoint_arrays, run

pytestmark = test_resume.pytestmark  # needs the prepared cifar10


@pytest.mark.extended  # CI resumes SWA in tests/test_swa.py and app.train in tests/test_resume.py
def test_a_cyclic_swa_branch_past_the_budget_killed_mid_cycle_resumes_exactly(tmp_path):
    """--swa-cycle-epochs 2 --swa-lr 0.02 --swa-epochs 4: two cycles over epochs 2-5 (steps
    5-20) of a 3-epoch budget; killed at step 14, in epoch 4, past the budget."""
    cyclic = ["--swa-cycle-epochs", "2", "--swa-lr", "0.02", "--swa-epochs", "4"]
    whole, out = tmp_path / "whole", tmp_path / "run"
    assert run(whole, *cyclic).returncode == 0
    killed = run(out, *cyclic, module="tests.kill_during_training", env={"KILL_IN_SWA_AT_STEP": "14"})
    assert killed.returncode == -9
    # Killed in the branch's epoch 4, after its epoch-3 checkpoint: mid-cycle.
    _, at_kill = checkpoint_arrays(out / "swa")
    assert at_kill["epoch"] == 3 and not (out / "summary.json").exists()
    resumed = run(out, *cyclic)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "3 models averaged, the starting point included; branch epochs 2-5" in resumed.stdout
    branch_want, branch_meta_want = checkpoint_arrays(whole / "swa")
    branch_got, branch_meta_got = checkpoint_arrays(out / "swa")
    assert [key for key in branch_want if not np.array_equal(branch_got[key], branch_want[key])] == []
    assert _untimed(branch_meta_got) == _untimed(branch_meta_want)
    assert _untimed_csv(out / "swa" / "history.csv") == _untimed_csv(whole / "swa" / "history.csv")
    assert [row["epoch"] for row in branch_meta_got["rows"]] == [2, 3, 4, 5]
    got, want = (json.loads((path / "summary.json").read_text())["swa"] for path in (out, whole))
    # The branch's starting point and the ends of its two cycles (epochs 3 and 5).
    assert got == want and got["models_averaged"] == 3 and got["cycle_epochs"] == 2
    assert got["start_included"] and (got["branch"]["epochs"], got["branch"]["last_epoch"]) == (4, 5)
    # The average at the budget's end (epoch 3: the start and the first cycle), saved on the way.
    assert got["budget"] == {"epoch": 3, "models_averaged": 2, "weights": "swa_budget"}
    for name in ("swa_budget.weights.h5", "swa.weights.h5"):
        assert (out / "weights" / name).read_bytes() == (whole / "weights" / name).read_bytes()


def test_ctrl_c_before_the_first_checkpoint_says_the_run_starts_over(tmp_path):
    """Issue 19: in epoch 1 the line promised a checkpoint that did not exist."""
    out = tmp_path / "run"
    interrupted = run(out, module="tests.kill_during_training", env={"INTERRUPT_AT_STEP": "2"})
    assert interrupted.returncode == 130
    assert interrupted.stderr.splitlines() == [
        "interrupted at epoch 1 step 3; no checkpoint was saved yet: run the same command to start the run over"]
    assert not (out / "checkpoint").exists()  # the same command finds none: it starts over


@pytest.mark.parametrize("how", ["absurd-lr", "nan-batch"])
def test_divergence_stops_before_any_average_or_checkpoint_sees_it(tmp_path, how):
    out = tmp_path / "run"
    if how == "absurd-lr":
        result = run(out, "--lr", "1e30")
    else:
        result = run(out, module="tests.kill_during_training", env={"NAN_AT_STEP": "6"})
    assert result.returncode == 1, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: training diverged at epoch")
    assert "lower --lr" in last_line and "Traceback" not in result.stderr
    assert not (out / "summary.json").exists()
    kept = [name for name in ("last.npz", "previous.npz") if (out / "checkpoint" / name).exists()]
    # An lr of 1e30 diverges at the first step, before any checkpoint; the NaN batch in epoch 2.
    assert (len(kept) > 0) == (how == "nan-batch"), kept
    for name in kept:
        arrays, _ = checkpoint_arrays(out, name)
        assert all(np.isfinite(value).all() for value in arrays.values() if value.dtype.kind == "f")
    if how == "nan-batch":
        # Step 6 is in epoch 2: epoch 1's checkpoint and history survive.
        _, meta = checkpoint_arrays(out)
        assert meta["epoch"] >= 1 and len(meta["rows"]) == 1
