"""Keras functional builders for the papers' architectures, and their registry.

Every model takes a float32 batch of already-normalized (image_size, image_size, 3)
images and returns logits (no softmax). CIFAR-style stems (3x3 conv, no
max-pool) and global average pooling let the same builders serve 32x32 CIFAR and
64x64 Tiny-ImageNet.

Example:

```python
model = build_model("resnet18", num_classes=200, image_size=64)
```
"""

import numbers

from models.layers import synchronized_batch_norm as _synchronized_batch_norm_layers
from models.preact_resnet import preresnet164
from models.resnet import resnet18, resnet20, resnet34
from models.vgg import vgg16
from models.wide_resnet import wrn28_10

MODELS = {
    "preresnet164": preresnet164,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet34": resnet34,
    "vgg16": vgg16,
    "wrn28_10": wrn28_10,
}


def model_names():
    """The registered model names, sorted."""
    return sorted(MODELS)


def build_model(name, num_classes, image_size=32, synchronized_batch_norm=False):
    """Builds the uncompiled model `name` with `num_classes` logits.

    Args:
        name: a key of `MODELS`.
        num_classes: number of output logits.
        image_size: height and width of the square input images. Defaults to 32.
        synchronized_batch_norm: BatchNorm statistics over the global batch under
            a TensorFlow distribution strategy (`synchronized=True`; TensorFlow
            backend only). Defaults to False.

    Raises:
        ValueError: for an unknown name or a non-positive size, before building anything.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    for argument, value in (("num_classes", num_classes), ("image_size", image_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"Invalid value for argument `{argument}`. Received: {argument}={value!r}. "
                "Expected a positive integer."
            )
    with _synchronized_batch_norm_layers(synchronized_batch_norm):
        return MODELS[name](num_classes=num_classes, image_size=image_size)
