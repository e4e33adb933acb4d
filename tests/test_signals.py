"""Ctrl-C and SIGTERM during app.train's start-up, and Ctrl-C on a terminal (issue 19; app/signals.py).

Start-up: a tripwire sends the signal when a chosen module starts to import,
then sleeps as a long import would; the process must end there with one line
and exit status 130 (Ctrl-C) or 143 (SIGTERM), no traceback, nothing
written. Before app/signals.py, Ctrl-C in the TensorFlow import printed a
traceback of 20-80 lines, and one landing in a JAX garbage-collection
callback was printed as "Exception ignored" and lost. Training-time signals
and the resume after them: tests/test_resume.py.
"""

import os
import pty
import signal
import subprocess
import sys

import pytest

from utils.errors import start_up_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")), reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)"
)
ARGS = ["--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR, "--limit-train", "128",
        "--batch-size", "32", "--limit-validation", "32", "--epochs", "2", "--ema-decays", "0.9"]
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
TRIPWIRE = """
import importlib.abc, os, runpy, signal, sys, time

module, number = sys.argv[1], getattr(signal, sys.argv[2])


class Tripwire(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), number)
            time.sleep(60)  # the signal ends the process here, or is lost and the import goes on
        return None


sys.meta_path.insert(0, Tripwire())
sys.argv = ["app/train.py", *sys.argv[3:]]
runpy.run_module("app.train", run_name="__main__", alter_sys=True)
"""


def _as_from_a_terminal():
    # A shell's background job (the suite run as `cmd &`) ignores SIGINT, and so would app.train.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "module, name",
    [
        ("tensorflow", "SIGINT"),  # TensorFlow's import begins (stderr muted meanwhile: utils/quiet.py)
        ("jax", "SIGINT"),  # inside TensorFlow's import, which imports JAX: the Ctrl-C that was lost
        ("tensorflow_datasets", "SIGINT"),  # the data check
        ("training.trainer", "SIGINT"),  # every check passed, before the data is loaded
        ("jax", "SIGTERM"),
    ],
)
def test_a_signal_at_any_moment_of_start_up_is_one_line(tmp_path, module, name):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", TRIPWIRE, module, name, *ARGS, "--out", str(out)], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=_as_from_a_terminal)
    verb, status = ("interrupted", 130) if name == "SIGINT" else ("terminated", 143)
    assert (result.returncode, result.stderr) == (status, start_up_line(verb) + "\n")
    # Only the line that announces start-up's slow part (issue 31) came before; nothing was written.
    assert result.stdout == "starting: importing TensorFlow, then reading cifar10 ...\n" and not out.exists()


def test_the_interrupted_line_starts_a_line_of_its_own_on_a_terminal(tmp_path):
    """Issue 19: on a terminal the line was glued to the live status line (`... ETA 0m01sinterrupted at`)."""
    out = tmp_path / "run"
    terminal, child_side = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "tests.kill_during_training", *ARGS, "--out", str(out)],
                               cwd=ROOT, env=dict(ENV, INTERRUPT_AT_STEP="3"), stdin=subprocess.DEVNULL,
                               stdout=child_side, stderr=child_side, preexec_fn=_as_from_a_terminal)
    os.close(child_side)
    output = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: every end of the terminal's other side is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(terminal)
    assert process.wait(timeout=300) == 130
    text = output.decode()
    assert "\r\x1b[Kepoch 1 step 1/4 loss" in text  # the live status line was showing
    lines = text.replace("\r\n", "\n").split("\n")
    assert [line for line in lines if "interrupted at" in line] == [
        "interrupted at epoch 1 step 4; no checkpoint was saved yet: run the same command to start the run over"]
