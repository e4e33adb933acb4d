"""Provenance's git dirtiness: code changes count, changes to committed results do not."""

import os
import subprocess

from training import provenance


def _git(root, *argv):
    subprocess.run(["git", *argv], cwd=root, check=True, capture_output=True)


def _repository(root):
    os.makedirs(os.path.join(root, "training"))
    os.makedirs(os.path.join(root, "reproductions", "small"))
    for path in ("training/trainer.py", "reproductions/small/summary.json"):
        with open(os.path.join(root, path), "w") as handle:
            handle.write("1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")


def test_deleting_or_changing_committed_results_leaves_the_code_clean(tmp_path):
    root = str(tmp_path)
    _repository(root)
    assert provenance._git(root)["git_dirty"] is False
    os.remove(os.path.join(root, "reproductions", "small", "summary.json"))  # a rerun from scratch
    assert provenance._git(root)["git_dirty"] is False
    with open(os.path.join(root, "training", "trainer.py"), "w") as handle:
        handle.write("2\n")
    info = provenance._git(root)
    assert info["git_dirty"] is True and len(info["git_commit"]) == 40


def test_outside_a_repository_nothing_is_claimed(tmp_path):
    assert provenance._git(str(tmp_path)) == {"git_commit": None, "git_dirty": None}
