"""Reliability: kill -9, Ctrl-C or SIGTERM and resume equals an uninterrupted run; bad checkpoints.

Each run is a real `python -m app.train` process on real CIFAR-10 (tiny budget,
ResNet-20, 4 steps per epoch, deterministic kernels). The SWA branch's resume,
Ctrl-C before any checkpoint and divergence: test_resume_branch.py.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")), reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)"
)
ARGS = [
    "--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR,
    "--limit-train", "128", "--batch-size", "32", "--limit-validation", "64",
    "--epochs", "3", "--ema-decays", "0.9", "0.99", "--ema-every", "2",
    "--swa", "--swa-start-epoch", "2", "--checkpoint-every-steps", "3", "--deterministic",
    "--keep-checkpoint", "--post-hoc-ema", "--post-hoc-snapshot-every-steps", "2",
]
ENV = dict({k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, PYTHONUNBUFFERED="1")


def run(out, *extra, module="app.train", env=None):
    return subprocess.run(
        [sys.executable, "-m", module, *ARGS, *extra, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(ENV, **(env or {})),
    )


def checkpoint_arrays(out, name="last.npz"):
    with np.load(os.path.join(out, "checkpoint", name)) as contents:
        arrays = {key: contents[key] for key in contents.files}
    header = json.loads(str(arrays.pop("header")))
    return arrays, header["meta"]


def scalar_steps(out, run_tag):
    run, tag = run_tag.split(":")
    events = EventAccumulator(os.path.join(out, "tensorboard", run))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    result = run(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def assert_same_run(out, uninterrupted):
    want, want_meta = checkpoint_arrays(uninterrupted)
    got, got_meta = checkpoint_arrays(out)
    assert sorted(got) == sorted(want)
    # Weights, optimizer slots, metric accumulators, every EMA/SWA average,
    # their counters and selections: bitwise.
    unequal = [key for key in want if not np.array_equal(got[key], want[key])]
    assert unequal == []
    # History rows, epoch, global step; wall-clock columns differ between any two runs.
    assert _untimed(got_meta) == _untimed(want_meta)
    assert _untimed_csv(out / "history.csv") == _untimed_csv(uninterrupted / "history.csv")
    for tag in ("sgd:val_accuracy", "ema_0.99:val_accuracy", "sgd:learning_rate"):
        steps = scalar_steps(out, tag)
        assert [step for step, _ in steps] == [1, 2, 3]  # none duplicated, none missing
        assert steps == scalar_steps(uninterrupted, tag)
    # Post-hoc EMA snapshots: the same steps, the same averages (rewritten after the resume).
    snapshots = sorted(p.name for p in (out / "power_ema").iterdir())
    assert snapshots == sorted(p.name for p in (uninterrupted / "power_ema").iterdir()) and len(snapshots) == 6
    assert_same_snapshots(out, uninterrupted, snapshots)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {
        **json.loads((uninterrupted / "summary.json").read_text()),
        "wall_time_seconds": summary["wall_time_seconds"],
        "timing": summary["timing"],
    }


def assert_same_snapshots(out, reference, names):
    """The post-hoc EMA snapshot files `names` of both runs hold the same arrays, bitwise."""
    for name in names:
        with np.load(out / "power_ema" / name) as a, np.load(reference / "power_ema" / name) as b:
            assert sorted(a.files) == sorted(b.files)
            assert all(np.array_equal(a[k], b[k]) for k in a.files)


TIMING = ("epoch_seconds", "train_images_per_second", "evaluation_seconds")


def _untimed(meta):
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in meta["rows"]]
    return {**{k: v for k, v in meta.items() if k != "wall_seconds"}, "rows": rows}


def _set_checkpoint_wall_seconds(out, seconds):
    """Rewrites the checkpoint's recorded wall time, as if the killed attempt had run `seconds`."""
    path = os.path.join(out, "checkpoint", "last.npz")
    with np.load(path) as contents:
        arrays = {key: contents[key] for key in contents.files}
    header = json.loads(str(arrays["header"]))
    assert header["meta"]["wall_seconds"] > 0  # the attempt's own, recorded at each save
    header["meta"]["wall_seconds"] = seconds
    arrays["header"] = np.array(json.dumps(header))
    np.savez(path, **arrays)


def _untimed_csv(path):
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(row["epoch_seconds"]) > 0 for row in rows)
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


MID_EPOCH = {"KILL_AT_STEP": "8"}  # in epoch 2 (steps 5-8), 2 steps after the step-6 checkpoint


@pytest.fixture(scope="module")
def killed_mid_epoch(tmp_path_factory):
    """A run SIGKILLed mid-epoch (MID_EPOCH), for the tests to copy."""
    out = tmp_path_factory.mktemp("killed") / "run"
    assert run(out, module="tests.kill_during_training", env=MID_EPOCH).returncode == -9
    return out


@pytest.mark.parametrize(
    "kill",
    [
        MID_EPOCH,
        pytest.param({"KILL_AT_EPOCH": "2"}, marks=pytest.mark.extended),  # right after the epoch-2 checkpoint
    ],
    ids=["mid-epoch", "epoch-boundary"],
)
def test_kill_and_resume_equals_the_uninterrupted_run(uninterrupted, killed_mid_epoch, tmp_path, kill):
    out = tmp_path / "run"
    if kill == MID_EPOCH:
        shutil.copytree(killed_mid_epoch, out)
    else:
        killed = run(out, module="tests.kill_during_training", env=kill)
        assert killed.returncode == -9
    assert not (out / "summary.json").exists()
    assert (out / "run.lock").exists()  # the killed writer's lock file: the OS released its lock
    if "KILL_AT_EPOCH" in kill:
        # The same kill, then a crash that truncated the newest checkpoint file.
        truncated = tmp_path / "truncated"
        shutil.copytree(out, truncated)
        last = truncated / "checkpoint" / "last.npz"
        last.write_bytes(last.read_bytes()[:1000])
    if kill == MID_EPOCH:
        _set_checkpoint_wall_seconds(out, 1000.0)
    started = time.time()
    resumed = run(out)
    attempt = time.time() - started
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    if kill == MID_EPOCH:
        assert "at epoch 2, step 3" in resumed.stdout  # the step-6 checkpoint
        attempts = [json.loads(line) for line in (out / "attempts.jsonl").read_text().splitlines()]
        assert [a["resumed_at"] for a in attempts] == [None, {"epoch": 2, "step": 3}]
        commit = json.loads((out / "config.json").read_text())["provenance"]["git_commit"]
        assert [a["git_commit"] for a in attempts] == [commit, commit]
    assert_same_run(out, uninterrupted)
    if kill == MID_EPOCH:
        # summary.json's wall time is the whole run's: the killed attempt's recorded 1000 s plus this one's.
        wall = json.loads((out / "summary.json").read_text())["wall_time_seconds"]
        assert 1000.0 < wall <= 1000.0 + attempt
    if "KILL_AT_EPOCH" in kill:
        resumed = run(truncated)  # falls back to previous.npz (step 6) and replays
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "at epoch 2, step 3" in resumed.stdout
        # ... and says so (issue 19: the fallback was silent).
        assert (f"warning: unreadable checkpoint in {truncated / 'checkpoint'} (last.npz: BadZipFile); "
                "resuming from previous.npz instead, at epoch 2, step 3") in resumed.stderr.splitlines()
        assert_same_run(truncated, uninterrupted)


def test_ctrl_c_is_one_line_exit_130_and_leaves_the_checkpoint_a_kill_resumes_from(killed_mid_epoch, tmp_path):
    out = tmp_path / "run"
    interrupted = run(out, module="tests.kill_during_training", env={"INTERRUPT_AT_STEP": "7"})
    assert interrupted.returncode == 130
    # Step 7 done, the Ctrl-C during step 8; checkpoints every 3 steps: step 7 is redone.
    assert interrupted.stderr.splitlines() == [
        f"interrupted at epoch 2 step 4; run the same command to resume from {out / 'checkpoint' / 'last.npz'}, "
        "saved after step 2 of epoch 2 (1 step to redo)"
    ]
    assert not (out / "summary.json").exists()
    # Its checkpoint is, bitwise, the step-6 checkpoint the SIGKILLed run (killed at step 8) left, and the
    # epoch-1 history is the same: resuming from it is test_kill_and_resume_equals_the_uninterrupted_run[mid-epoch]
    # (equal to the uninterrupted run), so this test does not train that resume a second time.
    got, got_meta = checkpoint_arrays(out)
    want, want_meta = checkpoint_arrays(killed_mid_epoch)
    assert sorted(got) == sorted(want)
    assert [key for key in want if not np.array_equal(got[key], want[key])] == []
    assert got_meta["global_step"] == 6 and _untimed(got_meta) == _untimed(want_meta)
    assert _untimed_csv(out / "history.csv") == _untimed_csv(killed_mid_epoch / "history.csv")
    # What the resume reads of the run directory besides: nothing the killed run did not also leave,
    # and the post-hoc snapshots both wrote (steps 2, 4, 6) hold the same arrays.
    assert _relative_files(out) <= _relative_files(killed_mid_epoch)
    snapshots = sorted(p.name for p in (out / "power_ema").iterdir())
    assert len(snapshots) == 3
    assert_same_snapshots(out, killed_mid_epoch, snapshots)


def _relative_files(out):
    return {os.path.relpath(os.path.join(folder, name), out) for folder, _, names in os.walk(out) for name in names
            if not name.startswith("events.out.tfevents")}


@pytest.mark.parametrize(
    "terminate_after, line, resumes_at",
    [
        # Noted after step 6 (a checkpoint step), acted on at step 7's end: a checkpoint there.
        (6, "terminated at epoch 2 step 4; run the same command to resume from {last}, saved after step 3 of "
            "epoch 2 (nothing to redo)", "at epoch 2, step 4"),
        # Step 8 is epoch 2's last: its checkpoint comes after the epoch's evaluation, then the stop.
        pytest.param(7, "terminated after epoch 2; run the same command to resume from {last}, saved at the end "
                        "of epoch 2 (nothing to redo)", "at epoch 3, step 1", marks=pytest.mark.extended),
    ],
    ids=["mid-epoch", "epoch-end"],
)
def test_sigterm_checkpoints_at_the_step_end_says_where_and_resumes_exactly(uninterrupted, tmp_path,
                                                                          terminate_after, line, resumes_at):
    """Issue 19: SIGTERM (Slurm, Kubernetes) exited 143 with no line and no checkpoint."""
    out = tmp_path / "run"
    terminated = run(out, module="tests.kill_during_training", env={"TERMINATE_AT_STEP": str(terminate_after)})
    assert terminated.returncode == 143
    assert terminated.stderr.splitlines() == [line.format(last=out / "checkpoint" / "last.npz")]
    _, meta = checkpoint_arrays(out)
    assert meta["global_step"] == terminate_after + 1
    assert not (out / "summary.json").exists()
    resumed = run(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumes_at in resumed.stdout
    assert_same_run(out, uninterrupted)


def test_unreadable_or_foreign_checkpoints_are_one_line_errors(uninterrupted, killed_mid_epoch, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_mid_epoch, out)
    for name in ("last.npz", "previous.npz"):
        path = out / "checkpoint" / name
        if path.exists():
            path.write_bytes(b"not a checkpoint")
    before = _file_bytes(out)
    result = run(out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: the checkpoint in {out / 'checkpoint'} is truncated or not ours"
    )
    assert _file_bytes(out) == before

    # A readable checkpoint of another model, copied in by mistake.
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    arrays, _ = checkpoint_arrays(uninterrupted)
    header = np.load(os.path.join(uninterrupted, "checkpoint", "last.npz"))["header"]
    arrays["run/model/0"] = np.zeros((1, 1, 1, 1), np.float32)
    np.savez(foreign / "checkpoint" / "last.npz", header=header, **arrays)
    (foreign / "checkpoint" / "previous.npz").unlink(missing_ok=True)
    result = run(foreign)
    assert result.returncode == 2
    assert "do not match this model; it belongs to another run" in result.stderr.strip().splitlines()[-1]


def _file_bytes(out):
    # run.lock names its last holder (this command, refused after taking it): the one file it rewrites.
    return {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != "run.lock"}
