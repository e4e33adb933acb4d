"""Stochastic Weight Averaging (Izmailov et al. 2018) and its learning rates.

`SWA` keeps the uniform average of the weights captured at the end of every
epoch (constant SWA learning rate) or of every cycle (cyclic learning rate,
captured at its minimum alpha_2), Algorithm 1; BatchNorm statistics are
recomputed for the average after training (§3.2). `SWACyclicSchedule` is the
§3.1 cyclic learning rate, `SWASchedule` / `swa_schedule` switch a
conventional schedule to the SWA learning rate (§4.1: conventional training
for about 75% of the budget, then a constant SWA learning rate).
"""

import contextlib
import os

import keras
from keras import ops

from callbacks.batch_norm import batch_norm_layers
from callbacks.batch_norm import _batches
from callbacks.batch_norm import _check_steps
from callbacks.batch_norm import _evaluate
from callbacks.batch_norm import _read
from callbacks.batch_norm import _save_weights
from callbacks.batch_norm import _write
from callbacks.batch_norm import recompute_batch_norm
from callbacks.compiled import compile_update


class SWA(keras.callbacks.Callback):
    """Uniform average of the weights captured from epoch `start_epoch` on.

    Epochs are Keras's 0-based indices: `start_epoch` is the first epoch of
    the SWA phase (the `start_epoch` epochs before it are conventional
    training). The weights are captured at the end of epoch `e` when
    `e >= start_epoch` and `(e - start_epoch + 1) % cycle_epochs == 0`: every
    epoch for a constant SWA learning rate (`cycle_epochs=1`), or the last
    epoch of every cycle, where a cyclic learning rate of `cycle_epochs`
    epochs (`SWACyclicSchedule`, `swa_schedule`) reaches its minimum alpha_2.
    The running mean `swa <- swa + (w - swa) / (n + 1)` (float32) covers every
    float weight of the model, BatchNorm moving statistics included: a cheap
    stand-in for the per-epoch logs `swa_val_loss`, `swa_val_accuracy`, ...
    (every compiled metric, from the first capture on), unless
    `bn_every_epoch=True` recomputes them exactly for each log. After
    training the statistics of the final average are recomputed exactly over
    `train_data` (`recompute_batch_norm`, paper §3.2) and it is evaluated;
    see `summary()`, `save()`, `swapped_in()`. The model always keeps its own
    trained weights.

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
        start_epoch: 0-based index of the first SWA epoch.
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
        include_start_weights: also average the weights the SWA phase starts
            from (the beginning of epoch `start_epoch`), as Algorithm 1 does
            with `w_SWA <- w_hat`. Defaults to `False` (only end-of-cycle
            captures, as PyTorch's `swa_utils` and `--swa-start-epoch`).
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
        include_start_weights=False,
    ):
        super().__init__()
        _check_int("start_epoch", start_epoch, minimum=0)
        _check_int("cycle_epochs", cycle_epochs, minimum=1)
        _check_steps(steps)
        if train_data is not None:
            _batches(train_data, batch_size, steps)  # validates only; lazy
        elif bn_every_epoch:
            raise ValueError(
                "Invalid value for argument `train_data`. Received: "
                "train_data=None. Expected data when bn_every_epoch=True."
            )
        self.start_epoch = start_epoch
        self.cycle_epochs = cycle_epochs
        self.train_data = train_data
        self.validation_data = validation_data
        self.bn_every_epoch = bool(bn_every_epoch)
        self.steps = steps
        self.batch_size = batch_size
        self.include_start_weights = bool(include_start_weights)
        self.count = 0
        self.final_metrics = {}
        self._average = None
        self._final_weights = None
        self._pending_state = None

    def on_train_begin(self, logs=None):
        if self.train_data is None and batch_norm_layers(self.model):
            raise ValueError(
                "`SWA` needs `train_data` to recompute the BatchNorm statistics "
                "of the average (SWA paper §3.2); pass train_data=..."
            )
        self._start_average()

    def on_epoch_begin(self, epoch, logs=None):
        if self.include_start_weights and epoch == self.start_epoch and self.count == 0:
            self._capture()

    def on_epoch_end(self, epoch, logs=None):
        if self._is_capture_epoch(epoch):
            self._capture()
        if self.count and self.validation_data is not None and logs is not None:
            logs.update(self._evaluate_average())

    def on_train_end(self, logs=None):
        if self.count:
            self._finish()

    def get_state(self):
        """`{"average": [NumPy arrays], "count": int}`, to resume with `set_state`."""
        if self._average is None:
            return {"average": None, "count": 0}
        return {"average": _read(self._average), "count": self.count}

    def set_state(self, state):
        """Restores `get_state()`'s result for the next `on_train_begin`.

        A restored state replaces that train begin's reset (a resumed
        `fit(initial_epoch=...)` continues the average); the fit after that
        starts afresh. If the callback already holds an average, the state is
        also applied at once.
        """
        count = state["count"]
        _check_int("state['count']", count, minimum=0)
        if count and state["average"] is None:
            raise ValueError(
                "Invalid value for argument `state`. Received count="
                f"{count} with average=None. Expected `get_state()`'s result."
            )
        self._pending_state = {"average": state["average"], "count": count}
        if self._average is not None:
            self._load_state(self._pending_state)

    def summary(self):
        """Start epoch (1-based, like `--swa-start-epoch`), number of models
        averaged and the final metrics (`val_loss`, ...), BatchNorm recomputed."""
        return {
            "start_epoch": self.start_epoch + 1,
            "cycle_epochs": self.cycle_epochs,
            "models_averaged": self.count,
            **self.final_metrics,
        }

    def save(self, directory):
        """Writes the final average to `<directory>/swa.weights.h5`; returns the path."""
        weights = self._require_final_weights()  # before creating anything
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "swa.weights.h5")
        _save_weights(self.model, weights, path)
        return path

    @contextlib.contextmanager
    def swapped_in(self):
        """Puts the final average (BatchNorm recomputed) into the model; restores on exit."""
        final = self._require_final_weights()
        trained = _read(self.model.weights)
        try:
            _write(self.model.weights, final)
            yield self.model
        finally:
            _write(self.model.weights, trained)

    def _start_average(self):
        self._weights = [w for w in self.model.weights if _is_float(w.dtype)]
        self._average = [
            keras.Variable(ops.zeros(w.shape, "float32"), trainable=False, name="swa_average")
            for w in self._weights
        ]
        self._update = compile_update(_running_mean, self._weights + self._average, self._average)
        self.count = 0
        self.final_metrics = {}
        self._final_weights = None
        if self._pending_state is not None:
            self._load_state(self._pending_state)
            self._pending_state = None

    def _load_state(self, state):
        if state["count"]:
            if len(state["average"]) != len(self._average):
                raise ValueError(
                    f"The SWA state has {len(state['average'])} arrays; the model "
                    f"has {len(self._average)} float weights."
                )
            _write(self._average, state["average"])
        self.count = state["count"]

    def _is_capture_epoch(self, epoch):
        after_start = epoch - self.start_epoch + 1
        return after_start >= 1 and after_start % self.cycle_epochs == 0

    def _capture(self):
        self._update(ops.convert_to_tensor(float(self.count), "float32"))
        self.count += 1

    @contextlib.contextmanager
    def _running_average_swapped_in(self):
        trained = _read(self._weights)
        try:
            # Copies: under JAX `evaluate` donates (deletes) the model's buffers.
            _write(self._weights, _read(self._average))
            yield
        finally:
            _write(self._weights, trained)

    def _evaluate_average(self):
        with self._running_average_swapped_in():
            if self.bn_every_epoch:
                self._recompute()
            metrics = _evaluate(self.model, self.validation_data, self.batch_size)
        return {f"swa_val_{name}": value for name, value in metrics.items()}

    def _finish(self):
        with self._running_average_swapped_in():
            self._recompute()
            if self.validation_data is not None:
                metrics = _evaluate(self.model, self.validation_data, self.batch_size)
                self.final_metrics = {f"val_{k}": v for k, v in metrics.items()}
            self._final_weights = _read(self.model.weights)

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


@keras.saving.register_keras_serializable(package="weight_averaging")
class SWACyclicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The SWA paper's cyclic learning rate (§3.1).

    `alpha(i) = (1 - t(i)) * alpha_1 + t(i) * alpha_2` with
    `t(i) = (mod(i - 1, c) + 1) / c` for the 1-based iteration `i`; Keras
    passes the 0-based optimizer step, so `i = step + 1`. Within each cycle
    of `c` steps the rate falls linearly to `alpha_2`, reached at the last
    step of the cycle, then jumps back up. `alpha_1 == alpha_2` gives the
    constant SWA learning rate.

    Example:

    ```python
    schedule = SWACyclicSchedule(0.05, 0.001, cycle_steps=3 * steps_per_epoch)
    ```

    Args:
        alpha_1: the largest learning rate (start of a cycle).
        alpha_2: the smallest learning rate (end of a cycle), `<= alpha_1`.
        cycle_steps: the cycle length `c` in optimizer steps.
    """

    def __init__(self, alpha_1, alpha_2, cycle_steps):
        _check_rates(alpha_1, alpha_2)
        _check_int("cycle_steps", cycle_steps, minimum=1)
        self.alpha_1 = float(alpha_1)
        self.alpha_2 = float(alpha_2)
        self.cycle_steps = cycle_steps

    def __call__(self, step):
        return _cyclic(step, self.alpha_1, self.alpha_2, self.cycle_steps)

    def get_config(self):
        return {"alpha_1": self.alpha_1, "alpha_2": self.alpha_2, "cycle_steps": self.cycle_steps}


@keras.saving.register_keras_serializable(package="weight_averaging")
class SWASchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A conventional schedule until `start_step`, then the SWA learning rate.

    From `start_step` (0-based optimizer step) on the rate is `swa_lr`, or,
    with `cycle_steps`, the §3.1 cyclic rate from `alpha_1 =
    base_schedule(start_step)` down to `alpha_2 = swa_lr`, cycles counted from
    `start_step` (so they end with the epochs where `SWA` captures when
    `cycle_steps = cycle_epochs * steps_per_epoch` and `start_step =
    start_epoch * steps_per_epoch`).

    Example:

    ```python
    # SWA paper §4.1: conventional training for 75% of the budget.
    schedule = SWASchedule(base, start_step=int(0.75 * epochs) * steps, swa_lr=0.05)
    ```

    Args:
        base_schedule: a `LearningRateSchedule` or a float.
        start_step: first optimizer step of the SWA phase.
        swa_lr: the constant SWA learning rate (`alpha_2` when cyclic).
        cycle_steps: cycle length in optimizer steps for a cyclic rate.
            Defaults to `None` (constant `swa_lr`).
    """

    def __init__(self, base_schedule, start_step, swa_lr, cycle_steps=None):
        if not (callable(base_schedule) or isinstance(base_schedule, (int, float))):
            raise ValueError(
                "Invalid value for argument `base_schedule`. Received: "
                f"base_schedule={base_schedule!r}. Expected a LearningRateSchedule "
                "or a float."
            )
        _check_int("start_step", start_step, minimum=0)
        _check_rates(swa_lr, swa_lr, name="swa_lr")
        if cycle_steps is not None:
            _check_int("cycle_steps", cycle_steps, minimum=1)
        self.base_schedule = base_schedule
        self.start_step = start_step
        self.swa_lr = float(swa_lr)
        self.cycle_steps = cycle_steps

    def __call__(self, step):
        step = ops.cast(step, "int32")
        base = self._base(step)
        if self.cycle_steps is None:
            swa = ops.full_like(base, self.swa_lr)
        else:
            alpha_1 = self._base(ops.convert_to_tensor(self.start_step, "int32"))
            swa = _cyclic(step - self.start_step, alpha_1, self.swa_lr, self.cycle_steps)
        return ops.where(step < self.start_step, base, swa)

    def _base(self, step):
        if callable(self.base_schedule):
            return ops.cast(self.base_schedule(step), "float32")
        return ops.full((), self.base_schedule, "float32")

    def get_config(self):
        base = self.base_schedule
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {
            "base_schedule": base,
            "start_step": self.start_step,
            "swa_lr": self.swa_lr,
            "cycle_steps": self.cycle_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["base_schedule"], dict):
            config["base_schedule"] = keras.optimizers.schedules.deserialize(
                config["base_schedule"]
            )
        return cls(**config)


def swa_schedule(base_schedule, start_step, swa_lr, cycle_steps=None):
    """`SWASchedule(...)`: `base_schedule` until `start_step`, then `swa_lr`
    (constant, or cyclic from the base rate at `start_step` with `cycle_steps`)."""
    return SWASchedule(base_schedule, start_step, swa_lr, cycle_steps=cycle_steps)


def _running_mean(values, count):
    half = len(values) // 2
    weights, average = values[:half], values[half:]
    # float32 averages (a float16 running mean would lose the small updates)
    return [a + (ops.cast(w, "float32") - a) / (count + 1.0) for w, a in zip(weights, average)]


def _cyclic(step, alpha_1, alpha_2, cycle_steps):
    # SWA paper §3.1 with i = step + 1: t = (mod(i - 1, c) + 1) / c, written
    # as alpha_2 + (1 - t) (alpha_1 - alpha_2) with 1 - t = (c - 1 - mod) / c,
    # which is exactly 0 at a cycle's end (t = c / c can round below 1 in XLA).
    position = ops.mod(ops.cast(step, "int32"), cycle_steps)
    remaining = ops.cast(cycle_steps - 1 - position, "float32") / float(cycle_steps)
    return alpha_2 + remaining * (alpha_1 - alpha_2)


def _is_float(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            f"Expected an integer >= {minimum}."
        )


def _check_rates(alpha_1, alpha_2, name=None):
    valid = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in (alpha_1, alpha_2))
    if valid and alpha_1 >= alpha_2 > 0:
        return
    if name is not None:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={alpha_1!r}. "
            "Expected a float > 0."
        )
    raise ValueError(
        "Invalid values for arguments `alpha_1`, `alpha_2`. Received: "
        f"alpha_1={alpha_1!r}, alpha_2={alpha_2!r}. Expected alpha_1 >= alpha_2 > 0."
    )
