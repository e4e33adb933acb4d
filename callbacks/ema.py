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
import sys
import warnings

import numpy as np

from callbacks import arguments
from callbacks import state as state_protocol
from callbacks import validation
from callbacks import variables
from callbacks import warmup as warmup_rule
from callbacks.defaults import BN_MODES, DEFAULT_DECAYS, DEFAULT_EVERY_STEPS
from callbacks.ema_averages import EMAAverages
from callbacks import ema_selection
from callbacks.ema_selection import CRITERIA, SUMMARY_KEYS, EpochSelection, weights_file_name


class MultiEMA(state_protocol.StatefulCallback):
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
    exactly (with `evaluate_every_epoch=False`, only at the epochs that
    `select_epochs` fixes for it: nothing else is computed at the others).
    The results enter the epoch logs, before any callback placed
    after this one sees them, as `ema_<decay>_val_<metric>` and
    `ema_best_val_accuracy` (the maximum over decays, on epochs where every
    decay was evaluated). Per decay, the EMA
    weights at the epoch of best validation accuracy and at the epoch of
    lowest validation loss are kept in host memory (`selected_weights`,
    `save_selected`, `summary`). Every epoch this class takes or returns
    (`select_epochs`, `summary()`) is 0-based, as Keras's `epoch`; a fixed
    epoch that the fit never evaluates is warned about at train end.

    Example:

    ```python
    ema = MultiEMA(validation_data=(x_val, y_val))
    model.fit(x, y, epochs=200, callbacks=[ema, keras.callbacks.CSVLogger(p)])
    ema.summary()["0.998"]["best_val_accuracy"]  # {"epoch": 0-based, ...}
    ema.save_selected("run/ema")  # ema_0.998_acc.weights.h5, ...
    with ema.swapped_in(0.998):
        model.evaluate(x_test, y_test)
    ```

    Under a `keras.distribution` (JAX) every average is laid out like its
    weight, the decay axis unsharded: with `ModelParallel` each device holds
    (its shard of the weights) x (number of decays), the update runs on each
    device's shards alone, and the selected epochs' weights stay on the devices,
    sharded (`selected_values`); `selected_weights`, `save_selected` and
    `get_state` gather them, only when called.

    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"))
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    with keras.distribution.ModelParallel(layout_map=layout_map).scope():
        model = build_model()  # kernels split 4 ways
        model.fit(x, y, callbacks=[MultiEMA(decays=(0.99, 0.999))])  # EMAs split alike
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
            `{decay: {"accuracy": epoch, "loss": epoch}}` (0-based, as Keras's `epoch`)
            fixing the selected epochs in advance, as the paper's final run
            on the full training set does with the epochs chosen on the
            validation run (§4.1: "early stopping is not tuned again on the
            test set"). Defaults to `None`.
        evaluate_every_epoch: `True` to evaluate every EMA at every epoch
            validated (the curves); `False` to evaluate each EMA only at the
            epochs `select_epochs` fixes for it, which keeps the selections
            and skips the other evaluations (a final run whose curves nobody
            reads). `False` needs `select_epochs`. Defaults to `True`.
        batch_scale: `B / B_ref` when the decays were chosen for a reference
            batch B_ref but training uses batch B: they act as `a ** (B / B_ref)`
            with the warm-up counted in reference-batch steps (the EMA scaling
            rule of Busbridge et al. 2023). Defaults to 1.
        accuracy_metric: the name of the model's accuracy metric in
            `evaluate()`'s results, on which the "accuracy" selection is made
            (and `ema_best_val_accuracy` computed); an error names the metrics
            there if it is missing. `None` selects by the loss only. Defaults
            to `"accuracy"`.
        verbose: if 1, print the effective per-step decays at train begin
            and, on a terminal, which EMA is being evaluated. Defaults to 0.
    """

    def __init__(
        self,
        decays=DEFAULT_DECAYS,
        every_steps=DEFAULT_EVERY_STEPS,
        warmup="steps",
        bn_mode="eman",
        validation_data=None,
        validation_batch_size=None,
        select_epochs=None,
        evaluate_every_epoch=True,
        batch_scale=1.0,
        accuracy_metric="accuracy",
        verbose=0,
    ):
        super().__init__()
        self.decays = arguments.checked_decays(decays)
        self.every_steps = arguments.checked_int("every_steps", every_steps, minimum=1)
        self.bn_mode = arguments.checked_choice("bn_mode", bn_mode, BN_MODES)
        self.warmup = warmup_rule.checked_warmup(warmup)
        validation.checked(validation_data, validation_batch_size)
        self.validation_data = validation_data
        self.validation_batch_size = arguments.checked_optional_int("validation_batch_size", validation_batch_size)
        self._selection = EpochSelection(self.decays, select_epochs)
        self.select_epochs = self._selection.select_epochs
        if not isinstance(evaluate_every_epoch, bool):
            raise arguments.invalid("evaluate_every_epoch", evaluate_every_epoch, "True or False")
        if not evaluate_every_epoch and self.select_epochs is None:
            raise arguments.invalid("evaluate_every_epoch", evaluate_every_epoch,
                                    "True when select_epochs is None (False evaluates each EMA only at "
                                    "the epochs select_epochs fixes)")
        self.evaluate_every_epoch = evaluate_every_epoch
        if accuracy_metric is not None and not (isinstance(accuracy_metric, str) and accuracy_metric):
            raise arguments.invalid("accuracy_metric", accuracy_metric, "a metric name or None")
        self.accuracy_metric = accuracy_metric
        self.verbose = verbose
        if isinstance(batch_scale, bool) or not isinstance(batch_scale, (int, float)) or not batch_scale > 0:
            raise arguments.invalid("batch_scale", batch_scale, "a number > 0")
        self.batch_scale = float(batch_scale)
        self.effective_decays = tuple(decay ** (self.batch_scale / self.every_steps) for decay in self.decays)
        self.averages = EMAAverages(len(self.decays), self.decays_at, self.every_steps, self.bn_mode)
        self._share_identical = True  # tests compare with False
        self._epochs_begun = self._epochs_validated = 0
        self._last_epoch = None

    __deepcopy__ = state_protocol.fresh_copy

    def get_config(self):
        return {"decays": self.decays, "every_steps": self.every_steps, "warmup": self.warmup,
                "bn_mode": self.bn_mode, "validation_data": self.validation_data,
                "validation_batch_size": self.validation_batch_size, "select_epochs": self.select_epochs,
                "evaluate_every_epoch": self.evaluate_every_epoch, "batch_scale": self.batch_scale,
                "accuracy_metric": self.accuracy_metric, "verbose": self.verbose}

    # Hooks.

    def on_train_begin(self, logs=None):
        self.averages.build(self._synced_model())
        self._epochs_begun = self._epochs_validated = 0
        self._last_epoch = None
        self._start_or_restore()
        if self.verbose:
            print(self._describe())

    def on_epoch_begin(self, epoch, logs=None):
        self.averages.begin_epoch()
        self._epochs_begun += 1

    def on_train_batch_end(self, batch, logs=None):
        self.averages.end_batch(self.params, batch, sync=self._synced_model)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if self._has_validation_data(logs or {}):
            self._epochs_validated += 1
            results = self._evaluate_and_select(epoch)
            if logs is not None:
                logs.update(results)

    def on_train_end(self, logs=None):
        # A fit with no epoch left (a resumed run that had trained them all) has nothing to evaluate.
        if self._epochs_begun and not self._epochs_validated:
            warnings.warn(
                "MultiEMA evaluated no EMA: pass `validation_data` to MultiEMA or to `fit`.",
                stacklevel=2,
            )
        last = "ran no epoch" if self._last_epoch is None else f"ended after epoch {self._last_epoch}"
        self._warn_missing(f"the fit {last}, and that EMA is not selected")

    # Public API.

    @contextlib.contextmanager
    def swapped_in(self, decay):
        """Inside the block the model holds the EMA of `decay`.

        The EMA's BatchNorm statistics are used as `bn_mode` says. On exit,
        also by an exception, the trained weights are restored exactly, and
        so are the BatchNorm statistics (with `bn_mode="copy"` they are the
        trained model's own, which a recompute inside the block changes).
        """
        with self._swapped_in_index(self._decay_index(decay)):
            yield self.model

    def selected_weights(self, decay, criterion):
        """NumPy arrays, in `model.weights` order, of a selected EMA.

        `criterion` is `"accuracy"` (epoch of best validation accuracy) or
        `"loss"` (epoch of lowest validation loss). Under a sharded
        `keras.distribution` this gathers the kept shards (`selected_values`).
        """
        return variables.to_numpy(self.selected_values(decay, criterion))

    def selected_values(self, decay, criterion):
        """The kept weights of a selected EMA as they are held, not to be modified:
        NumPy arrays, or under a `keras.distribution` that shards the model
        (`ModelParallel`) device arrays laid out like the weights."""
        return list(self._selection.require(self._decay_index(decay), criterion)["weights"])

    def save_selected(self, directory):
        """Writes `ema_<decay>_{acc,loss}.weights.h5`; returns their paths.

        A selection fixed by `select_epochs` at an epoch never evaluated has no
        weights: its file is not written, and a warning names it.
        """
        model = self._synced_model()
        self._warn_missing(f"save_selected writes no file for it in {directory}")
        selected = {weights_file_name(decay, criterion): self._selection.get(index, criterion)
                    for index, decay in enumerate(self.decays) for criterion in CRITERIA}
        return variables.save_weights_files(
            model, directory, {name: s["weights"] for name, s in selected.items() if s is not None})

    def summary(self):
        """JSON-able, keyed by `f"{decay:g}"`: each EMA's selected epochs.

        Epochs are 0-based, as Keras's `epoch` (and `select_epochs`).
        """
        shared = {i: g for g in self.identical_groups() for i in g}
        return {
            f"{decay:g}": {
                "decay": decay,
                "every_steps": self.every_steps,
                "effective_per_step_decay": effective,
                # Decays still holding this very average (never released by
                # the warm-up in this run): their rows are the same numbers.
                "identical_to": [f"{self.decays[j]:g}" for j in shared.get(i, [i]) if j != i],
                **{SUMMARY_KEYS[c]: self._selection.summary(i, c) for c in CRITERIA},
            }
            for i, (decay, effective) in enumerate(zip(self.decays, self.effective_decays))
        }

    def decays_at(self, step, num_updates=None):
        """The decays `a_t` (float64) of an update made after optimizer step `step`
        (callbacks/warmup.py `decays_at`)."""
        return warmup_rule.decays_at(self.decays, self.warmup, step, self.every_steps, num_updates, self.batch_scale)

    def identical_groups(self):
        """Indices of the decays grouped by the average they hold, bitwise.

        Under the warm-up every decay above the current (t+1)/(t+10) (paper
        §4.1) holds the same average: each group is evaluated once.
        """
        return self.averages.identical_groups()

    def missing_selections(self):
        """`[(decay, criterion, epoch), ...]`: the epochs fixed by `select_epochs`
        (0-based, as Keras's `epoch`) that were never evaluated, so not selected."""
        return self._selection.missing()

    def _warn_missing(self, consequence):
        for decay, criterion, epoch in self.missing_selections():
            warnings.warn(
                f"MultiEMA: select_epochs fixes epoch {epoch} (0-based) for decay {decay:g} "
                f"({criterion}), but no EMA was evaluated at that epoch; {consequence}.",
                stacklevel=3,
            )

    # The state (callbacks/state.py).

    def _has_state(self):
        return self.averages.averages is not None

    def _start(self):
        self.averages.start()  # x0_EMA = x0
        self._selection.reset()

    def _state(self):
        if not self._has_state():
            raise RuntimeError("MultiEMA has no state before it is trained.")
        settings = {name: np.asarray(value) for name, value in self._settings().items()}
        return {**settings, **self.averages.state(), **self._selection.state()}

    def _checked_state(self, state):
        # A state saved before batch scaling existed was unscaled; `warmup` may be a saved bool.
        saved = {"batch_scale": np.asarray(1.0), **state}
        saved["warmup"] = np.asarray(warmup_rule.checked_warmup(state_protocol.python_value(state["warmup"])))
        state_protocol.check_settings("MultiEMA", saved, self._settings())
        return state

    def _load_state(self, state):
        self.averages.load_state(state)
        self._selection.load_state(state, functools.partial(variables.kept_values, self.model.weights))

    def _settings(self):
        return {"every_steps": self.every_steps, "warmup": self.warmup, "bn_mode": self.bn_mode,
                "batch_scale": self.batch_scale, "decays": self.decays}

    # Evaluating and selecting.

    def _has_validation_data(self, logs):
        if self.validation_data is not None:
            return True
        # fit() validated this epoch (it skips epochs by `validation_freq`).
        return any(key.startswith("val_") for key in logs)

    def _evaluate_and_select(self, epoch):
        groups = self.identical_groups() if self._share_identical else [[i] for i in range(len(self.decays))]
        if not self.evaluate_every_epoch:  # only the averages whose selection is at this epoch
            groups = [group for group in groups if any(self._selection.fixes(i, epoch) for i in group)]
            if not groups:
                return {}
        groups = [[self.decays[i] for i in group] for group in groups]
        evaluated = variables.map_swapped_in(self, functools.partial(self._evaluate_group, epoch, groups), groups)
        return ema_selection.epoch_logs(evaluated, len(self.decays))

    def _evaluate_group(self, epoch, groups, decays):
        """Evaluates the EMA swapped in, which every decay in `decays` holds, and offers it for selection."""
        if self.verbose and sys.stdout.isatty():
            print(f"\r\033[Kepoch {epoch + 1}: evaluating EMA {', '.join(f'{d:g}' for d in decays)} "
                  f"({groups.index(decays) + 1}/{len(groups)} distinct)", end="", flush=True)
        metrics = self._evaluate()
        accuracy = ema_selection.selection_accuracy(metrics, self.accuracy_metric)
        # Copied only if selected; sharded on the devices under ModelParallel (never gathered to one host).
        weights = functools.cache(lambda: variables.kept_copy(self.model.weights))
        for decay in decays:
            self._selection.offer(self.decays.index(decay), epoch, metrics["loss"], accuracy, weights)
        return metrics, accuracy

    def _evaluate(self):
        return validation.evaluate(self._synced_model(), self.validation_data, self.validation_batch_size)

    # Small helpers.

    def _swapped_in_index(self, index):
        if self.averages.averages is None:
            raise RuntimeError("MultiEMA has no averages before it is trained.")
        self._synced_model()
        return self.averages.swapped_in(index)

    def _synced_model(self):
        # On JAX, fit() keeps the weights outside the model during an epoch;
        # reading `Callback.model` syncs them back (keras Callback.model).
        return self.model

    def _decay_index(self, decay):
        if decay not in self.decays:
            raise ValueError(f"Unknown decay {decay!r}; choose from {self.decays}.")
        return self.decays.index(decay)

    def _describe(self):
        pairs = ", ".join(f"{d:g} -> {e:.6f}" for d, e in zip(self.decays, self.effective_decays))
        evaluated = "" if self.evaluate_every_epoch else "; each evaluated only at its select_epochs"
        return f"MultiEMA: every {self.every_steps} steps; effective per-step decays: {pairs}{evaluated}"

