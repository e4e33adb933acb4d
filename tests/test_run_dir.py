"""Run-directory checks: a different run is never overwritten, nor written by two processes at once."""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from app.errors import flag_words
from training import run_dir
from training.config import TrainConfig
from utils.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
# Another process that holds a run directory's lock until it is killed: through run_dir, or with
# flock(2) alone on an empty run.lock (what any writer does, whatever it writes in the file).
HOLD_LOCK = ("import sys, time\nfrom training import run_dir\n"
             "with run_dir.locked([sys.argv[1]]):\n    print('held', flush=True)\n    time.sleep(300)\n")
HOLD_FLOCK = ("import fcntl, os, sys, time\nos.makedirs(sys.argv[1], exist_ok=True)\n"
              "handle = open(os.path.join(sys.argv[1], 'run.lock'), 'w')\n"
              "fcntl.flock(handle, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(300)\n")


def _holding(path, code=HOLD_LOCK):
    holder = subprocess.Popen([sys.executable, "-c", code, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_create_writes_config_and_command(tmp_path):
    path = str(tmp_path / "run")
    config = TrainConfig(lr=0.05, out=path)
    run_dir.check(path, config)
    run_dir.create(path, config, ["--lr", "0.05", "--out", path], extra={"evaluation_split": "validation"})
    saved = json.load(open(os.path.join(path, "config.json")))
    assert saved["lr"] == 0.05 and saved["evaluation_split"] == "validation"
    assert run_dir.load_config(path) == config
    assert open(os.path.join(path, "command.txt")).read() == f"python -m app.train --lr 0.05 --out {path}\n"


def test_attempts_list_each_start_and_the_commit_it_ran(tmp_path):
    """attempts.jsonl: a fresh start begins it, each resume appends; a run made before the file existed
    gets its first attempt from config.json at its first resume, marked as such."""
    path = str(tmp_path / "run")
    first, later = {"git_commit": "a" * 40, "git_dirty": False}, {"git_commit": "b" * 40, "git_dirty": True}
    run_dir.create(path, TrainConfig(lr=0.05), ["--lr", "0.05"], extra={"provenance": first})
    assert run_dir.read_attempts(path) is None  # as a run made before the file existed
    run_dir.record_attempt(path, later, resumed_at={"epoch": 4, "step": 2})
    attempts = run_dir.read_attempts(path)
    assert [(a["git_commit"], a["git_dirty"], a["resumed_at"]) for a in attempts] == [
        ("a" * 40, False, None), ("b" * 40, True, {"epoch": 4, "step": 2})]
    assert attempts[0]["started"] is None and "not listed" in attempts[0]["note"] and attempts[1]["started"]
    run_dir.record_attempt(path, first, resumed_at={"epoch": 9, "step": 1})
    assert [a["resumed_at"] for a in run_dir.read_attempts(path)] == [None, {"epoch": 4, "step": 2},
                                                                       {"epoch": 9, "step": 1}]
    run_dir.record_attempt(path, later)  # a fresh start (no checkpoint) replaces the list
    assert [(a["git_commit"], a["resumed_at"]) for a in run_dir.read_attempts(path)] == [("b" * 40, None)]


def test_a_different_run_is_refused_and_left_untouched(tmp_path):
    path = str(tmp_path / "run")
    run_dir.create(path, TrainConfig(lr=0.05), ["--lr", "0.05"])
    before = open(os.path.join(path, "config.json")).read()
    with pytest.raises(UsageError) as error:
        run_dir.check(path, TrainConfig(lr=0.1))
    assert re.search(r"holds a different run \(differs in: lr\); choose another --out$", flag_words(error.value))
    assert open(os.path.join(path, "config.json")).read() == before


def test_settings_that_change_no_weight_may_differ_on_resume(tmp_path):
    path = str(tmp_path / "run")
    saved = TrainConfig(eval_batch_size=128, checkpoint_every_steps=10, data_dir="/old")
    run_dir.create(path, saved, [])
    run_dir.check(path, TrainConfig(eval_batch_size=512, checkpoint_every_steps=20, data_dir="/new"))
    with pytest.raises(UsageError, match=r"differs in: batch_size, seed\)"):
        run_dir.check(path, TrainConfig(eval_batch_size=128, batch_size=64, seed=3))


def test_a_run_written_before_a_field_was_renamed_resumes(tmp_path):
    path = str(tmp_path / "run")
    run_dir.create(path, TrainConfig(ema_bn_mode="copy"), [])
    config_path = os.path.join(path, "config.json")
    saved = json.load(open(config_path))
    saved["ema_bn"] = saved.pop("ema_bn_mode")  # as older runs wrote it
    json.dump(saved, open(config_path, "w"))
    run_dir.check(path, TrainConfig(ema_bn_mode="copy"))
    assert run_dir.load_config(path).ema_bn_mode == "copy"
    with pytest.raises(UsageError, match=r"differs in: ema_bn_mode\)"):
        run_dir.check(path, TrainConfig(ema_bn_mode="eman"))


def test_fields_newer_than_a_saved_run_take_their_defaults_there(tmp_path):
    path = str(tmp_path / "run")
    run_dir.create(path, TrainConfig(devices=1), [])
    config_path = os.path.join(path, "config.json")
    saved = json.load(open(config_path))
    for newer in ("devices", "sync_batch_norm"):
        del saved[newer]  # as runs written before these fields existed
    json.dump(saved, open(config_path, "w"))
    run_dir.check(path, TrainConfig(devices=1))
    run_dir.check(path, TrainConfig(devices=None))  # not resolved yet: not compared
    with pytest.raises(UsageError, match=r"differs in: devices, sync_batch_norm\)"):
        run_dir.check(path, TrainConfig(devices=2, sync_batch_norm=True))


def test_a_finished_run_is_refused(tmp_path):
    path = str(tmp_path / "run")
    run_dir.create(path, TrainConfig(), [])
    run_dir.write_summary(path, {"epochs_completed": 1})
    with pytest.raises(UsageError, match="finished run"):
        run_dir.check(path, TrainConfig())


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(UsageError, match="not a run directory"):
        run_dir.check(str(tmp_path), TrainConfig())
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_an_unwritable_place_is_refused_before_anything_is_written(tmp_path):
    # /proc refuses new folders even to root, for whom permission bits never do.
    with pytest.raises(UsageError) as error:
        run_dir.check("/proc/weight-averaging-run", TrainConfig())
    assert flag_words(error.value).startswith("--out /proc/weight-averaging-run: cannot write in /proc")
    # A place under a regular file cannot be created by anyone, root included.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write in"):
        run_dir.check(str(blocker / "run"), TrainConfig())
    assert blocker.read_text() == "" and sorted(os.listdir(tmp_path)) == ["a-file"]


def test_a_second_writer_is_refused_and_a_killed_one_blocks_nothing(tmp_path):
    path = str(tmp_path / "run")
    holder = _holding(path)
    try:
        with pytest.raises(UsageError) as error:
            with run_dir.locked([path]):
                pass
        assert flag_words(error.value) == (f"--out {path} is being written by app.train pid {holder.pid} on "
                                           f"{socket.gethostname()} (it holds run.lock); wait for it to end, "
                                           "or choose another --out")
    finally:
        holder.kill()  # SIGKILL: the holder cleans nothing up
        holder.wait()
    with run_dir.locked([path]):
        # Held by this process now; a second open of the same file is another writer, refused too.
        with pytest.raises(UsageError, match=f"being written by app.train pid {os.getpid()} "):
            with run_dir.locked([path]):
                pass
    with run_dir.locked([path]):  # released when the block ends
        pass
    # A start that ended after taking the lock, before writing the run, left a directory that is still fresh.
    assert os.listdir(path) == [run_dir.LOCK_FILE]
    run_dir.check(path, TrainConfig())


def test_a_start_that_fails_before_writing_leaves_no_directory_it_created(tmp_path):
    new = tmp_path / "new" / "run"
    with pytest.raises(UsageError, match="a limit above the split"):
        with run_dir.locked([str(new)]):
            assert os.listdir(new) == [run_dir.LOCK_FILE]
            raise UsageError("a limit above the split")
    assert not new.exists() and (tmp_path / "new").is_dir()
    # A directory the user made is theirs: kept (with the lock file, which check() accepts).
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(UsageError):
        with run_dir.locked([str(mine)]):
            raise UsageError("a limit above the split")
    assert os.listdir(mine) == [run_dir.LOCK_FILE]
    run_dir.check(str(mine), TrainConfig())
    # A directory the run wrote into stays, whatever ended the block.
    with pytest.raises(KeyboardInterrupt):
        with run_dir.locked([str(new)]):
            (new / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert sorted(os.listdir(new)) == ["config.json", run_dir.LOCK_FILE]


def test_app_train_refuses_an_out_another_process_is_writing(tmp_path):
    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
    from app import cli

    path = str(tmp_path / "run")
    argv = ["--data-dir", TFDS_DIR, "--limit-train", "64", "--limit-validation", "64", "--epochs", "1",
            "--model", "resnet20", "--out", path]
    # The first writer's run, not finished: before issue 19 a second command "resumed" it too (exit 0).
    run_dir.create(path, dataclasses.replace(cli.parse_config(argv), devices=1), argv)
    holder = _holding(path, HOLD_FLOCK)
    before = sorted(os.listdir(path))
    try:
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        result = subprocess.run([sys.executable, "-m", "app.train", *argv], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert result.stderr.splitlines() == [
        f"error: --out {path} is being written by another process (it holds run.lock); "
        "wait for it to end, or choose another --out"]
    assert result.returncode == 2 and result.stdout == ""  # found before TensorFlow's import, nothing printed
    assert sorted(os.listdir(path)) == before == ["command.txt", "config.json", "run.lock", "weights"]
    # Process k of a run of several processes asks about its own copy (run_dir.process_path), not the chief's.
    copy = os.path.join(path, run_dir.PROCESS_DIR.format(1))
    holder = _holding(copy, HOLD_FLOCK)
    try:
        result = subprocess.run([sys.executable, "-m", "app.train", *argv], cwd=ROOT, capture_output=True, text=True,
                                env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": "1"}, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert result.stderr.splitlines() == [f"error: --out {copy} is being written by another process (it holds "
                                          "run.lock); wait for it to end, or choose another --out"]


def test_a_seed_run_is_not_another_run_because_its_batch_differs(tmp_path):
    path = str(tmp_path / "seed-1")
    config = TrainConfig(seed=1, seeds=(1, 2), out=path)
    run_dir.create(path, config, ["--seeds", "1", "2"])
    run_dir.check(path, dataclasses.replace(config, seeds=(1,)))  # resumes
    with pytest.raises(UsageError, match="differs in: seed"):
        run_dir.check(path, dataclasses.replace(config, seed=2))
