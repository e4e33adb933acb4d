"""Pre-activation bottleneck ResNets (He et al., 2016b): PreResNet-164 of the SWA paper.

Depth 9n+2 with n bottleneck blocks per stage; bottleneck widths 16-32-64,
expanded 4x; a 16-channel 3x3 stem; a 1x1 convolution shortcut (no BN) on the
raw block input where a block changes shape; a final BN-ReLU before pooling.
This is the layout of the SWA paper's reference code (Izmailov et al., 2018).
"""

import keras

from models.layers import batch_norm, classifier_head, conv2d, relu

STEM_FILTERS = 16
STAGE_FILTERS = (16, 32, 64)
BOTTLENECK_EXPANSION = 4


def bottleneck_block(x, *, filters, stride, name):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1 to 4*`filters`, plus shortcut."""
    out_filters = filters * BOTTLENECK_EXPANSION
    residual = batch_norm(x, name=f"{name}_bn1")
    residual = relu(residual, name=f"{name}_relu1")
    residual = conv2d(residual, filters=filters, kernel_size=1, name=f"{name}_conv1")
    residual = batch_norm(residual, name=f"{name}_bn2")
    residual = relu(residual, name=f"{name}_relu2")
    residual = conv2d(
        residual, filters=filters, kernel_size=3, stride=stride, name=f"{name}_conv2"
    )
    residual = batch_norm(residual, name=f"{name}_bn3")
    residual = relu(residual, name=f"{name}_relu3")
    residual = conv2d(residual, filters=out_filters, kernel_size=1, name=f"{name}_conv3")
    if stride != 1 or x.shape[-1] != out_filters:
        x = conv2d(
            x, filters=out_filters, kernel_size=1, stride=stride, name=f"{name}_shortcut_conv"
        )
    return keras.layers.Add(name=f"{name}_add")([x, residual])


def build_preact_resnet(*, num_classes, image_size, depth, name):
    """A pre-activation bottleneck ResNet of the given depth.

    Args:
        num_classes: number of logits.
        image_size: height and width of the square input images.
        depth: total depth, 9n+2 for n bottleneck blocks per stage.
        name: the model's name, prefix of every layer's name.
    """
    if (depth - 2) % 9 != 0 or depth < 11:
        raise ValueError(
            f"Invalid value for argument `depth`. Received: depth={depth}. "
            "Expected 9n+2 with n >= 1."
        )
    blocks_per_stage = (depth - 2) // 9
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=f"{name}_input")
    x = conv2d(inputs, filters=STEM_FILTERS, kernel_size=3, name=f"{name}_stem_conv")
    for stage_index, filters in enumerate(STAGE_FILTERS):
        for block_index in range(blocks_per_stage):
            x = bottleneck_block(
                x,
                filters=filters,
                stride=2 if stage_index > 0 and block_index == 0 else 1,
                name=f"{name}_stage{stage_index + 1}_block{block_index + 1}",
            )
    x = batch_norm(x, name=f"{name}_final_bn")
    x = relu(x, name=f"{name}_final_relu")
    outputs = classifier_head(x, num_classes=num_classes, name=f"{name}_head")
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def preresnet164(*, num_classes, image_size=32):
    return build_preact_resnet(
        num_classes=num_classes, image_size=image_size, depth=164, name="preresnet164"
    )
