"""The arithmetic of several EMAs of a model's weights, apart from any evaluation.

`EMAAverages` holds one float32 average per decay of every averaged variable,
stacked (`(num_decays,) + shape`), and updates them all in one compiled call:
`x_ema <- a_t * x_ema + (1 - a_t) * x` with the decay warm-up of
callbacks/warmup.py. It swaps an average into the model and back, and its
state (averages and counters) round-trips through NumPy. `MultiEMA`
(callbacks/ema.py) drives it from `fit` and evaluates and selects the EMAs.
"""

import functools

import keras
import numpy as np

from callbacks import compiled
from callbacks import variables
from callbacks import warmup as warmup_rule


class EMAAverages:
    """EMAs of `decays`, updated every `every_steps` optimizer steps.

    Args:
        decays: checked decays, each in (0, 1).
        every_steps: optimizer steps between updates.
        warmup: a `callbacks.warmup.WARMUP_MODES` value.
        bn_mode: `"eman"` (BatchNorm moving statistics are averaged too) or
            `"copy"` (an average uses the model's current statistics).
        batch_scale: B / B_ref for the EMA scaling rule (callbacks/warmup.py
            `decays_at`). Defaults to 1.
    """

    def __init__(self, decays, every_steps, warmup, bn_mode, batch_scale=1.0):
        self.decays, self.every_steps, self.warmup, self.bn_mode = decays, every_steps, warmup, bn_mode
        self.batch_scale = float(batch_scale)
        self.effective_decays = tuple(decay ** (self.batch_scale / every_steps) for decay in decays)
        self.averages = None  # the stacked float32 variables, once built
        self._built_for = None
        self.reset()

    def build(self, model):
        """Creates the averages for `model`'s variables (again only if they changed)."""
        statistics = {id(v) for v in variables.batch_norm_statistics(model)}
        averaged = averaged_variables(model, self.bn_mode)
        averaged_ids = {id(v) for v in averaged}
        if self._built_for == [id(v) for v in averaged]:
            return
        self._averaged = averaged
        # What a swap saves and restores: the averaged variables, and the
        # BatchNorm statistics also when they are the trained model's own
        # ("copy"): a recompute inside a swap must not overwrite them.
        self._swapped = averaged + [v for v in model.weights if id(v) in statistics - averaged_ids]
        num_decays = len(self.decays)
        self.averages = [
            keras.Variable(initializer="zeros", shape=(num_decays,) + tuple(v.shape), dtype="float32",
                           trainable=False, autocast=False, name=f"ema_average_{i}")
            for i, v in enumerate(averaged)
        ]
        self._start = compiled.compile_update(
            lambda values: [_broadcast(x, num_decays) for x in values], averaged, self.averages)
        self._update = compiled.compile_in_place_update(_ema_step, self.averages, averaged)
        dtypes = [v.dtype for v in averaged]
        self._take = compiled.compile_update(
            lambda averages, index: _take(averages, index, dtypes), self.averages, averaged)
        self._built_for = [id(v) for v in averaged]

    def reset(self):
        """Counters back to the start; `start()` puts the model's weights in every average."""
        self.step = 0
        self.num_updates = 0
        self.labels = [0] * len(self.decays)  # all averages start at x0

    def start(self):
        """x0_EMA = x0 for every decay."""
        self.reset()
        self._start()

    def advance_to_step(self, step):
        """The optimizer has taken `step` steps (from 1): update if a period ended."""
        due = step // self.every_steps > self.step // self.every_steps
        self.step = step
        if due:
            factors = self.decay_factors()
            self._update(factors)
            self.num_updates += 1
            self.labels = warmup_rule.regroup(self.labels, factors[0].tolist())

    def decays_at(self, step, num_updates=None):
        """The decays `a_t` (float64) of an update made after optimizer step `step`
        (callbacks/warmup.py `decays_at`)."""
        return warmup_rule.decays_at(self.decays, self.warmup, step, self.every_steps, num_updates,
                                     self.batch_scale)

    def decay_factors(self):
        """float32 `[a_t, 1 - a_t]` of the update due now, one column per decay."""
        # Both factors are formed in float64 and only then rounded: rounding
        # a to float32 first would put a relative error of up to ~1e-4 into
        # the small 1 - a.
        decays = self.decays_at(self.step, self.num_updates)
        return np.stack([decays, 1.0 - decays]).astype("float32")

    def identical_groups(self):
        """Indices of the decays grouped by the average they hold, bitwise.

        Two decays hold the same average exactly when every update so far
        applied them the same factor: under the warm-up, every decay above
        the current (t+1)/(t+10) (paper §4.1).
        """
        groups = {}
        for index, label in enumerate(self.labels):
            groups.setdefault(label, []).append(index)
        return list(groups.values())

    def swapped_in(self, index):
        """A context in which the model holds average `index`; restored exactly on exit."""
        take = functools.partial(self._take, np.asarray(index, dtype="int32"))
        return variables.swapped(self._swapped, take)

    def state(self):
        """Settings, counters and averages as a flat dict of NumPy values."""
        state = {
            "decays": np.asarray(self.decays, dtype="float64"),
            "every_steps": self.every_steps,
            "warmup": self.warmup,
            "bn_mode": self.bn_mode,
            "batch_scale": self.batch_scale,
            "step": self.step,
            "num_updates": self.num_updates,
            "identical_labels": np.asarray(self.labels, dtype="int64"),
        }
        for i, average in enumerate(variables.host_copy(self.averages)):
            state[f"average/{i}"] = average
        return state

    def check_state(self, state, owner="MultiEMA"):
        """Raises ValueError if `state` was saved with other settings."""
        for name in ("every_steps", "warmup", "bn_mode", "batch_scale"):
            # (A state saved before batch scaling existed was unscaled.)
            value = state.get(name, 1.0) if name == "batch_scale" else state[name]
            saved, current = _python(value), getattr(self, name)
            if name == "warmup":
                saved = warmup_rule.checked_warmup(saved)
            if saved != current:
                raise ValueError(_mismatch_message(owner, name, saved, current))
        saved = tuple(float(d) for d in np.asarray(state["decays"]))
        if saved != self.decays:
            raise ValueError(_mismatch_message(owner, "decays", saved, self.decays))

    def load_state(self, state):
        count = sum(key.startswith("average/") for key in state)
        shapes = [tuple(np.shape(state[f"average/{i}"])) for i in range(count)]
        expected = [tuple(a.shape) for a in self.averages]
        if shapes != expected:
            raise ValueError(
                f"The state holds averages of shapes {shapes}; this model "
                f"needs {expected}. Restore it for the same model."
            )
        for average, i in zip(self.averages, range(count)):
            average.assign(np.asarray(state[f"average/{i}"], dtype="float32"))
        self.step = int(state["step"])
        self.num_updates = int(state["num_updates"])
        # A state saved before labels existed: treat every average as distinct.
        self.labels = [int(x) for x in state.get("identical_labels", range(len(self.decays)))]


def averaged_variables(model, bn_mode):
    """The variables an average of `model` holds, in `model.weights` order: the trainable
    ones, and with `bn_mode="eman"` the BatchNorm moving statistics too."""
    averaged_ids = {id(v) for v in model.trainable_variables}
    if bn_mode == "eman":
        averaged_ids |= {id(v) for v in variables.batch_norm_statistics(model)}
    return [v for v in model.weights if id(v) in averaged_ids]


def steps_in_epoch(params, batch):
    """Optimizer steps taken in the epoch after `on_train_batch_end(batch)` (`params`: the callback's)."""
    # `batch` is the epoch's last step so far (0-based), also when one call
    # runs `steps_per_execution` steps; Keras reports a whole execution for
    # the epoch's last, partial one: cap by the epoch's number of steps
    # where known.
    steps_per_epoch = (params or {}).get("steps")
    return min(batch + 1, steps_per_epoch or batch + 1)


def _ema_step(averages, currents, factors):
    new_averages = []
    for average, current in zip(averages, currents):
        shape = (-1,) + (1,) * len(current.shape)
        decay = keras.ops.reshape(factors[0], shape)
        rest = keras.ops.reshape(factors[1], shape)  # 1 - decay, from float64
        current = keras.ops.cast(current, "float32")
        new_averages.append(decay * average + rest * current)
    return new_averages


def _broadcast(value, num_decays):
    value = keras.ops.cast(value, "float32")
    return keras.ops.broadcast_to(value, (num_decays,) + tuple(value.shape))


def _take(averages, index, dtypes):
    return [keras.ops.cast(keras.ops.take(average, index, axis=0), dtype)
            for average, dtype in zip(averages, dtypes)]


def _python(value):
    """A NumPy scalar or 0-d array (as from `np.load`) as a Python value."""
    return np.asarray(value).item() if not isinstance(value, str) else value


def _mismatch_message(owner, name, saved, current):
    return (
        f"The state was saved with {name}={saved!r}, but this {owner} has "
        f"{name}={current!r}. Create the {owner} with the same arguments."
    )
