"""experiments/park_runs.py: what an unfinished reproduction needs to resume goes into git, nothing else."""

import os
import shutil
import subprocess
import sys

from app.reproduce_plan import Step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import park_runs  # noqa: E402


def _write(root, path, text="x"):
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    with open(os.path.join(root, path), "w", encoding="utf-8") as handle:
        handle.write(text)


def _git(root, *argv):
    return subprocess.run(["git", *argv], cwd=root, check=True, capture_output=True, text=True).stdout.split()


def test_parks_what_unfinished_steps_resume_from_and_unparks_the_rest(tmp_path):
    root = str(tmp_path)
    _git(root, "init", "-q")
    shutil.copy(os.path.join(ROOT, ".gitignore"), root)  # the repository's own rules decide what is ignored
    out = "reproductions/small"
    running, evaluating, finished, branch = (f"{out}/final/seed-1", f"{out}/final/seed-0", f"{out}/adda/seed-0",
                                             f"{out}/protocol/validation")
    resume = ["checkpoint/last.npz", "weights/ema_0.99_acc.weights.h5", "swa/checkpoint/last.npz"]
    skipped = ["checkpoint/previous.npz", "best.keras", "run.lock", "train.log", "weights/.partial-swa.weights.h5",
               "tensorboard/sgd/events.out.tfevents.1.vm"]
    for run in (running, evaluating, finished, branch):
        for path in ["config.json", *resume, *skipped]:
            _write(root, f"{run}/{path}")
    _write(root, f"{branch}/checkpoint/swa-branch.npz")
    _write(root, f"{branch}/swa-tuning/lr-0.01/checkpoint/last.npz")
    for run in (evaluating, finished, branch):
        _write(root, f"{run}/summary.json")
    _write(root, f"{finished}/evaluation.json")
    # Parked and committed by an earlier session; its run has finished and been evaluated since, and a
    # finished run deletes its checkpoint.
    _write(root, f"{finished}/checkpoint/gone.npz")
    _git(root, "add", "-f", f"{finished}/checkpoint/last.npz", f"{finished}/checkpoint/gone.npz")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "parked")
    os.remove(os.path.join(root, finished, "checkpoint", "gone.npz"))
    steps = [
        Step("train", (), (f"{root}/{running}/summary.json",)),
        Step("train", (), (f"{root}/{evaluating}/summary.json",)),  # done
        Step("evaluate", (f"{root}/{evaluating}",), (f"{root}/{evaluating}/evaluation.json",)),
        Step("evaluate", (f"{root}/{finished}",), (f"{root}/{finished}/evaluation.json",)),  # done
        Step("tune_swa", (f"{root}/{branch}",), (f"{root}/{branch}/swa-tuning/best_swa_lr.json",)),
        Step("consistency", (f"{root}/{out}/final",), (f"{root}/{out}/final/consistency.json",)),
    ]
    needed = park_runs.needed_directories(steps)  # absolute paths, as `--out /abs/path` gives
    assert needed == {f"{root}/{running}": None, f"{root}/{evaluating}": {"weights"},
                      f"{root}/{branch}": {"checkpoint/swa-branch.npz", "swa-tuning"}}

    parked, unparked = park_runs.park(f"{root}/{out}", needed, root=root)

    expected = sorted([f"{running}/{path}" for path in resume] + [f"{evaluating}/weights/ema_0.99_acc.weights.h5",
                       f"{branch}/checkpoint/swa-branch.npz", f"{branch}/swa-tuning/lr-0.01/checkpoint/last.npz"])
    assert parked == expected
    assert unparked == [f"{finished}/checkpoint/gone.npz", f"{finished}/checkpoint/last.npz"]
    staged = _git(root, "diff", "--cached", "--name-status", "--no-renames")
    staged = dict(zip(staged[1::2], staged[0::2]))
    not_ignored = {f"{run}/config.json" for run in (running, evaluating, finished, branch)} | {
        f"{run}/summary.json" for run in (evaluating, finished, branch)} | {f"{finished}/evaluation.json"}
    assert staged == {**{path: "A" for path in [*expected, *not_ignored]},
                      **{path: "D" for path in unparked}}  # out of the index; the one still there stays on disk
    assert os.path.exists(os.path.join(root, finished, "checkpoint", "last.npz"))
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "parked again")
    assert _git(root, "status", "--porcelain", "--", out) == []  # the unparked file is ignored again
