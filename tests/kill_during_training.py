"""Runs `app.train.main(argv)` and SIGKILLs itself at a chosen point (resume tests).

KILL_AT_STEP=k: right after optimizer step k (after any checkpoint at that step).
KILL_AT_EPOCH=e: right after epoch e's checkpoint was written.
NAN_AT_STEP=k: the images of training step k (of a run started from scratch) are NaN.
INTERRUPT_AT_STEP=k: a SIGINT (Ctrl-C) right after optimizer step k (its callbacks done); step k + 1
  waits for the signal's handling to end the process.
TERMINATE_AT_STEP=k: a SIGTERM right after optimizer step k; step k + 1 starts once the signal is noted.
KILL_IN_SWA_AT_STEP=k: like KILL_AT_STEP, but only in the SWA branch (RUN/swa/).

Signals are handled as `python -m app.train` handles them (app/signals.py).
"""

import os
import signal
import sys
import time

from app import signals
from utils import quiet

quiet.import_tensorflow()  # as app.train does, before Keras

import keras  # noqa: E402

from training import checkpoint, stopping  # noqa: E402
from data import pipeline  # noqa: E402
from app import train  # noqa: E402


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    # A Ctrl-C from a terminal: shells start background jobs (`cmd &`, as CI
    # scripts may run the suite) with SIGINT ignored, and Python then keeps it
    # ignored; the simulated user presses Ctrl-C in a foreground terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals.install()
    kill_step = int(os.environ.get("KILL_AT_STEP", 0))
    kill_epoch = int(os.environ.get("KILL_AT_EPOCH", 0))
    interrupt_step = int(os.environ.get("INTERRUPT_AT_STEP", 0))
    terminate_step = int(os.environ.get("TERMINATE_AT_STEP", 0))
    swa_kill_step = int(os.environ.get("KILL_IN_SWA_AT_STEP", 0))
    batch_end = checkpoint.RunCheckpoint.on_train_batch_end
    epoch_end = checkpoint.RunCheckpoint.on_epoch_end
    last_batch_end = stopping.StopAtStepEnd.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        batch_end(self, batch, logs)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step == kill_step:
            _die()
        in_branch = os.path.basename(os.path.dirname(os.path.normpath(self.directory))) == "swa"
        if in_branch and step == swa_kill_step:
            _die()

    def after_the_last_callback(self, batch, logs=None):
        last_batch_end(self, batch, logs)
        step = stopping.POSITION.steps_done
        if step == interrupt_step:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)  # a user's Ctrl-C during step k + 1: the process ends here
        if step == terminate_step:
            os.kill(os.getpid(), signal.SIGTERM)
            while not stopping.POSITION.stop_requested:  # the signal thread notes it
                time.sleep(0.01)

    def on_epoch_end(self, epoch, logs=None):
        epoch_end(self, epoch, logs)
        if epoch + 1 == kill_epoch:
            _die()

    nan_step = int(os.environ.get("NAN_AT_STEP", 0))
    if nan_step:
        make_stream = pipeline.train_dataset

        def train_dataset(*args, **kwargs):
            stream = make_stream(*args, **kwargs)
            if kwargs.get("start_epoch", 0) != 0 or kwargs.get("num_epochs") is not None:
                return stream
            import tensorflow as tf

            def poison(index, batch):
                images, labels = batch
                poisoned = tf.fill(tf.shape(images), float("nan"))
                return tf.where(index + 1 == nan_step, poisoned, images), labels

            return stream.enumerate().map(poison)

        pipeline.train_dataset = train_dataset
    checkpoint.RunCheckpoint.on_train_batch_end = on_train_batch_end
    checkpoint.RunCheckpoint.on_epoch_end = on_epoch_end
    stopping.StopAtStepEnd.on_train_batch_end = after_the_last_callback
    train.exit_fast_on_interrupt(lambda: train.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
