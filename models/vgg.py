"""VGG-16 without BatchNorm, as in the SWA paper's code and the EMA paper's §3.4.

Thirteen 3x3 convolutions (with bias, ReLU) in five stages, each followed by
2x2 max-pooling, then a 512-512 classifier with dropout before each hidden
layer. The reference flattens the 1x1x512 map of a 32x32 input; global average
pooling is the same there and also accepts 64x64 Tiny-ImageNet images.
"""

import keras

from models.layers import conv2d, dense, relu

VGG16_STAGE_FILTERS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg_stage(x, *, filters, name):
    """3x3 conv-ReLU layers, one per entry of `filters`, then 2x2 max-pooling."""
    for layer_index, layer_filters in enumerate(filters):
        x = conv2d(
            x, filters=layer_filters, kernel_size=3, use_bias=True,
            name=f"{name}_conv{layer_index + 1}",
        )
        x = relu(x, name=f"{name}_relu{layer_index + 1}")
    return keras.layers.MaxPooling2D(pool_size=2, name=f"{name}_pool")(x)


def build_vgg(
    *, num_classes, image_size, stage_filters, classifier_units=(512, 512), dropout_rate=0.5, name
):
    """A VGG network without normalization.

    Args:
        num_classes: number of logits.
        image_size: height and width of the square input images.
        stage_filters: per stage, the channels of each of its convolutions.
        classifier_units: widths of the hidden classifier layers. Defaults to (512, 512).
        dropout_rate: dropout before each hidden classifier layer. Defaults to 0.5
            (PyTorch's `nn.Dropout()` in the reference).
        name: the model's name, prefix of every layer's name.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=f"{name}_input")
    x = inputs
    for stage_index, filters in enumerate(stage_filters):
        x = vgg_stage(x, filters=filters, name=f"{name}_stage{stage_index + 1}")
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_head_pool")(x)
    for layer_index, units in enumerate(classifier_units):
        layer_name = f"{name}_head_fc{layer_index + 1}"
        x = keras.layers.Dropout(rate=dropout_rate, name=f"{layer_name}_dropout")(x)
        x = dense(x, units=units, name=layer_name)
        x = relu(x, name=f"{layer_name}_relu")
    outputs = dense(x, units=num_classes, name=f"{name}_head_logits")
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def vgg16(*, num_classes, image_size=32):
    return build_vgg(
        num_classes=num_classes, image_size=image_size, stage_filters=VGG16_STAGE_FILTERS,
        name="vgg16",
    )
