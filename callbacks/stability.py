"""`PredictionStability`: how much predictions move between epochs, and how far the EMA is from SGD.

Adda, Mizrahi and Yüksel (Fig. 2, App. B, Fig. 5) follow two quantities over
training: the stability of predictions on the validation set from epoch to
epoch (the fraction of samples whose correctness did not change), for SGD
and for its EMA, and the relative distance ||θ_EMA − θ_SGD|| / ||θ_SGD||
between their weights. Evidence: tests/test_stability.py recomputes both in
NumPy from predictions and weights recorded independently.
"""

import keras
import numpy as np
from keras import ops

from callbacks import arguments
from callbacks import state as state_protocol
from callbacks import validation
from callbacks import variables
from callbacks.ema import MultiEMA


class PredictionStability(state_protocol.StatefulCallback):
    """Logs prediction stability of SGD and every EMA, and each EMA's distance to SGD.

    At the end of every epoch the model predicts `validation_data`; a sample
    is correct when its top-1 class (first class on exact ties) is its label.
    The logs get `prediction_stability`: the fraction of samples whose
    correctness is the same as at the end of the previous epoch of this
    `fit` (NaN at its first epoch, which has no previous one, so that the
    key is in every epoch's logs and history columns stay aligned; a restored
    `get_state()` carries the previous epoch across a resume). With `ema`, a
    `MultiEMA` of the same fit, every EMA is swapped in (`ema.swapped_in`,
    its BatchNorm statistics as the `MultiEMA` keeps them) and the logs also
    get `ema_<d>_prediction_stability` and `ema_<d>_weight_distance`, the
    Euclidean norm of the difference of all trainable weights relative to
    the SGD weights' norm, `d` formatted with `f"{d:g}"`. Only the previous
    epoch's correctness vectors are kept (one boolean per sample and model).

    Each epoch costs one prediction pass over `validation_data` per model
    (the `MultiEMA`'s own evaluation computes metrics, not predictions). Place
    this callback after the `MultiEMA` and before any logger.

    Example:

    ```python
    ema = MultiEMA(decays=(0.968, 0.998), validation_data=(x_val, y_val))
    stability = PredictionStability(validation_data=(x_val, y_val), ema=ema)
    model.fit(x, y, epochs=10, callbacks=[ema, stability, keras.callbacks.CSVLogger(p)])
    ```

    Args:
        validation_data: an `(x, y)` tuple of arrays (every example counts
            once: sample weights are refused), or a finite, re-iterable
            dataset of `(x, y)` batches in a fixed order (e.g. an unshuffled
            `tf.data.Dataset`).
        ema: the `MultiEMA` callback of the same fit, or `None` for SGD only.
            Defaults to `None`.
        batch_size: prediction batch size for array `validation_data`.
            Defaults to `None` (Keras' default, 32).
    """

    def __init__(self, validation_data, ema=None, batch_size=None):
        super().__init__()
        if ema is not None and not isinstance(ema, MultiEMA):
            raise arguments.invalid("ema", ema, "a `MultiEMA` callback or `None`")
        self.batch_size = arguments.checked_optional_int("batch_size", batch_size)
        self._inputs, self._labels = _checked_validation_data(validation_data)
        self.validation_data = validation_data
        self.ema = ema
        self._previous = None

    __deepcopy__ = state_protocol.fresh_copy

    def get_config(self):
        return {"validation_data": self.validation_data, "ema": self.ema, "batch_size": self.batch_size}

    # Hooks.

    def on_train_begin(self, logs=None):
        self._start_or_restore()

    def on_epoch_end(self, epoch, logs=None):
        results = self._measure()
        if logs is not None:
            logs.update(results)

    # The state (callbacks/state.py): the previous epoch's correctness vectors, {model key: bool array}.

    def _has_state(self):
        return self._previous is not None

    def _start(self):
        self._previous = None

    def _state(self):
        return {key: value.copy() for key, value in (self._previous or {}).items()}

    def _checked_state(self, state):
        return {key: np.asarray(value, dtype=bool) for key, value in state.items()}

    def _load_state(self, state):
        self._previous = dict(state) or None  # empty: no epoch yet

    # Measuring.

    def _measure(self):
        model = self.model  # on JAX this syncs the weights back from fit's state
        labels = self._validation_labels()
        correct = {"sgd": self._correctness(labels)}
        results = {}
        if self.ema is not None:
            sgd_weights = variables.snapshot(model.trainable_variables)
            measured = variables.map_swapped_in(self.ema, lambda decays: (
                self._correctness(labels), _relative_distance(model.trainable_variables, sgd_weights)))
            for (decay,), (correctness, distance) in measured:
                correct[f"ema_{decay:g}"] = correctness
                results[f"ema_{decay:g}_weight_distance"] = distance
        previous, self._previous = self._previous, correct
        for key, current in correct.items():
            name = "prediction_stability" if key == "sgd" else f"{key}_prediction_stability"
            before = None if previous is None else previous.get(key)
            if before is None or before.shape != current.shape:
                results[name] = float("nan")
            else:
                results[name] = float(np.mean(before == current))
        return results

    def _correctness(self, labels):
        logits = self.model.predict(self._inputs, batch_size=self.batch_size, verbose=0)
        # On exact ties np.argmax takes the first class (as evaluation.metrics).
        return np.argmax(np.asarray(logits), axis=-1) == labels

    def _validation_labels(self):
        if self._labels is None:
            # A dataset: its labels, once, in its (fixed) order.
            labels = []
            for batch in self._inputs:
                _, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
                labels.append(np.asarray(ops.convert_to_numpy(y)).reshape(-1))
            self._labels = np.concatenate(labels)
        return self._labels


def _relative_distance(variables, reference):
    """||variables − reference|| / ||reference|| over all arrays together (float32 sums)."""
    difference_squared = ops.zeros((), "float32")
    reference_squared = ops.zeros((), "float32")
    for variable, value in zip(variables, reference):
        value = ops.cast(value, "float32")
        difference_squared += ops.sum(ops.square(ops.cast(variable.value, "float32") - value))
        reference_squared += ops.sum(ops.square(value))
    return float(ops.convert_to_numpy(ops.sqrt(difference_squared / reference_squared)))


def _checked_validation_data(validation_data):
    """(inputs to predict, labels as a NumPy vector or None to read from a dataset)."""
    if isinstance(validation_data, (tuple, list)):
        validation.checked(validation_data)  # (x, y) or (x, y, sample_weight)
        if len(validation_data) == 3:  # the fractions count every example once: the weights would be ignored
            raise ValueError(
                "Invalid value for argument `validation_data`. Received an (x, y, sample_weight) tuple. "
                "Expected (x, y): prediction stability counts every example once."
            )
        x, y = validation_data[0], validation_data[1]
        labels = np.asarray(ops.convert_to_numpy(y))
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(
                "Invalid value for argument `validation_data`. Expected integer "
                f"class labels `y` of shape (N,). Received shape {labels.shape}."
            )
        return x, labels
    if validation_data is None or not hasattr(validation_data, "__iter__"):
        raise ValueError(
            "Invalid value for argument `validation_data`. Received: "
            f"{type(validation_data).__name__}. Expected an (x, y) tuple of "
            "arrays or a dataset of (x, y) batches."
        )
    return validation_data, None
