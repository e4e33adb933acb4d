"""Run-directory checks: a different run is never overwritten."""

import json
import os

import pytest

from training import run_dir
from training.config import TrainConfig
from utils.errors import UsageError


def test_create_writes_config_and_command(tmp_path):
    path = str(tmp_path / "run")
    config = TrainConfig(lr=0.05, out=path)
    run_dir.check(path, config)
    run_dir.create(path, config, ["--lr", "0.05", "--out", path], extra={"evaluation_split": "validation"})
    saved = json.load(open(os.path.join(path, "config.json")))
    assert saved["lr"] == 0.05 and saved["evaluation_split"] == "validation"
    assert run_dir.load_config(path) == config
    assert open(os.path.join(path, "command.txt")).read() == f"python -m app.train --lr 0.05 --out {path}\n"


def test_a_different_run_is_refused_and_left_untouched(tmp_path):
    path = str(tmp_path / "run")
    run_dir.create(path, TrainConfig(lr=0.05), ["--lr", "0.05"])
    before = open(os.path.join(path, "config.json")).read()
    with pytest.raises(UsageError, match=r"holds a different run \(differs in: lr\); choose another --out"):
        run_dir.check(path, TrainConfig(lr=0.1))
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
    with pytest.raises(UsageError, match=r"--out /proc/weight-averaging-run: cannot write in /proc"):
        run_dir.check("/proc/weight-averaging-run", TrainConfig())
    # A place under a regular file cannot be created by anyone, root included.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write in"):
        run_dir.check(str(blocker / "run"), TrainConfig())
    assert blocker.read_text() == "" and sorted(os.listdir(tmp_path)) == ["a-file"]
