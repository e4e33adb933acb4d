"""Model parallelism on JAX: a `keras.distribution.ModelParallel` over a ("batch", "model") mesh.

`--model-parallel 2x4` trains on 8 devices: each batch is split over the
"batch" axis (2 ways) and every kernel over the "model" axis (4 ways) by one
layout rule, `OutputAxisRule`: a convolution kernel `(h, w, in, out)` on its
output channels, a dense kernel `(in, out)` on its output units, each only
when the model axis divides that size; everything else (biases, BatchNorm,
small kernels) is replicated. A rule on shapes rather than a `LayoutMap` of
names fits every model of models/ (ResNets, WRN, VGG) and a wide dense model
alike. Every average of callbacks/ (EMAs, SWA, post-hoc EMAs, the kept
selections) is laid out like its weight (callbacks/layouts.py). TensorFlow has
no `keras.distribution` (as in Keras): model parallelism is JAX-only.
"""

import keras

BATCH_AXIS, MODEL_AXIS = "batch", "model"


def mesh_shape(text):
    """`"2x4"` (`config.model_parallel`, checked by app/cli_model_parallel.py) -> `(2, 4)`."""
    batch, model = (int(part) for part in text.split("x"))
    return batch, model


def kernel_axes(shape, model_size):
    """The rule: the mesh axis of each axis of a weight of `shape` (None: not split)."""
    axes = [None] * len(shape)
    if len(shape) in (2, 4) and shape[-1] % model_size == 0 and shape[-1] >= model_size:
        axes[-1] = MODEL_AXIS  # dense (in, out) / conv (h, w, in, out) kernels: output axis
    return tuple(axes)


class OutputAxisRule(keras.distribution.ModelParallel):
    """`ModelParallel` whose variable layouts come from `kernel_axes` (shapes), not names."""

    def __init__(self, mesh_shape, devices=None):
        devices = list(devices or keras.distribution.list_devices())[: mesh_shape[0] * mesh_shape[1]]
        mesh = keras.distribution.DeviceMesh(mesh_shape, (BATCH_AXIS, MODEL_AXIS), devices)
        super().__init__(layout_map=keras.distribution.LayoutMap(mesh), batch_dim_name=BATCH_AXIS)
        self.model_size = mesh_shape[1]

    def get_variable_layout(self, variable):
        if getattr(variable, "_layout", None) is not None:  # as ModelParallel: an assigned layout wins
            return variable._layout
        return keras.distribution.TensorLayout(kernel_axes(tuple(variable.shape), self.model_size),
                                               self.device_mesh)
