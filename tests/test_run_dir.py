"""Run-directory checks: a different run is never overwritten."""

import json
import os

import pytest

from app import run_dir
from app.config import TrainConfig
from app.errors import UsageError


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
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    if os.access(readonly, os.W_OK):  # root: the probe itself is what we test above
        return
    with pytest.raises(UsageError, match="cannot write in"):
        run_dir.check(str(readonly / "run"), TrainConfig())
