"""The data the averaging callbacks take: checked once, used alike.

Validation data, which `MultiEMA`, `BatchNormRecompute` and `SWA` evaluate on
(`checked`, `evaluate`): a dataset (any iterable of `(x, y[, sample_weight])`
batches that `model.evaluate` accepts), an `(x, y)` or `(x, y, sample_weight)`
tuple of arrays (batched by `batch_size`), or `None` for the validation data
passed to `fit` (MultiEMA only; at the epochs where `fit` validates).
Training data, which a BatchNorm recompute runs over (`input_batches`): an
array, an `(x, y[, sample_weight])` tuple of arrays, or an iterable of batches.
"""

import itertools

import keras
import numpy as np
from keras import ops

from callbacks import arguments


def checked(validation_data, batch_size=None, allow_fit_data=True):
    """Raises ValueError now for a form `evaluate` would reject later."""
    if validation_data is None:
        if not allow_fit_data:
            raise arguments.invalid("validation_data", None, "a dataset or an (x, y) tuple")
        if batch_size is not None:  # fit batches its own validation data: it would be ignored
            raise arguments.invalid("validation_batch_size", batch_size,
                          "None when validation_data is None (pass validation_batch_size to fit)")
        return
    if isinstance(validation_data, (tuple, list)):
        if len(validation_data) not in (2, 3):
            raise ValueError(
                "Invalid value for argument `validation_data`. Received a "
                f"{type(validation_data).__name__} of length {len(validation_data)}. "
                "Expected (x, y) or (x, y, sample_weight)."
            )
        return
    if isinstance(validation_data, np.ndarray) or batch_size is not None:
        raise ValueError(
            "Invalid value for argument `validation_data`. Received: "
            f"{type(validation_data).__name__}"
            f"{' with a batch size' if batch_size is not None else ''}. Expected "
            "a dataset, an (x, y) tuple (with an optional batch size), or None."
        )


def evaluate(model, validation_data, batch_size=None):
    """`model.evaluate` on `validation_data` (a form `checked` accepts): {metric: float}."""
    if validation_data is None:
        result = _evaluate_on_fit_validation_data(model)
    elif isinstance(validation_data, (tuple, list)):
        x, y, *sample_weight = validation_data
        result = model.evaluate(x, y, sample_weight=sample_weight[0] if sample_weight else None,
                                batch_size=batch_size, verbose=0, return_dict=True)
    else:
        result = model.evaluate(validation_data, verbose=0, return_dict=True)
    return {name: float(value) for name, value in result.items()}


def _evaluate_on_fit_validation_data(model):
    # No public API hands a callback fit()'s validation data. Keras 3.15's
    # fit() keeps its validation batches in the private `_eval_epoch_iterator`
    # and evaluate() reuses them only when given the private flag
    # `_use_cached_eval_dataset=True` (keras/src/backend/{tensorflow,jax}/
    # trainer.py); a plain evaluate(x, y) inside fit() reads x and y. The
    # package's only use of it: fail loudly if it moves.
    if getattr(model, "_eval_epoch_iterator", None) is None:
        raise RuntimeError(
            "Could not find fit()'s validation data (a private Keras detail that "
            "may have changed): pass `validation_data` to the callback."
        )
    return model.evaluate(verbose=0, return_dict=True, _use_cached_eval_dataset=True)


def _is_array(value):
    return isinstance(value, np.ndarray) or ops.is_tensor(value)


def checked_batch_size_is_used(batch_size, train_data, validation_data):
    """Refuses a `batch_size` that neither the training data (an array or an `(x, y)` tuple:
    `input_batches`) nor the validation data (an `(x, y)` tuple: `evaluate`) would use."""
    arguments.checked_optional_int("batch_size", batch_size)
    uses = (train_data is not None and (isinstance(train_data, tuple) or _is_array(train_data))
            or isinstance(validation_data, (tuple, list)))
    if batch_size is not None and not uses:
        raise arguments.invalid("batch_size", batch_size,
                                "None when the data are datasets (their batches are used as they are)")


def input_batches(data, batch_size, steps):
    """Checks `data` now; returns an iterator over at most `steps` input batches."""
    if isinstance(data, tuple):
        data = keras.utils.unpack_x_y_sample_weight(data)[0]
        if not _is_array(data):
            raise ValueError(
                "Invalid value for argument `data`. Received a tuple whose first "
                f"element is {type(data).__name__}. Expected `(x, y)` with an "
                "array `x`, an array, or an iterable of batches."
            )
    if _is_array(data):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise arguments.invalid("batch_size", batch_size, "an integer >= 1 when the data is an array")
        size = int(data.shape[0])
        batches = (data[start : start + batch_size] for start in range(0, size, batch_size))
    elif hasattr(data, "__iter__"):
        batches = _inputs_of_batches(data)
    else:
        raise ValueError(
            f"Invalid value for argument `data`. Received: {type(data).__name__}. "
            "Expected an array, an `(x, y)` tuple of arrays, or an iterable of batches."
        )
    return itertools.islice(batches, steps)


def _inputs_of_batches(data):
    # A generator function: `iter(data)` waits for the first batch requested
    # (a new tf.data iterator starts prefetching and advances shuffle seeds).
    for batch in data:
        if isinstance(batch, tuple):
            batch = keras.utils.unpack_x_y_sample_weight(batch)[0]
        yield batch
