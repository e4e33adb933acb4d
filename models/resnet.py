"""CIFAR-style ResNets with basic blocks (He et al., 2016): ResNet-18/34 and ResNet-20.

ResNet-18/34 follow the common CIFAR layout (3x3 stem, no max-pool, stages
64-128-256-512, 1x1 conv + BN projection shortcuts), used for the EMA paper's
§4 experiments. ResNet-20 is He et al.'s CIFAR network (§4.2: stages 16-32-64,
three blocks each, parameter-free "option A" shortcuts), used by Adda et al.
"""

import keras

from models.layers import batch_norm, classifier_head, conv2d, relu, zero_pad_shortcut

SHORTCUTS = ("projection", "zero_pad")


def basic_block(x, *, filters, stride, shortcut, name):
    """Two 3x3 conv-BN layers, added to the shortcut, then ReLU (post-activation)."""
    residual = conv2d(x, filters=filters, kernel_size=3, stride=stride, name=f"{name}_conv1")
    residual = batch_norm(residual, name=f"{name}_bn1")
    residual = relu(residual, name=f"{name}_relu1")
    residual = conv2d(residual, filters=filters, kernel_size=3, name=f"{name}_conv2")
    residual = batch_norm(residual, name=f"{name}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        if shortcut == "projection":
            x = conv2d(
                x, filters=filters, kernel_size=1, stride=stride, name=f"{name}_shortcut_conv"
            )
            x = batch_norm(x, name=f"{name}_shortcut_bn")
        else:
            x = zero_pad_shortcut(x, filters=filters, stride=stride, name=f"{name}_shortcut")
    x = keras.layers.Add(name=f"{name}_add")([x, residual])
    return relu(x, name=f"{name}_out")


def build_resnet(*, num_classes, image_size, stage_filters, blocks_per_stage, shortcut, name):
    """A basic-block ResNet: 3x3 stem, stages (the first at stride 1, the rest at 2), linear head.

    Args:
        num_classes: number of logits.
        image_size: height and width of the square input images.
        stage_filters: channels of each stage; the stem has `stage_filters[0]`.
        blocks_per_stage: number of basic blocks in each stage.
        shortcut: "projection" (1x1 conv + BN) or "zero_pad" (He et al.'s option A)
            where a block changes shape.
        name: the model's name, prefix of every layer's name.
    """
    if shortcut not in SHORTCUTS:
        raise ValueError(
            f"Invalid value for argument `shortcut`. Received: shortcut={shortcut!r}. "
            f"Expected one of {', '.join(SHORTCUTS)}."
        )
    if len(stage_filters) != len(blocks_per_stage):
        raise ValueError(
            f"`stage_filters` and `blocks_per_stage` differ in length. Received: "
            f"stage_filters={stage_filters}, blocks_per_stage={blocks_per_stage}."
        )
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=f"{name}_input")
    x = conv2d(inputs, filters=stage_filters[0], kernel_size=3, name=f"{name}_stem_conv")
    x = batch_norm(x, name=f"{name}_stem_bn")
    x = relu(x, name=f"{name}_stem_relu")
    for stage_index, (filters, num_blocks) in enumerate(zip(stage_filters, blocks_per_stage)):
        for block_index in range(num_blocks):
            x = basic_block(
                x,
                filters=filters,
                stride=2 if stage_index > 0 and block_index == 0 else 1,
                shortcut=shortcut,
                name=f"{name}_stage{stage_index + 1}_block{block_index + 1}",
            )
    outputs = classifier_head(x, num_classes=num_classes, name=f"{name}_head")
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def resnet18(*, num_classes, image_size=32):
    return build_resnet(
        num_classes=num_classes, image_size=image_size, stage_filters=(64, 128, 256, 512),
        blocks_per_stage=(2, 2, 2, 2), shortcut="projection", name="resnet18",
    )


def resnet34(*, num_classes, image_size=32):
    return build_resnet(
        num_classes=num_classes, image_size=image_size, stage_filters=(64, 128, 256, 512),
        blocks_per_stage=(3, 4, 6, 3), shortcut="projection", name="resnet34",
    )


def resnet20(*, num_classes, image_size=32):
    # He et al. §4.2: 6n+2 layers with n=3; option A keeps it at 0.27M parameters.
    return build_resnet(
        num_classes=num_classes, image_size=image_size, stage_filters=(16, 32, 64),
        blocks_per_stage=(3, 3, 3), shortcut="zero_pad", name="resnet20",
    )
