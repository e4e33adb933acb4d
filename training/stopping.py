"""Stopping a run on a signal: what a rerun will do, and SIGTERM's checkpoint at the step's end.

The signal handling of app/signals.py runs in a thread of its own, also while
the main thread is inside TensorFlow or XLA; it neither raises into Keras (an
exception raised inside a garbage-collection callback is printed and dropped:
a lost Ctrl-C) nor touches the model. It reads `POSITION`, plain numbers the
trainer and `StopAtStepEnd` keep up to date, and the checkpoint files as a
rerun will find them (`message`).

SIGTERM (what Slurm and Kubernetes send before a kill) asks for a checkpoint:
`StopAtStepEnd`, the last callback, saves one at the end of the step in
progress and raises `Stopped` (a checkpoint within an epoch resumes exactly:
tests/test_resume.py); with `within_epoch=False` (the SWA branch, app.tune's
trials) it stops without saving, and they resume at their last epoch end.
The epoch's last step is saved after its evaluation, as always (an evaluation
in progress holds the averages swapped in), so a signal there stops after the
epoch's own checkpoint. A run of several JAX
processes stops at the step JAX's preemption service agrees on: JAX takes
SIGTERM over there (`jax.distributed.initialize` installs its own handler),
and every process must save the same step. JAX agrees on the step after the
newest one any process has passed to `reached_preemption_sync_point` (0 before
the first call), so a SIGTERM between joining and the first step of a resumed
run picks step 1, which that run never reaches: it is not acted on.
"""

import contextlib
import os

import keras

from training import checkpoint
from training import distribution
from utils.errors import start_up_line


class Stopped(Exception):
    """Raised at a step's (or an epoch's) end after SIGTERM asked the run to stop."""


class Position:
    """Where this process's run stands; `checkpoint_files` None: no run has started (start-up)."""

    def __init__(self, checkpoint_files=None, steps_per_epoch=None):
        self.checkpoint_files = checkpoint_files  # newest first, as checkpoint.load reads them
        self.steps_per_epoch = steps_per_epoch
        self.steps_done = None  # optimizer steps done, once fit has begun
        self.fitting = False
        self.evaluating = False  # from an epoch's last step to its checkpoint
        self.stop_requested = False


POSITION = Position()
_between_runs = None  # what a signal outside any run says, under `between_runs`


@contextlib.contextmanager
def between_runs(line):
    """While a command runs several runs one after the other (app.tune's trials, app.reproduce's steps), a
    signal outside any run says `<verb> <line>` instead of the start-up line (nothing trained yet)."""
    global _between_runs
    previous, _between_runs = _between_runs, line
    try:
        yield
    finally:
        _between_runs = previous


def start(checkpoint_files, steps_per_epoch):
    """A run (or the SWA branch) starts: messages now name its checkpoint files."""
    global POSITION
    POSITION = Position(list(checkpoint_files), steps_per_epoch)


def end():
    global POSITION
    POSITION = Position()


def message(verb):
    """`interrupted at epoch 2 step 4; run the same command to resume from ...` (`verb`: interrupted, terminated)."""
    position = POSITION
    if position.checkpoint_files is None:
        return f"{verb} {_between_runs}" if _between_runs else start_up_line(verb)
    return f"{verb} {_where(position)}; {_rerun(position)}"


def _where(position):
    if position.steps_done is None:
        return "before training"
    epoch, step = divmod(position.steps_done, position.steps_per_epoch)
    if position.evaluating:
        return f"in the evaluation of epoch {epoch}"
    if not position.fitting or (step == 0 and epoch > 0):
        # saving the models, between the baseline and the SWA branch, or between two epochs (also after
        # the last one's checkpoint, where "epoch N+1 step 1" would name an epoch the run does not have)
        return f"after epoch {epoch}"
    return f"at epoch {epoch + 1} step {step + 1}"


def _rerun(position):
    found = next(((path, meta) for path in position.checkpoint_files
                  if (meta := checkpoint.read_meta(path)) is not None), None)
    if found is None:
        return "no checkpoint was saved yet: run the same command to start the run over"
    path, meta = found
    epoch, step = checkpoint.resume_position(meta, position.steps_per_epoch)
    saved = f"at the end of epoch {epoch - 1}" if step == 1 else f"after step {step - 1} of epoch {epoch}"
    text = f"run the same command to resume from {path}, saved {saved}"
    if position.steps_done is not None:
        redo = position.steps_done - meta["global_step"]
        text += f" ({redo} step{'s' if redo != 1 else ''} to redo)" if redo else " (nothing to redo)"
    return text


class StopAtStepEnd(keras.callbacks.Callback):
    """Keeps `POSITION` up to date; after a stop request, saves and raises `Stopped`. Place it last.

    Args:
        run_checkpoint: the run's `checkpoint.RunCheckpoint`.
        within_epoch: whether a checkpoint within an epoch can be resumed.
            The SWA branch's and app.tune's trials' cannot: they stop at once
            and resume from their last epoch end. Defaults to True.
    """

    def __init__(self, run_checkpoint, within_epoch=True):
        super().__init__()
        self.run_checkpoint = run_checkpoint
        self.within_epoch = within_epoch

    def on_train_begin(self, logs=None):
        POSITION.steps_done = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        POSITION.fitting = True
        self._processes = distribution.process_count()
        self._agreed_stop(POSITION.steps_done)  # JAX's preemption counter starts at this step

    def on_train_end(self, logs=None):
        POSITION.fitting = False

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_in_epoch = (self.params or {}).get("steps")

    def on_train_batch_end(self, batch, logs=None):
        POSITION.steps_done += 1
        POSITION.evaluating = batch + 1 == self._steps_in_epoch
        if self._agreed_stop(POSITION.steps_done):
            POSITION.stop_requested = True
        if POSITION.stop_requested and not POSITION.evaluating:
            if self.within_epoch:
                self.run_checkpoint.save_within_epoch()
            raise Stopped()

    def on_epoch_end(self, epoch, logs=None):
        POSITION.evaluating = False
        if POSITION.stop_requested:
            raise Stopped()

    def _agreed_stop(self, step):
        """Several processes: whether JAX's preemption service has chosen this step to stop at."""
        if self._processes == 1:
            return False
        from jax.experimental import multihost_utils

        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM is JAX's default, the end
            return False


def checkpoint_files(directory, *older):
    """A run's checkpoint files, newest first, as `checkpoint.load` tries them; then `older` ones."""
    return [os.path.join(directory, checkpoint.LAST), os.path.join(directory, checkpoint.PREVIOUS), *older]
