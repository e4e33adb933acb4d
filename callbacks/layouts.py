"""Where an average lives under a `keras.distribution`: on its weight's devices, sharded like it.

Under `keras.distribution.ModelParallel` (JAX) a weight is split over a
device mesh by its `TensorLayout`. An average created without a layout
matches no `LayoutMap` entry (its name is not the weight's) and would be
replicated: every device would hold the whole model once per average. Each
average is therefore created with its weight's layout (`layout_like`), a
stacked one (`(num_averages,) + shape`) with the stacking axis unsharded, so
that every device holds exactly its shard of every average and the update,
elementwise, runs on each device's shards alone. Without a distribution (and
on TensorFlow, where Keras has none) nothing changes: `layout_like` returns
None and a variable is created as before.
"""

import keras


def current_distribution():
    """The global `keras.distribution` in effect, or None."""
    return keras.distribution.distribution()


def layout_like(weight, leading_axes=0):
    """The layout of an average of `weight`: the weight's, after `leading_axes` unsharded axes.

    None when no distribution is set (the variable is created as before), or
    when the weight's layout is not a `keras.distribution.TensorLayout` (a
    backend layout cannot be extended backend-neutrally; the distribution's
    default, replication, then applies).
    """
    distribution = current_distribution()
    if distribution is None:
        return None
    layout = distribution.get_variable_layout(weight)  # the weight's own, if assigned at creation
    if not isinstance(layout, keras.distribution.TensorLayout):
        return layout if leading_axes == 0 else None
    return keras.distribution.TensorLayout((None,) * leading_axes + tuple(layout.axes), layout.device_mesh)


def is_sharded(weights):
    """Whether a distribution splits any of `weights` over devices (a `ModelParallel` layout).

    Then a copy of the weights stays on the devices, each holding its shard
    (`variables.kept_copy`), rather than gathered whole into host memory.
    """
    distribution = current_distribution()
    if distribution is None:
        return False
    for weight in weights:
        layout = distribution.get_variable_layout(weight)
        if isinstance(layout, keras.distribution.TensorLayout) and any(axis is not None for axis in layout.axes):
            return True
    return False


def average_variable(weight, shape, name, leading_axes=0):
    """A float32 non-trainable zero variable of `shape`, laid out like `weight` (`layout_like`)."""
    return keras.Variable(initializer="zeros", shape=shape, dtype="float32", trainable=False, autocast=False,
                          name=name, layout=layout_like(weight, leading_axes))
