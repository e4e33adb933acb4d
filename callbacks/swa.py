"""Stochastic Weight Averaging (Izmailov et al. 2018).

`SWA` keeps the uniform average of the weights the SWA phase starts from
(Algorithm 1's `w_SWA <- w_hat`) and of those captured at the end of every
epoch (constant SWA learning rate) or of every cycle (cyclic learning rate,
captured at its minimum alpha_2); BatchNorm statistics are recomputed for the
average after training (§3.2). Its learning rates are in callbacks/swa_schedules.py
(§3.1, cyclic; §4.1: conventional training for about 75% of the budget, then the SWA rate).
"""

import contextlib
import warnings

import numpy as np
from keras import ops

from callbacks import arguments
from callbacks import layouts
from callbacks import state as state_protocol
from callbacks import validation
from callbacks import variables
from callbacks.batch_norm import recompute_batch_norm, recomputed_layers
from callbacks.compiled import compile_update
from callbacks.files import atomic_write


WEIGHTS_SUFFIX = ".weights.h5"


class SWA(state_protocol.StatefulCallback):
    """Uniform average of the weights captured from epoch `start_epoch` on.

    Epochs are Keras's 0-based indices: `start_epoch` is the first epoch of
    the SWA phase (the `start_epoch` epochs before it are conventional
    training). As in Algorithm 1 (`w_SWA <- w_hat`, n_models = 1) the
    average starts with the weights at the beginning of epoch `start_epoch`
    (`include_start`; with `start_epoch=0` these are the weights `fit` starts
    from, so pass `include_start=False` unless they are pretrained). Then the
    weights are captured at the end of epoch `e` when `e >= start_epoch` and
    `(e - start_epoch + 1) % cycle_epochs == 0`: every epoch for a constant
    SWA learning rate (`cycle_epochs=1`), or the last epoch of every cycle,
    where a cyclic learning rate of `cycle_epochs` epochs
    (`SWACyclicSchedule`, `swa_schedule`) reaches its minimum alpha_2.
    The running mean `swa <- swa + (w - swa) / (n + 1)` (float32) covers every
    float weight of the model, BatchNorm moving statistics included: a cheap
    stand-in for the per-epoch logs `swa_val_loss`, `swa_val_accuracy`, ...
    (every compiled metric; NaN before the first capture, so that the keys are
    in every epoch's logs and a `CSVLogger` gets their columns), unless
    `bn_every_epoch=True` recomputes them exactly for each log. After
    training the statistics of the final average are recomputed exactly over
    `train_data` (`recompute_batch_norm`, paper §3.2) and it is evaluated;
    see `summary()`, `save()`, `swapped_in()`. The model always keeps its own
    trained weights. Under a `keras.distribution` (JAX) the average is laid
    out like the weights (`ModelParallel`: each device holds its shard, and
    the final model is kept sharded on the devices); `get_state` and `save`
    gather it, only when called (see `MultiEMA` for an example).

    Example:

    ```python
    steps = len(x_train) // 128
    schedule = swa_schedule(base_schedule, start_step=150 * steps, swa_lr=0.05)
    swa = SWA(start_epoch=150, train_data=(x_train, y_train),
              validation_data=(x_val, y_val), batch_size=128)
    model.compile(optimizer=keras.optimizers.SGD(schedule), ...)
    model.fit(x_train, y_train, batch_size=128, epochs=200, callbacks=[swa])
    swa.save("weights/")  # swa.weights.h5
    ```

    Args:
        start_epoch: the first SWA epoch, 0-based as Keras's `epoch` (every
            epoch this class takes or returns is).
        cycle_epochs: capture period in epochs (the cycle length of a cyclic
            learning rate). Defaults to 1.
        train_data: data for the BatchNorm recomputation, as for
            `recompute_batch_norm`; required for a model with BatchNorm.
            Defaults to `None`.
        validation_data: `(x, y)` tuple or dataset for `model.evaluate`; no
            `swa_val_*` logs without it. Defaults to `None`.
        bn_every_epoch: recompute BatchNorm statistics for every per-epoch
            evaluation too (exact curves, one extra pass per epoch).
            Defaults to `False`.
        steps: use at most this many batches per recomputation. Defaults to
            `None` (one full pass).
        batch_size: batch size for array data. Defaults to `None` (required
            when `train_data` is an array).
        include_start: also average the weights the SWA phase starts from
            (the beginning of epoch `start_epoch`, BatchNorm statistics
            included), as Algorithm 1 does with `w_SWA <- w_hat`; `False`
            averages the end-of-epoch/cycle captures only (PyTorch's
            `swa_utils`). Defaults to `True`.
        verbose: if 1, print a line when the final average's BatchNorm
            recomputation and evaluation start. Defaults to 0.
    """

    def __init__(
        self,
        start_epoch,
        cycle_epochs=1,
        train_data=None,
        validation_data=None,
        bn_every_epoch=False,
        steps=None,
        batch_size=None,
        include_start=True,
        verbose=0,
    ):
        super().__init__()
        arguments.checked_int("start_epoch", start_epoch, minimum=0)
        arguments.checked_int("cycle_epochs", cycle_epochs, minimum=1)
        arguments.checked_optional_int("steps", steps)
        if validation_data is not None:
            validation.checked(validation_data)
        if train_data is not None:
            validation.input_batches(train_data, batch_size, steps)  # validates only; lazy
        elif bn_every_epoch:
            raise ValueError(
                "Invalid value for argument `train_data`. Received: "
                "train_data=None. Expected data when bn_every_epoch=True."
            )
        elif steps is not None:  # it limits the recomputation over train_data: there is none
            raise arguments.invalid("steps", steps, "None when train_data is None")
        validation.checked_batch_size_is_used(batch_size, train_data, validation_data)
        self.start_epoch = start_epoch
        self.cycle_epochs = cycle_epochs
        self.train_data = train_data
        self.validation_data = validation_data
        self.bn_every_epoch = bool(bn_every_epoch)
        self.steps = steps
        self.batch_size = batch_size
        self.include_start = bool(include_start)
        self.verbose = verbose
        self.count = 0
        self.start_included = False
        self.final_metrics = {}
        self._average = None
        self._final_weights = None
        self._last_epoch = None

    __deepcopy__ = state_protocol.fresh_copy

    def get_config(self):
        return {"start_epoch": self.start_epoch, "cycle_epochs": self.cycle_epochs, "train_data": self.train_data,
                "validation_data": self.validation_data, "bn_every_epoch": self.bn_every_epoch,
                "steps": self.steps, "batch_size": self.batch_size, "include_start": self.include_start,
                "verbose": self.verbose}

    def on_train_begin(self, logs=None):
        if self.train_data is None and recomputed_layers(self.model):
            raise ValueError(
                "`SWA` needs `train_data` to recompute the BatchNorm statistics "
                "of the average (SWA paper §3.2); pass train_data=..."
            )
        self._start_average()

    def on_epoch_begin(self, epoch, logs=None):
        if self._is_start(epoch):
            self._capture()
            self.start_included = True

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if self._is_capture_epoch(epoch):
            self._capture()
        if self.validation_data is not None and logs is not None:
            logs.update(self._evaluate_average() if self.count else self._no_average_yet())

    def on_train_end(self, logs=None):
        if self.count:
            self._finish()
        elif self._last_epoch is not None:
            warnings.warn(
                f"SWA captured no model: start_epoch={self.start_epoch} (0-based) was never reached "
                f"with cycle_epochs={self.cycle_epochs}; the fit ended after epoch {self._last_epoch}.",
                stacklevel=2,
            )

    def summary(self):
        """Start epoch (0-based, as Keras's `epoch` and `start_epoch`), number
        of models averaged (the starting point among them if `start_included`)
        and the final metrics (`val_loss`, ...), BatchNorm recomputed."""
        return {
            "start_epoch": self.start_epoch,
            "cycle_epochs": self.cycle_epochs,
            "models_averaged": self.count,
            "start_included": self.start_included,
            **self.final_metrics,
        }

    def save(self, directory):
        """Writes the final average to `<directory>/swa.weights.h5`; returns the path."""
        weights = self._require_final_weights()  # before creating anything
        return variables.save_weights_files(self.model, directory, {"swa" + WEIGHTS_SUFFIX: weights})[0]

    def save_average(self, path):
        """Writes the average so far, BatchNorm recomputed over `train_data`, to `path` (a
        `.weights.h5`); returns its metrics on `validation_data` (`val_loss`, ...; {} without).

        For a mid-fit copy, e.g. the average at the end of one budget while the SWA
        phase goes on (SWA paper Table 1: 1 and 1.5 budgets from one run). The
        model keeps its own weights; the file is written atomically.
        """
        if not str(path).endswith(WEIGHTS_SUFFIX):  # Keras's save_weights needs it; the temporary is derived from it
            raise arguments.invalid("path", path, f"a file name ending in {WEIGHTS_SUFFIX!r}")
        if not self.count:
            raise ValueError("No SWA average yet: `save_average` needs at least one captured model.")
        metrics = {}
        with self._running_average_swapped_in():
            self._recompute()
            if self.validation_data is not None:
                metrics = {f"val_{k}": v for k, v in
                           validation.evaluate(self.model, self.validation_data, self.batch_size).items()}
            atomic_write(path, self.model.save_weights)
        return metrics

    @contextlib.contextmanager
    def swapped_in(self):
        """Puts the final average (BatchNorm recomputed) into the model; restores on exit."""
        final = self._require_final_weights()
        with variables.holding(self.model.weights, final):
            yield self.model

    def _start_average(self):
        self._weights = [w for w in self.model.weights if variables.is_float(w.dtype)]
        # Under a keras.distribution each average is laid out like its weight (callbacks/layouts.py).
        self._average = [layouts.average_variable(w, tuple(w.shape), "swa_average") for w in self._weights]
        self._update = compile_update(_running_mean, self._weights + self._average, self._average)
        self.final_metrics = {}
        self._final_weights = None
        self._last_epoch = None
        self._start_or_restore()

    # The state (callbacks/state.py): `count`, `start_included` and, after a capture, `average/<i>`.

    def _has_state(self):
        return self._average is not None

    def _start(self):
        self.count = 0
        self.start_included = False

    def _state(self):
        state = {"count": np.asarray(self.count, dtype="int64"), "start_included": np.asarray(self.start_included)}
        if self._average is not None:
            # Gathered to NumPy here, only when a state is asked for (a checkpoint).
            average = variables.to_numpy([a.value for a in self._average])
            state.update({f"average/{i}": value for i, value in enumerate(average)})
        return state

    def _checked_state(self, state):
        count = state_protocol.python_value(state["count"])
        arguments.checked_int("state['count']", count, minimum=0)
        if count and "average/0" not in state:
            raise ValueError(
                "Invalid value for argument `state`. Received count="
                f"{count} with no average. Expected `get_state()`'s result."
            )
        # A state saved before `start_included` existed never included it.
        return {"start_included": np.asarray(False), **state}

    def _load_state(self, state):
        average = [state[f"average/{i}"] for i in range(sum(key.startswith("average/") for key in state))]
        if state_protocol.python_value(state["count"]):
            if len(average) != len(self._average):
                raise ValueError(
                    f"The SWA state has {len(average)} arrays; the model has {len(self._average)} float weights."
                )
            variables.write(self._average, average)
        self.count = state_protocol.python_value(state["count"])
        self.start_included = bool(state_protocol.python_value(state["start_included"]))

    def _is_start(self, epoch):
        # Only before any capture: a fit resumed later (set_state) has passed the start.
        return self.include_start and epoch == self.start_epoch and self.count == 0

    def _is_capture_epoch(self, epoch):
        after_start = epoch - self.start_epoch + 1
        return after_start >= 1 and after_start % self.cycle_epochs == 0

    def _capture(self):
        self._update(ops.convert_to_tensor(float(self.count), "float32"))
        self.count += 1

    def _running_average_swapped_in(self):
        # Copies: under JAX `evaluate` donates (deletes) the model's buffers. Sharded, the
        # copies stay on the devices (`holding` copies tensors), never whole on the host.
        if layouts.is_sharded(self._weights):
            return variables.holding(self._weights, [average.value for average in self._average])
        return variables.holding(self._weights, variables.host_copy(self._average))

    def _no_average_yet(self):
        # NaN until the first capture, so that the keys are in every epoch's logs: Keras's
        # CSVLogger fixes its columns at the first epoch (PredictionStability does the same).
        return {f"swa_val_{name}": float("nan") for name in self.model.get_metrics_result()}

    def _evaluate_average(self):
        with self._running_average_swapped_in():
            if self.bn_every_epoch:
                self._recompute()
            metrics = validation.evaluate(self.model, self.validation_data, self.batch_size)
        return {f"swa_val_{name}": value for name, value in metrics.items()}

    def _finish(self):
        if self.verbose:
            doing = "recomputing BatchNorm for" if self.train_data is not None else "evaluating"
            print(f"{doing} the SWA average of {self.count} models ...", flush=True)
        with self._running_average_swapped_in():
            self._recompute()
            if self.validation_data is not None:
                metrics = validation.evaluate(self.model, self.validation_data, self.batch_size)
                self.final_metrics = {f"val_{k}": v for k, v in metrics.items()}
            self._final_weights = variables.kept_copy(self.model.weights)

    def _recompute(self):
        if self.train_data is not None:
            recompute_batch_norm(self.model, self.train_data, self.batch_size, self.steps)

    def _require_final_weights(self):
        if self._final_weights is None:
            raise ValueError(
                "No SWA model yet: it exists after a `fit` that captured at "
                f"least one model (epoch >= start_epoch={self.start_epoch})."
            )
        return self._final_weights


def _running_mean(values, count):
    half = len(values) // 2
    weights, average = values[:half], values[half:]
    # float32 averages (a float16 running mean would lose the small updates)
    return [a + (ops.cast(w, "float32") - a) / (count + 1.0) for w, a in zip(weights, average)]
