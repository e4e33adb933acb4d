"""Runs `app.train.main(argv)` and SIGKILLs itself at a chosen point (resume tests).

KILL_AT_STEP=k: right after optimizer step k (after any checkpoint at that step).
KILL_AT_EPOCH=e: right after epoch e's checkpoint was written.
"""

import os
import signal
import sys

import keras

from app import checkpoint
from app import train


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    kill_step = int(os.environ.get("KILL_AT_STEP", 0))
    kill_epoch = int(os.environ.get("KILL_AT_EPOCH", 0))
    batch_end = checkpoint.RunCheckpoint.on_train_batch_end
    epoch_end = checkpoint.RunCheckpoint.on_epoch_end

    def on_train_batch_end(self, batch, logs=None):
        batch_end(self, batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == kill_step:
            _die()

    def on_epoch_end(self, epoch, logs=None):
        epoch_end(self, epoch, logs)
        if epoch + 1 == kill_epoch:
            _die()

    checkpoint.RunCheckpoint.on_train_batch_end = on_train_batch_end
    checkpoint.RunCheckpoint.on_epoch_end = on_epoch_end
    train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
