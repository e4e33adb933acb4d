"""Exact BatchNorm statistics for averaged weights.

Averaged weights (SWA, EMA) come without BatchNorm statistics that match them.
SWA (Izmailov et al. 2018, §3.2 and Algorithm 1) recomputes them with one pass
over the training data in training mode after training; Morales-Brotons et al.
(§3.4, Fig. 1b) show that large-window EMAs fail without that recomputation
and recover fully with it. `recompute_batch_norm` does the pass as an exact
cumulative average (every example weighs the same); `BatchNormRecompute`
applies it to every EMA of a `MultiEMA`, every epoch (curves) and/or once for
the selected EMA models after training (tables).
"""

import time
import warnings
import weakref

import keras
from keras import ops

from callbacks import arguments
from callbacks import state as state_protocol
from callbacks import validation
from callbacks import variables
from callbacks.compiled import compile_pure
from callbacks.ema_selection import CRITERIA, SUMMARY_KEYS, selection_label, weights_file_name

# model -> (signature of its variables and BN layers, compiled batch step)
_COMPILED_STEPS = weakref.WeakKeyDictionary()


def recompute_batch_norm(model, data, batch_size=None, steps=None):
    """Sets every BatchNorm layer's statistics to their exact value over `data`.

    The reference algorithm (SWA's `bn_update`, PyTorch's
    `torch.optim.swa_utils.update_bn`) resets the statistics and runs the
    model in training mode batch by batch, so that each layer normalizes with
    its batch's statistics under the fixed weights. Here every batch's
    per-channel mean and (biased) variance are merged exactly (Chan et al.'s
    pairwise update of count, mean and sum of squared deviations, weighted by
    batch size): the result is the dataset mean and the dataset (population)
    variance of each layer's inputs, whatever the batch sizes, the spread of
    the batch means included. PyTorch's `update_bn` (`momentum=None`, a
    running average over batches) gives every batch the same weight, a short
    last batch too, and averages the batches' unbiased variances; SWA's
    `bn_update` weights batches by size but also averages unbiased batch
    variances. For shuffled batches those agree with the dataset variance in
    expectation (the unbiased batch variance estimates it); they differ by
    sampling noise, and systematically for ordered batches. Over a dataset
    the population/unbiased distinction (N vs N - 1) is negligible.

    Only the `moving_mean` / `moving_variance` of trainable BatchNorm layers
    change (Keras runs frozen ones in inference mode; they keep their
    statistics). Weights, other layers' state, the layers' `momentum` and the
    optimizer are left as they were. Dropout and other random layers run in
    training mode, as in the reference. Inputs of a convolutional BN have the
    same spatial size in every batch, so weighting by batch size weighs every
    activation equally; masks are not supported.

    Example:

    ```python
    with swa.swapped_in():
        recompute_batch_norm(model, x_train, batch_size=128)
    ```

    Args:
        model: a built Keras model.
        data: the inputs: a NumPy array or backend tensor of examples, or an
            `(x, y)` / `(x, y, sample_weight)` tuple of those (batched by
            `batch_size`, `y` ignored), or a finite iterable of batches (e.g.
            a `tf.data.Dataset` without `repeat()`, or use `steps`) whose
            elements are `x` or `(x, y[, w])`.
        batch_size: batch size for array `data`; required for it and unused
            for an iterable of batches. Defaults to `None`.
        steps: use at most this many batches. Defaults to `None` (all).

    Returns:
        The number of examples used (0 for a model without BatchNorm).
    """
    arguments.checked_optional_int("steps", steps)
    layers = recomputed_layers(model)
    if not layers:
        return 0
    batches = validation.input_batches(data, batch_size, steps)
    step = _compiled_step(model, layers)
    momenta = [layer.momentum for layer in layers]
    try:
        # Keras updates `moving = moving * momentum + batch * (1 - momentum)`;
        # with momentum 0 the "moving" outputs are exactly the batch moments.
        for layer in layers:
            layer.momentum = 0.0
        count, means, squared_deviations = _accumulate(model, layers, step, batches)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("Argument `data` yielded no batches. Expected at least one.")
    for layer, mean, deviations in zip(layers, means, squared_deviations):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(deviations / float(count))
    return count


class BatchNormRecompute(keras.callbacks.Callback):
    """Recomputes the BatchNorm statistics of every EMA of a `MultiEMA`.

    With `every_epoch=True`, at the end of every epoch and for every decay
    `d`, the EMA is swapped into the model, its BatchNorm statistics are
    recomputed over `train_data` (`recompute_batch_norm`) and it is evaluated
    on `validation_data`; the logs get `ema_<d>_bn_val_loss`,
    `ema_<d>_bn_val_accuracy` (every compiled metric), `d` formatted with
    `f"{d:g}"` (Morales-Brotons et al. Fig. 1b). The EMA's own statistics and
    the trained weights are left as they were.

    With `at_end=True`, after training, for every decay and both selection
    criteria of `MultiEMA` (best validation accuracy, lowest validation loss),
    the selected EMA weights get recomputed statistics and are evaluated;
    the results are in `results` / `summary()` and `save(directory)` writes
    them (paper Table 1: "EMA models' BN statistics are recomputed once").
    A decay/criterion that `MultiEMA` did not select (no epoch evaluated) is
    skipped, with a warning when `select_epochs` fixed its epoch. The model
    keeps its trained weights. Evaluation uses the model's own compiled test
    function (`model.evaluate`). It may come before or after
    the `MultiEMA` in the callback list (the same results either way: the
    averages move after every batch, the selections at epoch end).

    Example:

    ```python
    ema = MultiEMA(decays=(0.968, 0.998), validation_data=(x_val, y_val))
    bn = BatchNormRecompute(ema, (x_train, y_train), (x_val, y_val), batch_size=128)
    model.fit(x_train, y_train, epochs=20, batch_size=128,
              validation_data=(x_val, y_val), callbacks=[ema, bn])
    bn.save("weights/")
    ```

    Args:
        ema: the `MultiEMA` callback of the same fit.
        train_data: data for the recomputation, as for `recompute_batch_norm`;
            an iterable must be re-iterable (e.g. a `tf.data.Dataset`).
        validation_data: `(x, y)` tuple or dataset passed to `model.evaluate`.
        every_epoch: recompute and evaluate every EMA after every epoch.
            Defaults to `False`.
        at_end: recompute and evaluate the selected EMA models after training.
            Defaults to `True`.
        steps: use at most this many batches per recomputation. Defaults to
            `None` (one full pass).
        batch_size: batch size for array data (recomputation and evaluation).
            Defaults to `None` (required when `train_data` is an array).
        verbose: if 1, print a line as each distinct selected EMA's
            recomputation after training starts, and one when all are done
            (plain lines, for terminals and logs alike). Defaults to 0.
    """

    def __init__(
        self,
        ema,
        train_data,
        validation_data,
        every_epoch=False,
        at_end=True,
        steps=None,
        batch_size=None,
        verbose=0,
    ):
        super().__init__()
        missing = [name for name in ("decays", "swapped_in", "selected_weights", "missing_selections")
                   if not hasattr(ema, name)]
        if missing:
            raise arguments.invalid("ema", ema, f"a `MultiEMA` (it has no `{missing[0]}`)")
        validation.checked(validation_data, allow_fit_data=False)
        arguments.checked_optional_int("steps", steps)
        validation.input_batches(train_data, batch_size, steps)  # validates only; lazy
        validation.checked_batch_size_is_used(batch_size, train_data, validation_data)
        self.ema = ema
        self.train_data = train_data
        self.validation_data = validation_data
        self.every_epoch = bool(every_epoch)
        self.at_end = bool(at_end)
        self.steps = steps
        self.batch_size = batch_size
        self.verbose = verbose
        self.results = {}
        self._selected = {}

    __deepcopy__ = state_protocol.fresh_copy

    def get_config(self):
        return {"ema": self.ema, "train_data": self.train_data, "validation_data": self.validation_data,
                "every_epoch": self.every_epoch, "at_end": self.at_end, "steps": self.steps,
                "batch_size": self.batch_size, "verbose": self.verbose}

    def on_train_begin(self, logs=None):
        # Allow instances to be re-used.
        self.results = {}
        self._selected = {}

    def on_epoch_end(self, epoch, logs=None):
        if self.every_epoch and logs is not None:
            logs.update(self._evaluate_every_ema())

    def on_train_end(self, logs=None):
        if self.at_end:
            self._recompute_selected()

    def summary(self):
        """`{f"{d:g}": {"best_val_accuracy": metrics, "lowest_val_loss": metrics}}`,
        metrics like `{"val_loss": ..., "val_accuracy": ...}` after recomputation."""
        return {key: dict(entry) for key, entry in self.results.items()}

    def save(self, directory):
        """Writes `ema_<d>_acc_bn.weights.h5` and `ema_<d>_loss_bn.weights.h5`.

        Returns the list of paths written.
        """
        if not self._selected:
            raise ValueError(
                "Nothing to save: `BatchNormRecompute.save()` needs a finished "
                "`fit` with `at_end=True`."
            )
        return variables.save_weights_files(self.model, directory, {
            weights_file_name(decay, criterion, bn_recomputed=True): weights
            for (decay, criterion), weights in self._selected.items()})

    def _evaluate_every_ema(self):
        evaluated = variables.map_swapped_in(self.ema, lambda decays: self._recompute_and_evaluate(keep_statistics=False))
        return {f"ema_{decay:g}_bn_val_{k}": v for (decay,), metrics in evaluated for k, v in metrics.items()}

    def _recompute_selected(self):
        # Selections often coincide (acc. and loss at one epoch; every decay
        # while the warm-up min(α, (t+1)/(t+10)) still rules): compute each once.
        groups = self._distinct_selections()
        started = time.time()
        with variables.swapped(self.model.weights, lambda: None):
            for number, group in enumerate(groups, 1):
                if self.verbose:
                    print(f"recomputing BatchNorm for {selection_label(group)} [{number}/{len(groups)}] ...",
                          flush=True)
                self._recompute_group(group)
        if self.verbose and groups:
            print(f"BatchNorm recomputed for {len(groups)} selected EMA model{'s' if len(groups) > 1 else ''} "
                  f"in {time.time() - started:.0f} s", flush=True)

    def _distinct_selections(self):
        """`[[(decay, criterion), ...], ...]`: the selections grouped by bitwise-equal weights."""
        groups = {}
        missing = {(decay, criterion): epoch for decay, criterion, epoch in self.ema.missing_selections()}
        for decay in self.ema.decays:
            for criterion in CRITERIA:
                if self.ema.summary()[f"{decay:g}"][SUMMARY_KEYS[criterion]] is None:
                    if (decay, criterion) in missing:
                        warnings.warn(
                            f"BatchNormRecompute: the EMA of decay {decay:g} ({criterion}) fixed at epoch "
                            f"{missing[decay, criterion]} (0-based) by `select_epochs` was never evaluated; "
                            "its BatchNorm statistics are not recomputed.",
                            stacklevel=4,
                        )
                    continue  # nothing selected (no epoch evaluated, or no accuracy metric)
                digest = variables.digest(self._selected_values(decay, criterion))
                groups.setdefault(digest, []).append((decay, criterion))
        return list(groups.values())

    def _recompute_group(self, group):
        variables.write_copies(self.model.weights, self._selected_values(*group[0]))
        metrics = self._recompute_and_evaluate(keep_statistics=True)
        weights = variables.kept_copy(self.model.weights)
        for decay, criterion in group:
            self._selected[(decay, criterion)] = weights
            entry = self.results.setdefault(f"{decay:g}", {})
            entry[SUMMARY_KEYS[criterion]] = {f"val_{k}": v for k, v in metrics.items()}

    def _selected_values(self, decay, criterion):
        # MultiEMA's kept copies as held (sharded on the devices under ModelParallel);
        # an `ema` with MultiEMA's older interface has `selected_weights` only.
        selected = getattr(self.ema, "selected_values", None) or self.ema.selected_weights
        return selected(decay, criterion)

    def _recompute_and_evaluate(self, keep_statistics):
        # Unless kept, the statistics come back on exit whatever `swapped_in` does
        # then: the EMA keeps its own (Cai et al.'s moving average of the student's).
        layers = [] if keep_statistics else recomputed_layers(self.model)
        with variables.swapped([v for l in layers for v in (l.moving_mean, l.moving_variance)], lambda: None):
            recompute_batch_norm(self.model, self.train_data, self.batch_size, self.steps)
            return validation.evaluate(self.model, self.validation_data, self.batch_size)


def recomputed_layers(model):
    """The BatchNormalization layers, nested ones included, that a recompute updates.

    Trainable ones only: Keras runs a frozen one in inference mode, so it keeps its statistics.
    """
    layers = [layer for layer in variables.batch_norm_layers(model) if layer.trainable]
    for layer in layers:
        if layer.renorm:
            raise ValueError(
                f"BatchNormalization layer {layer.name!r} uses renorm=True, "
                "which `recompute_batch_norm` does not support."
            )
    return layers


def _compiled_step(model, layers):
    """One compiled batch update of the per-layer (count, mean, M2) merge."""
    signature = tuple(
        id(item)
        for item in model.trainable_variables + model.non_trainable_variables + layers
    )
    cached = _COMPILED_STEPS.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    position = {id(variable): i for i, variable in enumerate(model.non_trainable_variables)}
    indices = [(position[id(l.moving_mean)], position[id(l.moving_variance)]) for l in layers]
    # A strong reference from the cached value would keep the model alive.
    model_reference = weakref.ref(model)

    def step(trainable, non_trainable, count, means, deviations, x, size):
        _, non_trainable = model_reference().stateless_call(
            trainable, non_trainable, x, training=True
        )
        total = count + size
        new_means, new_deviations = [], []
        for (mean_index, variance_index), mean, deviation in zip(indices, means, deviations):
            # Chan et al. (1979): merge (count, mean, M2) with the batch's.
            delta = non_trainable[mean_index] - mean
            new_means.append(mean + delta * (size / total))
            new_deviations.append(
                deviation
                + non_trainable[variance_index] * size
                + ops.square(delta) * (count * size / total)
            )
        return non_trainable, total, new_means, new_deviations

    compiled = compile_pure(step)
    _COMPILED_STEPS[model] = (signature, compiled)
    return compiled


def _accumulate(model, layers, step, batches):
    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    # Reset (as the reference does): a NaN/inf statistic times momentum 0 is NaN.
    reset = {id(l.moving_mean) for l in layers} | {id(l.moving_variance) for l in layers}
    non_trainable = [
        ops.zeros_like(value) if id(variable) in reset else value
        for variable, value in zip(model.non_trainable_variables, non_trainable)
    ]
    count = ops.zeros((), "float32")
    means = [ops.zeros(layer.moving_mean.shape, "float32") for layer in layers]
    deviations = [ops.zeros(layer.moving_mean.shape, "float32") for layer in layers]
    examples = 0
    for x in batches:
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        size = int(keras.tree.flatten(x)[0].shape[0])
        non_trainable, count, means, deviations = step(
            trainable, non_trainable, count, means, deviations, x,
            ops.convert_to_tensor(float(size), "float32"),
        )
        examples += size
    return examples, means, deviations
