"""Shared building pieces for the model builders, with PyTorch-matching defaults.

The papers trained PyTorch models; every convention that differs in Keras is
set here once (see docs/fidelity.md): BatchNorm momentum/epsilon, He-normal fan-out
convolution init, PyTorch's default `nn.Linear` init, and PyTorch's symmetric
padding for strided 3x3 convolutions. No regularizers: coupled L2 weight decay
is applied by the optimizer.
"""

import contextlib
import contextvars

import keras

# Keras `momentum=0.9` is PyTorch `momentum=0.1` (new = 0.9 * old + 0.1 * batch).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_initializer():
    """He-normal, fan-out: `kaiming_normal_(mode="fan_out")` / `normal(0, sqrt(2/n))`.

    A fresh instance per layer: an unseeded Keras initializer instance draws
    the same values every time it is called.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def dense_initializer():
    """PyTorch's default `nn.Linear` weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    # VarianceScaling "uniform" has limit sqrt(3 * scale / fan_in); scale=1/3 gives 1/sqrt(fan_in).
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def conv2d(x, *, filters, kernel_size, stride=1, use_bias=False, name):
    """A 2-D convolution with PyTorch's padding `kernel_size // 2` on every side."""
    if stride > 1 and kernel_size > 1:
        # Keras "same" pads only bottom/right when stride 2 meets an even size,
        # which shifts the sampling grid one pixel off the 1x1 stride-2
        # shortcut; PyTorch pads symmetrically, so pad explicitly.
        x = keras.layers.ZeroPadding2D(padding=kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return keras.layers.Conv2D(
        filters=filters,
        kernel_size=kernel_size,
        strides=stride,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=conv_initializer(),
        name=name,
    )(x)


# Synchronized BatchNorm (TensorFlow data parallelism): fixed when a layer is
# constructed -- Keras wires the cross-replica reduction then, so it cannot be
# switched on afterwards. Set for one build by `synchronized_batch_norm()`.
_SYNCHRONIZED = contextvars.ContextVar("synchronized_batch_norm", default=False)


@contextlib.contextmanager
def synchronized_batch_norm(enabled=True):
    """Inside the block, `batch_norm` builds layers with `synchronized=enabled`."""
    token = _SYNCHRONIZED.set(bool(enabled))
    try:
        yield
    finally:
        _SYNCHRONIZED.reset(token)


def batch_norm(x, *, name):
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=_SYNCHRONIZED.get(), name=name
    )(x)


def relu(x, *, name):
    return keras.layers.ReLU(name=name)(x)


def dense(x, *, units, name):
    # Bias starts at zero, as in the WRN reference; PyTorch's default draws it
    # uniformly in the same small range, a negligible difference.
    return keras.layers.Dense(
        units=units, kernel_initializer=dense_initializer(), name=name
    )(x)


def classifier_head(x, *, num_classes, name):
    """Global average pooling, then a linear layer to logits (no softmax)."""
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return dense(x, units=num_classes, name=f"{name}_logits")


def zero_pad_shortcut(x, *, filters, stride=2, name):
    """The parameter-free "option A" shortcut of He et al. (2016), §4.2.

    Subsamples `x` spatially by `stride` (keeping pixels 0, stride, 2*stride,
    ...) and zero-pads the channel axis evenly on both sides up to `filters`
    channels. Built from Keras's own layers only (a 1x1 max pooling with
    stride `stride`, and `ZeroPadding3D` over the channels seen as a third
    spatial axis), so that a saved model loads with plain Keras, without this
    package (issue 31).
    """
    height, width, channels = x.shape[1:]
    if filters < channels:
        raise ValueError(f"Invalid value for argument `filters`. Received: filters={filters}. "
                         f"Expected at least the input's {channels} channels.")
    if stride < 1:
        raise ValueError(f"Invalid value for argument `stride`. Received: stride={stride}. "
                         "Expected a positive integer.")
    x = keras.layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_subsample")(x)
    height, width = x.shape[1:3]
    before = (filters - channels) // 2
    x = keras.layers.Reshape((height, width, channels, 1), name=f"{name}_channels_as_depth")(x)
    x = keras.layers.ZeroPadding3D(((0, 0), (0, 0), (before, filters - channels - before)), name=f"{name}_pad")(x)
    return keras.layers.Reshape((height, width, filters), name=f"{name}_merge")(x)
