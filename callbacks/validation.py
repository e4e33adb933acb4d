"""The validation data the averaging callbacks evaluate on: checked once, evaluated alike.

`MultiEMA`, `BatchNormRecompute` and `SWA` take the same forms: a dataset (any
iterable of `(x, y[, sample_weight])` batches that `model.evaluate` accepts),
an `(x, y)` or `(x, y, sample_weight)` tuple of arrays (batched by
`batch_size`), or `None` for the validation data passed to `fit` (MultiEMA
only; at the epochs where `fit` validates).
"""

import numpy as np

from callbacks.arguments import invalid


def checked(validation_data, batch_size=None, allow_fit_data=True):
    """Raises ValueError now for a form `evaluate` would reject later."""
    if validation_data is None:
        if not allow_fit_data:
            raise invalid("validation_data", None, "a dataset or an (x, y) tuple")
        if batch_size is not None:  # fit batches its own validation data: it would be ignored
            raise invalid("validation_batch_size", batch_size,
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
