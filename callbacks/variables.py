"""Reading, writing and swapping a model's variables; finding its BatchNorm layers.

Averaging callbacks evaluate and save an average by swapping it into the
trained model (no cloned model, no recompilation). The trained values must come
back bit for bit, whatever happens in between: `swapped` restores them on exit,
on an exception too.

The backup is `keras.ops.copy` of each variable, not a reference to its value:
under TensorFlow `variable.value` is the variable itself, and under JAX
`Model.evaluate` donates the buffers of the model's state to its compiled step,
so a reference to a buffer still in the model would be deleted by then. The
backup costs one transient copy of the swapped variables.
"""

import contextlib
import hashlib
import os

import keras
import numpy as np

from callbacks import layouts


def snapshot(variables):
    """Backend tensors equal to `variables` now, unaffected by later assigns."""
    return [keras.ops.copy(variable) for variable in variables]


def write(variables, values):
    """Assigns `values` (NumPy arrays or tensors, e.g. from `snapshot`) to `variables`."""
    for variable, value in zip(variables, values):
        variable.assign(value)


def host_copy(variables):
    """NumPy copies of the variables' current values."""
    # Not `variable.numpy()`: NumPy 2 warns on its `__array__` (Keras 3.15).
    return [keras.ops.convert_to_numpy(value) for value in snapshot(variables)]


def kept_copy(variables):
    """Copies of the variables' values to keep for later: `host_copy`, or under a
    distribution that shards them (`ModelParallel`) device copies, each device
    holding its shard (`snapshot`), so that no host ever holds the whole model.
    `to_numpy` gathers either form."""
    variables = list(variables)
    return snapshot(variables) if layouts.is_sharded(variables) else host_copy(variables)


def to_numpy(values):
    """NumPy arrays of `values` (NumPy arrays or tensors; a sharded one is gathered)."""
    return [np.array(keras.ops.convert_to_numpy(value)) for value in values]


@contextlib.contextmanager
def swapped(variables, assign_new_values):
    """Inside the block, `variables` hold what `assign_new_values()` wrote.

    On exit, normal or by an exception (also one raised by
    `assign_new_values` itself), every variable in `variables` gets back the
    exact value it had on entry, whether `assign_new_values` or the block
    changed it.
    """
    backup = snapshot(variables)
    try:
        assign_new_values()
        yield
    finally:
        write(variables, backup)


def holding(variables, values):
    """`swapped(variables, ...)` with `values` written into them.

    Tensors among `values` (a `kept_copy` on the devices) are written as
    copies: under JAX `Model.evaluate` inside the block donates the buffers it
    is given, and the values must survive the block.
    """
    return swapped(variables, lambda: write_copies(variables, values))


def write_copies(variables, values):
    """`write`, with tensors among `values` copied first (they survive a donation of the variables)."""
    write(variables, [value if isinstance(value, np.ndarray) else keras.ops.copy(value) for value in values])


def kept_values(variables, arrays):
    """NumPy `arrays` of `variables`' values in `kept_copy`'s form: as they are, or
    under a sharding distribution placed on the devices with each variable's layout."""
    variables = list(variables)
    if not layouts.is_sharded(variables):
        return list(arrays)
    return [keras.distribution.distribute_tensor(keras.ops.convert_to_tensor(array, variable.dtype),
                                                 layouts.layout_like(variable))
            for variable, array in zip(variables, arrays)]


def save_weights(model, weights, path):
    """Saves `weights` (in `model.weights` order) as `model.save_weights` would; the model keeps its own."""
    with holding(model.weights, weights):
        model.save_weights(path)


def save_weights_files(model, directory, weights_by_file_name):
    """`save_weights` of each `{file name: weights}` into `directory` (created); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in weights_by_file_name]
    for path, weights in zip(paths, weights_by_file_name.values()):
        save_weights(model, weights, path)
    return paths


def digest(arrays):
    """A SHA-256 of the arrays' bytes: equal digests mean bitwise-equal weights."""
    hashed = hashlib.sha256()
    for array in arrays:
        hashed.update(np.ascontiguousarray(array).tobytes())
    return hashed.hexdigest()


def is_float(dtype):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))


def batch_norm_layers(model):
    """Every BatchNormalization layer of `model`, nested ones included."""
    # Keras has no public recursive walk over nested layers (`Model.layers`
    # lists direct children only; a custom layer may hold a BatchNormalization);
    # `_flatten_layers` is the one Keras uses itself. The package's only use of it.
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def batch_norm_statistics(model):
    """The moving statistics (float non-trainable variables) of every BatchNorm layer."""
    return [
        variable
        for layer in batch_norm_layers(model)
        for variable in layer.non_trainable_variables
        if is_float(variable.dtype)
    ]


def map_swapped_in(ema, fn, groups=None):
    """`[(decays, fn(decays)), ...]`: `fn` called with each EMA of `ema` swapped in.

    `groups` lists decays that hold one average (`MultiEMA.identical_groups`),
    swapped in once for all of them; by default each decay on its own. Each
    swap is `ema.swapped_in` (the trained weights come back exactly, also on
    an exception). `ema` is a `MultiEMA` or anything with its `decays` and
    `swapped_in`.
    """
    results = []
    for decays in groups or [[decay] for decay in ema.decays]:
        with ema.swapped_in(decays[0]):
            results.append((decays, fn(decays)))
    return results
