"""Start-up: a bad command line is one line on stderr, TensorFlow's C++ start-up logging included.

Times are measured in bench/startup.py, not asserted here.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")


def _run(module, *argv):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the default: quiet
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        # Data checks (data/availability.py), still before TensorFlow:
        ("app.train", ["--dataset", "cifar10", "--data-dir", "{empty}", "--out", "{out}"],
         "error: dataset 'cifar10' is not prepared in"),
        ("app.tune", ["--dataset", "cifar10", "--data-dir", "{empty}", "--out", "{out}"],
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


_WITHOUT_HEAVY_IMPORTS = (
    "import sys, runpy; "
    "sys.modules.update(dict.fromkeys(['tensorflow', 'keras', 'jax', 'tensorflow_datasets']));"
    "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')"
)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("app.train", ["--dataset", "cifar100", "--data-dir", "{empty}", "--out", "{out}"],
         "error: dataset 'cifar100' is not prepared in"),
        ("app.train", ["--dataset", "cifar10", "--data-dir", TFDS_DIR, "--limit-train", "40001",
                       "--out", "{out}"],
         "error: --limit-train 40001 is larger than the 80% training split of cifar10"),
        ("app.tune", ["--dataset", "cifar10n", "--data-dir", "{empty}", "--out", "{out}"],
         "error: dataset 'cifar10n' is not prepared in"),
        ("app.reproduce", ["fig2", "--budget", "small", "--data-dir", "{empty}", "--out", "{out}"],
         "error: fig2 needs cifar10n, which is not available"),
    ],
)
def test_data_errors_come_before_tensorflow_is_imported(tmp_path, module, argv, message):
    """Importing TensorFlow, Keras, JAX or TFDS would fail here (they are blocked)."""
    if TFDS_DIR in argv and not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
    (tmp_path / "empty").mkdir()
    values = {"empty": str(tmp_path / "empty"), "out": str(tmp_path / "out")}
    result = subprocess.run([sys.executable, "-c", _WITHOUT_HEAVY_IMPORTS, module,
                             *[a.format(**values) for a in argv]],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("level, quiet", [(None, True), ("1", True), ("2", True), ("0", False)],
                         ids=["default", "level 1", "level 2", "level 0"])
def test_tensorflow_start_up_logs_only_when_the_user_asks_for_level_0(level, quiet):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    result = subprocess.run([sys.executable, "-c", "from utils import quiet; quiet.import_tensorflow()"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (result.stderr == "") == quiet, result.stderr


@pytest.mark.parametrize("level", [None, "2"], ids=["unset", "level 2"])
def test_an_error_after_the_tensorflow_import_is_one_line_whatever_the_shell_sets(tmp_path, level):
    """Issue 19: a shell that exports TF_CPP_MIN_LOG_LEVEL=2 got 7 lines of TensorFlow's start-up around it."""
    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    result = subprocess.run([sys.executable, "-m", "app.train", "--data-dir", TFDS_DIR, "--devices", "64",
                             "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    # --devices is checked against the devices TensorFlow lists: after its import.
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --devices 64: this machine has"), (
        result.stderr)


def test_the_modules_the_command_lines_start_with_import_nothing_heavy():
    """docs/architecture.md's list: `--help` and bad input never wait for TensorFlow."""
    modules = ["app.train", "app.tune", "app.evaluate", "app.consistency", "app.transfer", "app.report",
               "app.reproduce", "training.config", "training.run_dir", "data.datasets", "data.availability",
               "callbacks", "callbacks.defaults", "callbacks.warmup", "callbacks.ema_selection",
               "evaluation.claim_list", "evaluation.claims"]
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'tensorflow_datasets', 'keras_tuner') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
