"""The arithmetic of several EMAs of a model's weights, apart from any evaluation.

`EMAAverages` holds float32 averages of every averaged variable, stacked
(`(num_averages,) + shape`), and updates them all in one compiled call:
`x_ema <- a_t * x_ema + (1 - a_t) * x`. The per-update decays `a_t` come from
a rule passed in (as torch `swa_utils`' `avg_fn`): `MultiEMA` (callbacks/ema.py)
gives the decay warm-up of callbacks/warmup.py, `PowerFunctionEMA`
(callbacks/power_ema.py) the power function's β_t. It counts optimizer steps
through `fit`, swaps an average into the model and back, and its counters and
averages round-trip through NumPy.
"""

import functools

import keras
import numpy as np

from callbacks import compiled
from callbacks import layouts
from callbacks import variables
from callbacks import warmup as warmup_rule


class EMAAverages:
    """`num_averages` EMAs, updated every `every_steps` optimizer steps with the decays of `decays_at`.

    Args:
        num_averages: how many averages.
        decays_at: `decays_at(step, num_updates)`: the `num_averages` decays
            `a_t` (float64) of the update made after optimizer step `step`
            (counted from 1) when `num_updates` updates were made before it.
        every_steps: optimizer steps between updates. Defaults to 1.
        bn_mode: `"eman"` (BatchNorm moving statistics are averaged too) or
            `"copy"` (an average uses the model's current statistics).
            Defaults to `"eman"`.
    """

    def __init__(self, num_averages, decays_at, every_steps=1, bn_mode="eman"):
        self.num_averages, self.decays_at = num_averages, decays_at
        self.every_steps, self.bn_mode = every_steps, bn_mode
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
        self.averaged = averaged
        positions = {id(v): i for i, v in enumerate(model.weights)}
        self.weight_indices = [positions[id(v)] for v in averaged]  # in `model.weights`
        # What a swap saves and restores: the averaged variables, and the
        # BatchNorm statistics also when they are the trained model's own
        # ("copy"): a recompute inside a swap must not overwrite them.
        self._swapped = averaged + [v for v in model.weights if id(v) in statistics - averaged_ids]
        num_averages = self.num_averages
        # Under a keras.distribution each stack is laid out like its weight,
        # the stacking axis unsharded (callbacks/layouts.py).
        self.averages = [
            layouts.average_variable(v, (num_averages,) + tuple(v.shape), f"ema_average_{i}", leading_axes=1)
            for i, v in enumerate(averaged)
        ]
        self._start = compiled.compile_update(
            lambda values: [_broadcast(x, num_averages) for x in values], averaged, self.averages)
        self._update = compiled.compile_in_place_update(_ema_step, self.averages, averaged)
        dtypes = [v.dtype for v in averaged]
        self._take = compiled.compile_update(
            lambda averages, index: _take(averages, index, dtypes), self.averages, averaged)
        self._built_for = [id(v) for v in averaged]

    def reset(self):
        """Counters back to the start; `start()` puts the model's weights in every average."""
        self.step = 0
        self.num_updates = 0
        self.labels = [0] * self.num_averages  # all averages start at x0
        self._steps_before_epoch = 0

    def start(self):
        """x0_EMA = x0 for every average."""
        self.reset()
        self._start()

    def begin_epoch(self):
        """`fit` starts an epoch: its batches count from the step reached."""
        self._steps_before_epoch = self.step

    def end_batch(self, params, batch, sync):
        """After `on_train_batch_end(batch)` (`params`: the callback's): counts the
        optimizer steps and updates if a period ended, calling `sync()` first
        (on JAX, reading `Callback.model` brings the weights the update reads).
        Returns whether it updated."""
        # `batch` is the epoch's last step so far (0-based), also when one call
        # runs `steps_per_execution` steps; Keras reports a whole execution for
        # the epoch's last, partial one: cap by the epoch's number of steps
        # where known.
        steps_per_epoch = (params or {}).get("steps")
        step = self._steps_before_epoch + min(batch + 1, steps_per_epoch or batch + 1)
        due = step // self.every_steps > self.step // self.every_steps
        self.step = step
        if due:
            sync()
            factors = self.decay_factors()
            self._update(factors)
            self.num_updates += 1
            self.labels = warmup_rule.regroup(self.labels, factors[0].tolist())
        return due

    def decay_factors(self):
        """float32 `[a_t, 1 - a_t]` of the update due now, one column per average."""
        # Both factors are formed in float64 and only then rounded: rounding
        # a to float32 first would put a relative error of up to ~1e-4 into
        # the small 1 - a.
        decays = self.decays_at(self.step, self.num_updates)
        return np.stack([decays, 1.0 - decays]).astype("float32")

    def identical_groups(self):
        """Indices of the averages grouped by their values, bitwise.

        Two averages are the same exactly when every update so far applied
        them the same factor: under the warm-up, those of every decay above
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
        """Counters and averages as a flat dict of NumPy arrays."""
        state = {
            "step": np.asarray(self.step, dtype="int64"),
            "num_updates": np.asarray(self.num_updates, dtype="int64"),
            "identical_labels": np.asarray(self.labels, dtype="int64"),
        }
        # Gathered to NumPy here, only when a state is asked for (a checkpoint); no device copy first.
        for i, average in enumerate(variables.to_numpy([a.value for a in self.averages])):
            state[f"average/{i}"] = average
        return state

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
        self.labels = [int(x) for x in state.get("identical_labels", range(self.num_averages))]
        self._steps_before_epoch = self.step


def averaged_variables(model, bn_mode):
    """The variables an average of `model` holds, in `model.weights` order: the trainable
    ones, and with `bn_mode="eman"` the BatchNorm moving statistics too."""
    averaged_ids = {id(v) for v in model.trainable_variables}
    if bn_mode == "eman":
        averaged_ids |= {id(v) for v in variables.batch_norm_statistics(model)}
    return [v for v in model.weights if id(v) in averaged_ids]


def _ema_step(averages, currents, factors):
    new_averages = []
    for average, current in zip(averages, currents):
        shape = (-1,) + (1,) * len(current.shape)
        decay = keras.ops.reshape(factors[0], shape)
        rest = keras.ops.reshape(factors[1], shape)  # 1 - decay, from float64
        current = keras.ops.cast(current, "float32")
        new_averages.append(decay * average + rest * current)
    return new_averages


def _broadcast(value, num_averages):
    value = keras.ops.cast(value, "float32")
    return keras.ops.broadcast_to(value, (num_averages,) + tuple(value.shape))


def _take(averages, index, dtypes):
    return [keras.ops.cast(keras.ops.take(average, index, axis=0), dtype)
            for average, dtype in zip(averages, dtypes)]
