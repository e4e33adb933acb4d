"""Wide ResNets (Zagoruyko & Komodakis, 2016): pre-activation basic blocks, WRN-28-10.

Depth 6n+4 with n blocks per stage; stage widths 16k, 32k, 64k after a
16-channel 3x3 stem; 1x1 convolution shortcuts (no BN) where a block changes
shape. Dropout between the two convolutions of a block is 0 by default, as in
the EMA and SWA papers' WRN-28-10.
"""

import keras

from models.layers import batch_norm, classifier_head, conv2d, relu

STEM_FILTERS = 16
BASE_STAGE_FILTERS = (16, 32, 64)


def wide_block(x, *, filters, stride, dropout_rate, name):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, added to the shortcut."""
    preactivated = batch_norm(x, name=f"{name}_bn1")
    preactivated = relu(preactivated, name=f"{name}_relu1")
    if stride != 1 or x.shape[-1] != filters:
        # The reference projects the pre-activated input, not the raw one.
        shortcut = conv2d(
            preactivated, filters=filters, kernel_size=1, stride=stride,
            name=f"{name}_shortcut_conv",
        )
    else:
        shortcut = x
    residual = conv2d(
        preactivated, filters=filters, kernel_size=3, stride=stride, name=f"{name}_conv1"
    )
    residual = batch_norm(residual, name=f"{name}_bn2")
    residual = relu(residual, name=f"{name}_relu2")
    if dropout_rate > 0:
        residual = keras.layers.Dropout(rate=dropout_rate, name=f"{name}_dropout")(residual)
    residual = conv2d(residual, filters=filters, kernel_size=3, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, residual])


def build_wide_resnet(*, num_classes, image_size, depth, width_factor, dropout_rate=0.0, name):
    """A pre-activation Wide ResNet WRN-`depth`-`width_factor`.

    Args:
        num_classes: number of logits.
        image_size: height and width of the square input images.
        depth: total depth, 6n+4 for n blocks per stage.
        width_factor: multiplier k of the stage widths 16, 32, 64.
        dropout_rate: dropout between a block's convolutions. Defaults to 0.0.
        name: the model's name, prefix of every layer's name.
    """
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(
            f"Invalid value for argument `depth`. Received: depth={depth}. "
            "Expected 6n+4 with n >= 1."
        )
    blocks_per_stage = (depth - 4) // 6
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=f"{name}_input")
    x = conv2d(inputs, filters=STEM_FILTERS, kernel_size=3, name=f"{name}_stem_conv")
    for stage_index, base_filters in enumerate(BASE_STAGE_FILTERS):
        for block_index in range(blocks_per_stage):
            x = wide_block(
                x,
                filters=base_filters * width_factor,
                stride=2 if stage_index > 0 and block_index == 0 else 1,
                dropout_rate=dropout_rate,
                name=f"{name}_stage{stage_index + 1}_block{block_index + 1}",
            )
    x = batch_norm(x, name=f"{name}_final_bn")
    x = relu(x, name=f"{name}_final_relu")
    outputs = classifier_head(x, num_classes=num_classes, name=f"{name}_head")
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def wrn28_10(*, num_classes, image_size=32):
    return build_wide_resnet(
        num_classes=num_classes, image_size=image_size, depth=28, width_factor=10,
        name="wrn28_10",
    )
