"""Put other values into a model's variables for a while, then restore them.

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

import keras


def snapshot(variables):
    """Backend tensors equal to `variables` now, unaffected by later assigns."""
    return [keras.ops.copy(variable) for variable in variables]


def restore(variables, values):
    """Assigns `values` (from `snapshot`) back to `variables`, exactly."""
    for variable, value in zip(variables, values):
        variable.assign(value)


def host_copy(variables):
    """NumPy copies of the variables' current values."""
    # Not `variable.numpy()`: NumPy 2 warns on its `__array__` (Keras 3.15).
    return [keras.ops.convert_to_numpy(value) for value in snapshot(variables)]


@contextlib.contextmanager
def swapped(variables, assign_new_values):
    """Inside the block, `variables` hold what `assign_new_values()` wrote.

    On exit, normal or by an exception (also one raised by
    `assign_new_values` itself), every variable gets back the exact value it
    had on entry.
    """
    backup = snapshot(variables)
    try:
        assign_new_values()
        yield
    finally:
        restore(variables, backup)
