"""`DivergenceGuard`: stop at the first non-finite loss or weight, before any average sees it.

Keras's `TerminateOnNaN` sets `stop_training`, after which `fit` still ends
the epoch: `on_epoch_end` runs, so an EMA evaluation, an SWA capture or a
checkpoint would take in the diverged weights. This guard raises instead, from
`on_train_batch_end`, and must come FIRST in the callback list: the averaging
callbacks update in the same hook, after it, so a diverged step never reaches
them, and no later checkpoint is written.
"""

import math

import keras
import numpy as np

from callbacks import arguments
from callbacks import variables
from callbacks.compiled import compile_pure


class TrainingDiverged(RuntimeError):
    """Raised by `DivergenceGuard`; the message says where and what."""


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDiverged` on a non-finite loss or weight.

    The loss is checked after every step (it is in the logs already); the
    weights every `weights_every_steps` optimizer steps and at every epoch end,
    with one compiled reduction. With `steps_per_execution > 1` the checks
    happen at the end of each execution: the loss of its last step, the
    weights if the execution reached a multiple of `weights_every_steps`.
    The error message is for people: it counts epochs and steps from 1, as
    Keras's progress bar does ("epoch 1, step 3" is Keras's `epoch` 0,
    batch 2). Give it the EMA period so that the weights
    are checked on exactly the steps where the averages are updated.

    Example:

    ```python
    model.fit(x, y, callbacks=[DivergenceGuard(weights_every_steps=16), MultiEMA()])
    ```

    Args:
        weights_every_steps: period of the weight check in optimizer steps
            (>= 1). Defaults to 1.
    """

    def __init__(self, weights_every_steps=1):
        super().__init__()
        # checked_int refuses a bool too (True is an int >= 1).
        self.weights_every_steps = arguments.checked_int("weights_every_steps", weights_every_steps, minimum=1)
        self._all_finite = None

    def on_train_begin(self, logs=None):
        self._all_finite = compile_pure(_all_finite)
        self._epoch = 0
        self._step = self._optimizer_step()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._raise(batch, f"the training loss is {float(loss)}")
        # With steps_per_execution > 1 this hook sees every k-th step only: check when the
        # execution reached a multiple of the period, as MultiEMA updates then.
        step, previous = self._optimizer_step(), self._step
        self._step = step
        if step // self.weights_every_steps > previous // self.weights_every_steps:
            self._check_weights(batch)

    def _optimizer_step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_end(self, epoch, logs=None):
        self._check_weights(None)

    def _check_weights(self, batch):
        values = [variable.value for variable in self.model.weights if variables.is_float(variable.dtype)]
        if not bool(np.asarray(keras.ops.convert_to_numpy(self._all_finite(values)))):
            self._raise(batch, "a weight is not finite (NaN or Inf)")

    def _raise(self, batch, what):
        where = f"epoch {self._epoch + 1}" + (f", step {batch + 1}" if batch is not None else " end")
        raise TrainingDiverged(f"training diverged at {where}: {what}")


def _all_finite(values):
    flags = [keras.ops.all(keras.ops.isfinite(value)) for value in values]
    return keras.ops.all(keras.ops.stack(flags))
