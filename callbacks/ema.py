"""`MultiEMA`: several exponential moving averages of the weights in one run.

Morales-Brotons, Vogels and Hendrikx (TMLR 2024) keep 5 EMAs of the weights
(decays 0.968 ... 0.998) updated every T=16 steps with a decay warm-up
min(α, (t+1)/(t+10)) (§4.1); each EMA's BatchNorm statistics are an EMA of the
trained model's (Cai et al. 2021, §3.4); every EMA is evaluated after every
epoch and, per decay, the epochs of best validation accuracy and of lowest
validation loss are selected (§4.1). Evidence: tests/test_ema.py re-derives
the averages in NumPy from a recorded weight trajectory and evaluates them
independently.
"""

import contextlib
import functools
import os
import sys
import warnings

import keras
import numpy as np

from callbacks import compiled
from callbacks import swap

DEFAULT_DECAYS = (0.968, 0.984, 0.992, 0.996, 0.998)  # paper §4.1
BN_MODES = ("eman", "copy")
# What `t` counts in the decay warm-up min(α, (t+1)/(t+10)): the paper's
# optimizer steps (Eq. (1) indexes SGD iterates; §4.1), the EMA updates (one
# per `every_steps`; this project's behaviour before it followed the paper),
# or no warm-up (Adda et al.).
WARMUP_MODES = ("steps", "updates", "none")
CRITERIA = ("accuracy", "loss")
_FILE_SUFFIXES = {"accuracy": "acc", "loss": "loss"}


class MultiEMA(keras.callbacks.Callback):
    """Keeps one EMA of the model's weights per decay and evaluates each.

    At train begin every average starts at the model's weights. Every
    `every_steps` optimizer steps all averages of all variables are updated
    in one compiled call: `x_ema <- a_t * x_ema + (1 - a_t) * x`, where
    `a_t = min(a, (t + 1) / (t + 10))` with warm-up, else `a`. By default `t`
    is the 0-based index of the optimizer step just taken (paper Eq. (1) and
    §4.1, as ema-pytorch and timm count), so decay `a` leaves the warm-up
    after step `(10a - 1) / (1 - a)` whatever `every_steps` is
    (`warmup_release_step`). The effective per-step decay is `a ** (1 / every_steps)`
    (`effective_decays`). The trainable variables are averaged; with
    `bn_mode="eman"` so are the moving statistics of BatchNormalization layers
    (with `"copy"` an EMA uses the trained model's current statistics); no
    other variable is ever averaged. The averages are float32.

    After every epoch each EMA is swapped into the model, evaluated with the
    model's own compiled test function, and the trained weights are restored
    exactly. The results enter the epoch logs, before any callback placed
    after this one sees them, as `ema_<decay>_val_<metric>` and
    `ema_best_val_accuracy` (the maximum over decays). Per decay, the EMA
    weights at the epoch of best validation accuracy and at the epoch of
    lowest validation loss are kept in host memory (`selected_weights`,
    `save_selected`, `summary`).

    Example:

    ```python
    ema = MultiEMA(validation_data=(x_val, y_val))
    model.fit(x, y, epochs=200, callbacks=[ema, keras.callbacks.CSVLogger(p)])
    ema.summary()["0.998"]["best_val_accuracy"]  # {"epoch": ..., ...}
    ema.save_selected("run/ema")  # ema_0.998_acc.weights.h5, ...
    with ema.swapped_in(0.998):
        model.evaluate(x_test, y_test)
    ```

    Args:
        decays: the EMA decays, each in (0, 1), distinct. Defaults to
            `(0.968, 0.984, 0.992, 0.996, 0.998)` (paper §4.1).
        every_steps: optimizer steps between EMA updates. With
            `steps_per_execution > 1` the update happens at the end of the
            execution in which a multiple of `every_steps` is reached.
            Defaults to 16.
        warmup: the decay warm-up `min(a, (t+1)/(t+10))`: `"steps"` (`t`
            counts optimizer steps, the paper's), `"updates"` (`t` counts EMA
            updates: the warm-up lasts `every_steps` times longer) or
            `"none"`. `True` means `"steps"`, `False` `"none"`. Defaults to
            `"steps"`.
        bn_mode: `"eman"` (the EMA's BatchNorm moving statistics are an EMA,
            same decay and warm-up, of the trained model's) or `"copy"` (the
            EMA uses the trained model's current statistics). Defaults to
            `"eman"`.
        validation_data: a dataset, an `(x, y)` or `(x, y, sample_weight)`
            tuple of arrays, or `None` to evaluate on the validation data
            passed to `fit`, at the epochs where `fit` validates. Defaults to
            `None`.
        validation_batch_size: batch size for tuple `validation_data`.
            Defaults to `None` (Keras' default, 32).
        select_epochs: `None` to select, per decay, the epochs of best
            validation accuracy and lowest validation loss; or a mapping
            `{decay: {"accuracy": epoch, "loss": epoch}}` (0-based epochs)
            fixing the selected epochs in advance, as the paper's final run
            on the full training set does with the epochs chosen on the
            validation run (§4.1: "early stopping is not tuned again on the
            test set"). Defaults to `None`.
        verbose: if 1, print the effective per-step decays at train begin
            and, on a terminal, which EMA is being evaluated. Defaults to 0.
    """

    def __init__(
        self,
        decays=DEFAULT_DECAYS,
        every_steps=16,
        warmup="steps",
        bn_mode="eman",
        validation_data=None,
        validation_batch_size=None,
        select_epochs=None,
        verbose=0,
    ):
        super().__init__()
        self.decays = _checked_decays(decays)
        self.every_steps = _checked_every_steps(every_steps)
        if bn_mode not in BN_MODES:
            raise ValueError(
                "Invalid value for argument `bn_mode`. "
                f"Received: bn_mode={bn_mode!r}. Expected one of {BN_MODES}."
            )
        self.warmup = _checked_warmup(warmup)
        self.bn_mode = bn_mode
        self.validation_data = validation_data
        self.validation_batch_size = validation_batch_size
        self.select_epochs = _checked_select_epochs(select_epochs, self.decays)
        self.verbose = verbose
        self.effective_decays = tuple(
            decay ** (1.0 / self.every_steps) for decay in self.decays
        )
        self._evaluate_kwargs = _evaluate_kwargs(
            validation_data, validation_batch_size
        )
        self._built_for = None  # ids of the model variables averaged
        self._averaged = None
        self._averages = None
        self._restored_state = None
        self._share_identical = True  # tests compare with False
        self._reset_counters()

    def __deepcopy__(self, memo):
        # keras-tuner deep-copies callbacks before each trial; a dataset
        # cannot be deep-copied (and is immutable), so it is shared. The copy
        # is a fresh, untrained callback: use get_state() to carry a state.
        return MultiEMA(
            decays=self.decays,
            every_steps=self.every_steps,
            warmup=self.warmup,
            bn_mode=self.bn_mode,
            validation_data=self.validation_data,
            validation_batch_size=self.validation_batch_size,
            select_epochs=self.select_epochs,
            verbose=self.verbose,
        )

    # Hooks.

    def on_train_begin(self, logs=None):
        self._build()
        self._reset_or_restore()
        if self.verbose:
            print(self._describe())

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_before_epoch = self._step

    def on_train_batch_end(self, batch, logs=None):
        self._advance_to_step(self._steps_before_epoch + self._steps_in(batch))

    def on_epoch_end(self, epoch, logs=None):
        if self._has_validation_data(logs or {}):
            results = self._evaluate_and_select(epoch)
            if logs is not None:
                logs.update(results)

    def on_train_end(self, logs=None):
        if not self._epochs_evaluated:
            warnings.warn(
                "MultiEMA evaluated no EMA: pass `validation_data` to "
                "MultiEMA or to `fit`.",
                stacklevel=2,
            )

    # Public API.

    @contextlib.contextmanager
    def swapped_in(self, decay):
        """Inside the block the model holds the EMA of `decay`.

        The EMA's BatchNorm statistics are used as `bn_mode` says. On exit,
        also by an exception, the trained weights are restored exactly.
        """
        with self._swapped_in_index(self._decay_index(decay)):
            yield self.model

    def selected_weights(self, decay, criterion):
        """NumPy arrays, in `model.weights` order, of a selected EMA.

        `criterion` is `"accuracy"` (epoch of best validation accuracy) or
        `"loss"` (epoch of lowest validation loss).
        """
        return [w.copy() for w in self._selection(decay, criterion)["weights"]]

    def save_selected(self, directory):
        """Writes `ema_<decay>_{acc,loss}.weights.h5`; returns their paths."""
        model = self._synced_model()
        os.makedirs(directory, exist_ok=True)
        paths = []
        for index, decay in enumerate(self.decays):
            for criterion in CRITERIA:
                selected = self._selected[criterion][index]
                if selected is None:
                    continue
                name = f"ema_{decay:g}_{_FILE_SUFFIXES[criterion]}.weights.h5"
                paths.append(os.path.join(directory, name))
                assign = functools.partial(
                    model.set_weights, selected["weights"]
                )
                with swap.swapped(model.weights, assign):
                    model.save_weights(paths[-1])
        return paths

    def summary(self):
        """JSON-able, keyed by `f"{decay:g}"`: each EMA's selected epochs."""
        shared = {i: g for g in self.identical_groups() for i in g}
        return {
            f"{decay:g}": {
                "decay": decay,
                "every_steps": self.every_steps,
                "effective_per_step_decay": effective,
                # Decays still holding this very average (never released by
                # the warm-up in this run): their rows are the same numbers.
                "identical_to": [
                    f"{self.decays[j]:g}" for j in shared.get(i, [i]) if j != i
                ],
                "best_val_accuracy": self._selection_summary("accuracy", i),
                "lowest_val_loss": self._selection_summary("loss", i),
            }
            for i, (decay, effective) in enumerate(
                zip(self.decays, self.effective_decays)
            )
        }

    def get_state(self):
        """The whole state as a flat dict of NumPy arrays, ints and floats.

        `np.savez(path, **state)` stores it; `set_state(dict(np.load(path)))`
        restores it.
        """
        if self._averages is None:
            if self._restored_state is not None:
                return dict(self._restored_state)
            raise RuntimeError("MultiEMA has no state before it is trained.")
        state = {
            "decays": np.asarray(self.decays, dtype="float64"),
            "every_steps": self.every_steps,
            "warmup": self.warmup,
            "bn_mode": self.bn_mode,
            "step": self._step,
            "num_updates": self._num_updates,
            "identical_labels": np.asarray(self._labels, dtype="int64"),
        }
        for i, average in enumerate(swap.host_copy(self._averages)):
            state[f"average/{i}"] = average
        for criterion in CRITERIA:
            for index, selected in enumerate(self._selected[criterion]):
                if selected is not None:
                    state.update(_flat_selection(criterion, index, selected))
        return state

    def set_state(self, state):
        """Restores `get_state()`'s result for the next `on_train_begin`.

        Rule: a restored state replaces the reset of the next train begin
        (a resumed `fit(initial_epoch=...)` continues exactly); the fit after
        that starts afresh. If the callback already holds averages, the state
        is also applied at once.
        """
        for name in ("every_steps", "warmup", "bn_mode"):
            saved, current = _python(state[name]), getattr(self, name)
            if name == "warmup":
                saved = _checked_warmup(saved)
            if saved != current:
                raise ValueError(_mismatch_message(name, saved, current))
        saved = tuple(float(d) for d in np.asarray(state["decays"]))
        if saved != self.decays:
            raise ValueError(_mismatch_message("decays", saved, self.decays))
        self._restored_state = dict(state)
        if self._averages is not None:
            self._load_state(self._restored_state)

    # Building and resetting.

    def _build(self):
        model = self._synced_model()
        averaged_ids = {id(v) for v in model.trainable_variables}
        if self.bn_mode == "eman":
            averaged_ids |= _batch_norm_statistics(model)
        averaged = [v for v in model.weights if id(v) in averaged_ids]
        if self._built_for == [id(v) for v in averaged]:
            return
        self._averaged = averaged
        self._averages = [
            keras.Variable(
                initializer="zeros",
                shape=(len(self.decays),) + tuple(v.shape),
                dtype="float32",
                trainable=False,
                autocast=False,
                name=f"ema_average_{i}",
            )
            for i, v in enumerate(averaged)
        ]
        num_decays = len(self.decays)
        self._start_averages = compiled.compile_update(
            lambda values: [_broadcast(x, num_decays) for x in values],
            averaged,
            self._averages,
        )
        self._update_averages = compiled.compile_in_place_update(
            _ema_step, self._averages, averaged
        )
        dtypes = [v.dtype for v in averaged]
        self._take_average = compiled.compile_update(
            lambda averages, index: _take(averages, index, dtypes),
            self._averages,
            averaged,
        )
        self._built_for = [id(v) for v in averaged]

    def _reset_counters(self):
        self._step = 0
        self._steps_before_epoch = 0
        self._num_updates = 0
        self._epochs_evaluated = 0
        self._selected = {c: [None] * len(self.decays) for c in CRITERIA}
        self._labels = [0] * len(self.decays)  # all averages start at x0

    def _reset_or_restore(self):
        self._epochs_evaluated = 0
        if self._restored_state is None:
            self._reset_counters()
            self._start_averages()  # x0_EMA = x0
        else:
            self._load_state(self._restored_state)
            self._restored_state = None

    def _load_state(self, state):
        count = sum(key.startswith("average/") for key in state)
        shapes = [tuple(np.shape(state[f"average/{i}"])) for i in range(count)]
        expected = [tuple(a.shape) for a in self._averages]
        if shapes != expected:
            raise ValueError(
                f"The state holds averages of shapes {shapes}; this model "
                f"needs {expected}. Restore it for the same model."
            )
        for average, i in zip(self._averages, range(count)):
            average.assign(np.asarray(state[f"average/{i}"], dtype="float32"))
        self._step = int(state["step"])
        self._steps_before_epoch = self._step
        self._num_updates = int(state["num_updates"])
        # A state saved before labels existed: treat every average as distinct.
        self._labels = [
            int(x) for x in state.get("identical_labels", range(len(self.decays)))
        ]
        self._selected = {
            c: [_unflat_selection(state, c, i) for i in range(len(self.decays))]
            for c in CRITERIA
        }

    # Updating.

    def _steps_in(self, batch):
        # `batch` is the epoch's last step so far (0-based), also when one
        # call runs `steps_per_execution` steps; Keras reports a whole
        # execution for the epoch's last, partial one: cap by the epoch's
        # number of steps where known.
        steps_per_epoch = (self.params or {}).get("steps")
        return min(batch + 1, steps_per_epoch or batch + 1)

    def _advance_to_step(self, step):
        due = step // self.every_steps > self._step // self.every_steps
        self._step = step
        if due:
            self._synced_model()
            factors = self._decay_factors()
            self._update_averages(factors)
            self._num_updates += 1
            self._labels = regroup(self._labels, factors[0].tolist())

    def decays_at(self, step, num_updates=None):
        """The decays `a_t` (float64) of an update made after optimizer step `step`.

        `step` counts optimizer steps from 1; `num_updates` (the updates made
        before this one) matters only with `warmup="updates"` and defaults to
        `step // every_steps - 1`.
        """
        decays = np.asarray(self.decays, dtype="float64")
        if self.warmup == "none":
            return decays
        if self.warmup == "steps":
            t = step - 1  # the iterate's index t, paper Eq. (1)
        else:
            t = step // self.every_steps - 1 if num_updates is None else num_updates
        # decay warm-up min(α, (t+1)/(t+10)), paper §4.1
        return np.minimum(decays, (t + 1) / (t + 10))

    def _decay_factors(self):
        # Both factors are formed in float64 and only then rounded: rounding
        # a to float32 first would put a relative error of up to ~1e-4 into
        # the small 1 - a.
        decays = self.decays_at(self._step, self._num_updates)
        return np.stack([decays, 1.0 - decays]).astype("float32")

    # Evaluating and selecting.

    def _has_validation_data(self, logs):
        if self._evaluate_kwargs is not None:
            return True
        # fit() validated this epoch (it skips epochs by `validation_freq`).
        return any(key.startswith("val_") for key in logs)

    def identical_groups(self):
        """Indices of the decays grouped by the average they hold, bitwise.

        Two decays hold the same average exactly when every update so far
        applied them the same factor: under the warm-up, every decay above
        the current (t+1)/(t+10) (paper §4.1). Each group is evaluated once.
        """
        groups = {}
        for index, label in enumerate(self._labels):
            groups.setdefault(label, []).append(index)
        return list(groups.values())

    def _evaluate_and_select(self, epoch):
        results, accuracies = {}, [None] * len(self.decays)
        groups = self.identical_groups() if self._share_identical else [
            [i] for i in range(len(self.decays))
        ]
        for number, group in enumerate(groups):
            if self.verbose and sys.stdout.isatty():
                names = ", ".join(f"{self.decays[i]:g}" for i in group)
                print(f"\r\033[Kepoch {epoch + 1}: evaluating EMA {names} "
                      f"({number + 1}/{len(groups)} distinct)", end="", flush=True)
            with self._swapped_in_index(group[0]):
                metrics = self._evaluate()
                accuracy = metrics.get(_accuracy_name(metrics))
                weights = _Lazy(lambda: swap.host_copy(self.model.weights))
                for index in group:
                    self._select(index, epoch, metrics["loss"], accuracy, weights)
            for index in group:
                for name, value in metrics.items():
                    results[f"ema_{self.decays[index]:g}_val_{name}"] = value
                accuracies[index] = accuracy
        if None not in accuracies:
            results["ema_best_val_accuracy"] = max(accuracies)
        self._epochs_evaluated += 1
        return results

    def _evaluate(self):
        model = self._synced_model()
        if self._evaluate_kwargs is None:
            return _evaluate_on_fit_validation_data(model)
        return model.evaluate(
            **self._evaluate_kwargs, verbose=0, return_dict=True
        )

    def _select(self, index, epoch, loss, accuracy, weights):
        if self.select_epochs is not None:
            fixed = self.select_epochs[self.decays[index]]
            better_accuracy = fixed.get("accuracy") == epoch
            lower_loss = fixed.get("loss") == epoch
        else:
            best = self._selected["accuracy"][index]
            better_accuracy = accuracy is not None and (
                best is None or accuracy > best["val_accuracy"]
            )
            lowest = self._selected["loss"][index]
            lower_loss = lowest is None or loss < lowest["val_loss"]
        if not (better_accuracy or lower_loss):
            return
        selected = {
            "epoch": epoch,
            "val_loss": float(loss),
            "val_accuracy": None if accuracy is None else float(accuracy),
            "weights": weights(),  # shared by identical averages
        }
        if better_accuracy:
            self._selected["accuracy"][index] = selected
        if lower_loss:
            self._selected["loss"][index] = selected

    # Small helpers.

    def _swapped_in_index(self, index):
        if self._averages is None:
            raise RuntimeError("MultiEMA has no averages before it is trained.")
        self._synced_model()
        take = functools.partial(
            self._take_average, np.asarray(index, dtype="int32")
        )
        return swap.swapped(self._averaged, take)

    def _synced_model(self):
        # On JAX, fit() keeps the weights outside the model during an epoch;
        # reading `Callback.model` syncs them back (keras Callback.model).
        return self.model

    def _decay_index(self, decay):
        if decay not in self.decays:
            raise ValueError(
                f"Unknown decay {decay!r}; choose from {self.decays}."
            )
        return self.decays.index(decay)

    def _selection(self, decay, criterion):
        if criterion not in CRITERIA:
            raise ValueError(
                "Invalid value for argument `criterion`. "
                f"Received: criterion={criterion!r}. Expected one of "
                f"{CRITERIA}."
            )
        selected = self._selected[criterion][self._decay_index(decay)]
        if selected is None:
            raise RuntimeError(
                f"No EMA of decay {decay:g} has been selected by {criterion} "
                "yet: it is selected after each epoch evaluated."
            )
        return selected

    def _selection_summary(self, criterion, index):
        selected = self._selected[criterion][index]
        if selected is None:
            return None
        return {
            "epoch": selected["epoch"] + 1,
            "val_loss": selected["val_loss"],
            "val_accuracy": selected["val_accuracy"],
        }

    def _describe(self):
        pairs = ", ".join(
            f"{d:g} -> {e:.6f}"
            for d, e in zip(self.decays, self.effective_decays)
        )
        return (
            f"MultiEMA: every {self.every_steps} steps; effective per-step "
            f"decays: {pairs}"
        )


def _checked_decays(decays):
    message = (
        "Invalid value for argument `decays`. Received: "
        f"decays={decays!r}. Expected "
    )
    try:
        values = tuple(float(d) for d in decays)
    except (TypeError, ValueError):
        raise ValueError(message + "a sequence of floats.") from None
    if not values:
        raise ValueError(message + "at least one decay.")
    if not all(0.0 < d < 1.0 for d in values):
        raise ValueError(message + "values in (0, 1).")
    if len({f"{d:g}" for d in values}) != len(values):
        raise ValueError(message + "distinct values (to 6 significant digits).")
    return values


class _Lazy:
    """Calls `fn` once, on first use; later calls return the same value."""

    def __init__(self, fn):
        self._fn, self._value, self._done = fn, None, False

    def __call__(self):
        if not self._done:
            self._value, self._done = self._fn(), True
        return self._value


def _checked_select_epochs(select_epochs, decays):
    if select_epochs is None:
        return None
    message = (
        "Invalid value for argument `select_epochs`. Received: "
        f"select_epochs={select_epochs!r}. Expected "
    )
    try:
        fixed = {
            float(decay): {str(c): int(e) for c, e in epochs.items()}
            for decay, epochs in select_epochs.items()
        }
    except (AttributeError, TypeError, ValueError):
        raise ValueError(message + "{decay: {criterion: epoch}}.") from None
    if set(fixed) != set(decays):
        raise ValueError(message + f"one entry per decay in {decays}.")
    for epochs in fixed.values():
        if not set(epochs) <= set(CRITERIA) or min(epochs.values(), default=0) < 0:
            raise ValueError(
                message + f"criteria from {CRITERIA} mapped to epochs >= 0."
            )
    return fixed


def _checked_warmup(warmup):
    if warmup is True:
        return "steps"
    if warmup is False or warmup is None:
        return "none"
    if warmup not in WARMUP_MODES:
        raise ValueError(
            "Invalid value for argument `warmup`. Received: "
            f"warmup={warmup!r}. Expected one of {WARMUP_MODES} (or a bool)."
        )
    return warmup


def _checked_every_steps(every_steps):
    if (
        isinstance(every_steps, bool)
        or not isinstance(every_steps, (int, np.integer))
        or every_steps < 1
    ):
        raise ValueError(
            "Invalid value for argument `every_steps`. Received: "
            f"every_steps={every_steps!r}. Expected an integer >= 1."
        )
    return int(every_steps)


def _evaluate_kwargs(validation_data, batch_size):
    if validation_data is None:
        return None
    if isinstance(validation_data, (tuple, list)):
        if len(validation_data) not in (2, 3):
            raise ValueError(
                "Invalid value for argument `validation_data`. Received a "
                f"{type(validation_data).__name__} of length "
                f"{len(validation_data)}. Expected (x, y) or "
                "(x, y, sample_weight)."
            )
        x, y, *sample_weight = validation_data
        return {
            "x": x,
            "y": y,
            "sample_weight": sample_weight[0] if sample_weight else None,
            "batch_size": batch_size,
        }
    if isinstance(validation_data, np.ndarray) or batch_size is not None:
        raise ValueError(
            "Invalid value for argument `validation_data`. Received: "
            f"{type(validation_data).__name__}"
            f"{' with validation_batch_size' if batch_size else ''}. Expected "
            "a dataset, an (x, y) tuple (with an optional "
            "validation_batch_size), or None."
        )
    return {"x": validation_data}


def _evaluate_on_fit_validation_data(model):
    # No public API hands a callback fit()'s validation data. Keras 3.15's
    # fit() keeps its validation batches in the private `_eval_epoch_iterator`
    # and evaluate() reuses them only when given the private flag
    # `_use_cached_eval_dataset=True` (keras/src/backend/{tensorflow,jax}/
    # trainer.py); a plain evaluate(x, y) inside fit() reads x and y. This is
    # the callback's one private dependency: fail loudly if it moves.
    if getattr(model, "_eval_epoch_iterator", None) is None:
        raise RuntimeError(
            "MultiEMA could not find fit()'s validation data (a private Keras "
            "detail that may have changed): pass `validation_data` to MultiEMA."
        )
    return model.evaluate(
        verbose=0, return_dict=True, _use_cached_eval_dataset=True
    )


def _batch_norm_statistics(model):
    """Ids of the non-trainable float variables of BatchNormalization layers."""
    # Keras has no public recursive walk over nested layers (a custom layer
    # may hold a BatchNormalization); `_flatten_layers` is the one Keras uses.
    layers = model._flatten_layers(include_self=False, recursive=True)
    return {
        id(v)
        for layer in layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in layer.non_trainable_variables
        if keras.backend.is_float_dtype(v.dtype)
    }


def _ema_step(averages, currents, factors):
    new_averages = []
    for average, current in zip(averages, currents):
        shape = (-1,) + (1,) * len(current.shape)
        decay = keras.ops.reshape(factors[0], shape)
        rest = keras.ops.reshape(factors[1], shape)  # 1 - decay, from float64
        current = keras.ops.cast(current, "float32")
        new_averages.append(decay * average + rest * current)
    return new_averages


def warmup_release_step(decay):
    """The first optimizer step index `t` at which `(t+1)/(t+10) >= decay`.

    From there on the warm-up no longer holds `decay` back (`warmup="steps"`):
    0.968 -> 272, 0.984 -> 553, 0.992 -> 1115, 0.996 -> 2240, 0.998 -> 4490.
    """
    # Exact in rationals: t >= (10a - 1) / (1 - a); a small tolerance absorbs
    # the binary representation of a decimal decay.
    return max(0, int(np.ceil((10.0 * decay - 1.0) / (1.0 - decay) - 1e-9)))


def warmup_released_after(decay, every_steps=1, warmup="steps"):
    """The optimizer step (counted from 1) from which the warm-up no longer
    holds `decay` back: 0 without warm-up; with `warmup="updates"` a whole
    number of update periods of `every_steps`."""
    warmup = _checked_warmup(warmup)
    if warmup == "none":
        return 0
    released = warmup_release_step(decay) + 1
    return released if warmup == "steps" else released * every_steps


def regroup(labels, factors):
    """Labels of the averages that are still bitwise equal after one update.

    `labels[i]` names the average decay `i` held before the update and
    `factors[i]` the factor it received: averages stay identical exactly
    while they receive identical factors.
    """
    keys = list(zip(labels, factors))
    return [sorted(set(keys)).index(key) for key in keys]


def _broadcast(value, num_decays):
    value = keras.ops.cast(value, "float32")
    return keras.ops.broadcast_to(value, (num_decays,) + tuple(value.shape))


def _take(averages, index, dtypes):
    return [
        keras.ops.cast(keras.ops.take(average, index, axis=0), dtype)
        for average, dtype in zip(averages, dtypes)
    ]


def _accuracy_name(metrics):
    if "accuracy" in metrics:
        return "accuracy"
    names = [name for name in metrics if name.endswith("accuracy")]
    return names[0] if len(names) == 1 else None


def _flat_selection(criterion, index, selected):
    prefix = f"selected/{criterion}/{index}/"
    accuracy = selected["val_accuracy"]
    flat = {
        prefix + "epoch": selected["epoch"],
        prefix + "val_loss": selected["val_loss"],
        prefix + "val_accuracy": np.nan if accuracy is None else accuracy,
    }
    for k, weight in enumerate(selected["weights"]):
        flat[prefix + f"weight/{k}"] = weight
    return flat


def _unflat_selection(state, criterion, index):
    prefix = f"selected/{criterion}/{index}/"
    if prefix + "epoch" not in state:
        return None
    count = sum(key.startswith(prefix + "weight/") for key in state)
    accuracy = float(state[prefix + "val_accuracy"])
    return {
        "epoch": int(state[prefix + "epoch"]),
        "val_loss": float(state[prefix + "val_loss"]),
        "val_accuracy": None if np.isnan(accuracy) else accuracy,
        "weights": [
            np.array(state[f"{prefix}weight/{k}"]) for k in range(count)
        ],
    }


def _python(value):
    """A NumPy scalar or 0-d array (as from `np.load`) as a Python value."""
    return np.asarray(value).item() if not isinstance(value, str) else value


def _mismatch_message(name, saved, current):
    return (
        f"The state was saved with {name}={saved!r}, but this MultiEMA has "
        f"{name}={current!r}. Create the MultiEMA with the same arguments."
    )
