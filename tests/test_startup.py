"""Start-up: a bad command line is one line on stderr, TensorFlow's C++ start-up logging included.

Times are measured in bench/startup.py, not asserted here.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *argv):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the default: quiet
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        # After TensorFlow has been imported (the data check needs it):
        ("app.train", ["--dataset", "cifar10", "--data-dir", "{empty}", "--out", "{out}"],
         "error: dataset 'cifar10' is not prepared in"),
        ("app.tune", ["--dataset", "cifar10", "--data-dir", "{empty}", "--tuner-dir", "{out}"],
         "error: dataset 'cifar10' is not prepared in"),
        ("app.reproduce", ["table1", "--budget", "paper", "--data-dir", "{empty}", "--out", "{out}"],
         "error: table1 needs cifar100, which is not available"),
        # Before any heavy import:
        ("app.train", ["--dataset", "cifar-10"], "error: unknown dataset 'cifar-10'"),
        ("app.evaluate", ["{out}"], "error: run directory"),
        ("app.consistency", ["{out}"], "error: "),
        ("app.report", ["{out}"], "error: run directory"),
        ("app.transfer", ["{out}", "--dataset", "svhn"], "error: unknown target dataset 'svhn'"),
    ],
)
def test_bad_input_prints_exactly_one_line(tmp_path, module, argv, message):
    (tmp_path / "empty").mkdir()
    values = {"empty": str(tmp_path / "empty"), "out": str(tmp_path / "out")}
    result = _run(module, *[a.format(**values) for a in argv])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "out").exists()


def test_a_user_who_sets_the_tensorflow_log_level_keeps_the_logs(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
    result = subprocess.run(
        [sys.executable, "-m", "app.train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") > 1
