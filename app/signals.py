"""Ctrl-C and SIGTERM for `python -m app.train` (and app.tune, app.tune_swa, app.reproduce): one line,
exit status 130 or 143.

Python's own Ctrl-C is a KeyboardInterrupt raised wherever the main thread
happens to be: inside TensorFlow's import it printed a 65-line traceback, and
inside a garbage-collection callback of JAX's (TensorFlow imports JAX) it was
printed as "Exception ignored" and dropped, so the run went on until a second
Ctrl-C. Here no signal raises anything: a thread waits on Python's signal
wakeup file descriptor and acts, also while the main thread is inside
TensorFlow or XLA (a compilation), where no Python handler runs.

- Ctrl-C (SIGINT) ends the process at once with one line saying what the same
  command will do (training/stopping.py: resume from which checkpoint, with
  how many steps to redo, or start over) and exit status 130. It leaves what a
  SIGKILL would (every file is written atomically; tests/test_resume.py
  resumes killed runs exactly); a save in progress finishes first
  (`checkpoint.SAVING`), so the line names the checkpoint the rerun will find.
- SIGTERM (what Slurm and Kubernetes send before a kill) during training: a
  checkpoint at the end of the step in progress (training/stopping.py; an SWA
  branch or a tuning trial stops there without one and resumes at its last
  epoch end), then
  such a line and exit status 143 (128 + 15: what a shell reports for a
  process SIGTERM ended, so schedulers see the run as terminated, as they do
  without this handling). Before or after training, or a second SIGTERM: at
  once, as Ctrl-C.

A signal that the parent made the process ignore (a shell's background job
ignores Ctrl-C) stays ignored.
"""

import os
import signal
import sys
import threading

from utils import quiet
from utils.errors import start_up_line

INTERRUPTED = 130  # 128 + SIGINT
TERMINATED = 143  # 128 + SIGTERM
_VERBS = {signal.SIGINT: ("interrupted", INTERRUPTED), signal.SIGTERM: ("terminated", TERMINATED)}
_last_line = threading.Lock()  # taken by whoever prints the run's last line, never released
_installed = False


def install():
    """From now on handles SIGINT and SIGTERM as above (main thread; a no-op the second time)."""
    global _installed
    if _installed:
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    for number in _VERBS:
        if signal.getsignal(number) is not signal.SIG_IGN:
            # A Python handler, so that CPython's C handler writes the signal to the wakeup fd.
            signal.signal(number, _noted)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read,), name="signals", daemon=True).start()
    _installed = True


def _noted(number, frame):
    """The main thread's part: nothing (the thread acts)."""


def _watch(read):
    while True:
        for number in os.read(read, 16):
            if number in _VERBS:
                _act(number)


def _act(number):
    stopping = sys.modules.get("training.stopping")  # imported once the arguments are checked
    position = stopping.POSITION if stopping else None
    if number == signal.SIGTERM and position is not None and position.fitting and not position.stop_requested:
        position.stop_requested = True  # the main thread saves at the step's end, says so, exits 143
        return
    verb, status = _VERBS[number]
    checkpoint = sys.modules.get("training.checkpoint")
    if checkpoint is not None:
        checkpoint.SAVING.acquire()  # held until the exit: no save starts or ends after the line is read
    report(stopping.message(verb) if stopping else start_up_line(verb))
    os._exit(status)


def report(line):
    """Prints the run's last line (on stderr), on a line of its own on a terminal."""
    if not _installed:
        print(line, file=sys.stderr, flush=True)
        return
    _last_line.acquire()  # a second signal's line waits here for the exit
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    if os.isatty(1):
        os.write(1, b"\n")  # ends the live status line, or the ^C the terminal echoed after it
    os.write(quiet.stderr_fd(), f"{line}\n".encode())
