"""Tests for the model registry: parameter counts against closed forms and the
reference PyTorch numbers, forward/backward, BN and init conventions, errors."""

import math

import keras
import numpy as np
import pytest

from models import MODELS, build_model, model_names
from models.layers import conv2d, zero_pad_shortcut

# Trainable parameters of the reference PyTorch definitions (docs/fidelity.md).
REFERENCE_PARAMETER_COUNTS = {
    ("resnet18", 10): 11_173_962,
    ("resnet18", 100): 11_220_132,
    ("resnet34", 10): 21_282_122,
    ("resnet34", 100): 21_328_292,
    ("wrn28_10", 10): 36_479_194,
    ("wrn28_10", 100): 36_536_884,
    ("vgg16", 10): 15_245_130,
    ("vgg16", 100): 15_291_300,
    ("resnet20", 10): 269_722,
    ("preresnet164", 10): 1_703_258,
    ("preresnet164", 100): 1_726_388,
}

# Small enough for a forward and backward pass on 2 CPU cores in about a second.
FORWARD_BACKWARD_MODELS = ("preresnet164", "resnet18", "resnet20", "vgg16")


# Closed-form counts, written from the papers' layer tables (not from the builders).
def _conv(in_channels, out_channels, kernel_size, bias=False):
    return kernel_size * kernel_size * in_channels * out_channels + (out_channels if bias else 0)


def _bn(channels):
    return 2 * channels  # gamma and beta; moving statistics are not parameters


def _linear(in_features, out_features):
    return in_features * out_features + out_features


def _count_basic_resnet(num_classes, widths, depths, projection_shortcuts):
    count = _conv(3, widths[0], 3) + _bn(widths[0])
    in_channels = widths[0]
    for stage, (width, depth) in enumerate(zip(widths, depths)):
        for block in range(depth):
            count += _conv(in_channels, width, 3) + _bn(width)
            count += _conv(width, width, 3) + _bn(width)
            changes_shape = in_channels != width or (stage > 0 and block == 0)
            if changes_shape and projection_shortcuts:
                count += _conv(in_channels, width, 1) + _bn(width)
            in_channels = width
    return count + _linear(widths[-1], num_classes)


def _count_wide_resnet(num_classes, depth, width_factor):
    blocks = (depth - 4) // 6
    count = _conv(3, 16, 3)
    in_channels = 16
    for width in (16 * width_factor, 32 * width_factor, 64 * width_factor):
        # The first block of a stage has a 1x1 shortcut conv; every block has 2 BN + 2 convs.
        count += _conv(in_channels, width, 1)
        count += _bn(in_channels) + _conv(in_channels, width, 3)
        count += _bn(width) + _conv(width, width, 3)
        count += (blocks - 1) * (2 * _bn(width) + 2 * _conv(width, width, 3))
        in_channels = width
    return count + _bn(in_channels) + _linear(in_channels, num_classes)


def _count_preact_bottleneck_resnet(num_classes, depth):
    blocks = (depth - 2) // 9
    count = _conv(3, 16, 3)
    in_channels = 16
    for planes in (16, 32, 64):
        out_channels = 4 * planes
        count += _conv(in_channels, out_channels, 1)  # first block's shortcut
        for block in range(blocks):
            block_in = in_channels if block == 0 else out_channels
            count += _bn(block_in) + _conv(block_in, planes, 1) + _bn(planes)
            count += _conv(planes, planes, 3) + _bn(planes) + _conv(planes, out_channels, 1)
        in_channels = out_channels
    return count + _bn(in_channels) + _linear(in_channels, num_classes)


def _count_vgg16(num_classes):
    conv_widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    count = sum(
        _conv(in_channels, out_channels, 3, bias=True)
        for in_channels, out_channels in zip([3] + conv_widths[:-1], conv_widths)
    )
    return count + _linear(512, 512) + _linear(512, 512) + _linear(512, num_classes)


INDEPENDENT_COUNTS = {
    "resnet18": lambda c: _count_basic_resnet(c, (64, 128, 256, 512), (2, 2, 2, 2), True),
    "resnet34": lambda c: _count_basic_resnet(c, (64, 128, 256, 512), (3, 4, 6, 3), True),
    "resnet20": lambda c: _count_basic_resnet(c, (16, 32, 64), (3, 3, 3), False),
    "wrn28_10": lambda c: _count_wide_resnet(c, depth=28, width_factor=10),
    "preresnet164": lambda c: _count_preact_bottleneck_resnet(c, depth=164),
    "vgg16": _count_vgg16,
}

COUNT_CASES = [(name, classes, 32) for name in sorted(MODELS) for classes in (10, 100)]
COUNT_CASES.append(("resnet18", 200, 64))  # Tiny-ImageNet


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()


def _trainable_parameter_count(model):
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


def test_every_registered_model_has_an_independent_count():
    assert sorted(INDEPENDENT_COUNTS) == model_names()


@pytest.mark.parametrize("name, num_classes, image_size", COUNT_CASES)
def test_parameter_count(name, num_classes, image_size):
    expected = INDEPENDENT_COUNTS[name](num_classes)
    if (name, num_classes) in REFERENCE_PARAMETER_COUNTS:
        assert expected == REFERENCE_PARAMETER_COUNTS[(name, num_classes)]
    model = build_model(name, num_classes, image_size=image_size)
    assert _trainable_parameter_count(model) == expected
    assert model.input_shape == (None, image_size, image_size, 3)
    assert model.output_shape == (None, num_classes)


def test_reference_counts_cover_every_model():
    assert {name for name, _ in REFERENCE_PARAMETER_COUNTS} == set(MODELS)


def _logits_and_gradients(model, images, labels):
    """Training-mode logits and the gradients of the mean cross-entropy, as NumPy."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
        gradients = tape.gradient(loss, model.trainable_weights)
    elif backend == "jax":
        import jax

        def loss_of(trainable, non_trainable):
            logits, _ = model.stateless_call(trainable, non_trainable, images, training=True)
            return loss_fn(labels, logits), logits

        trainable = [weight.value for weight in model.trainable_variables]
        non_trainable = [weight.value for weight in model.non_trainable_variables]
        (_, logits), gradients = jax.value_and_grad(loss_of, has_aux=True)(
            trainable, non_trainable
        )
    else:
        pytest.skip(f"no gradient helper for the {backend} backend")
    return np.asarray(logits), [None if g is None else np.asarray(g) for g in gradients]


@pytest.mark.parametrize("name", FORWARD_BACKWARD_MODELS)
def test_forward_and_backward(name):
    num_classes = 10
    model = build_model(name, num_classes)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    labels = np.array([3, 7])

    logits, gradients = _logits_and_gradients(model, images, labels)

    assert logits.shape == (2, num_classes)
    assert np.all(np.isfinite(logits))
    for weight, gradient in zip(model.trainable_weights, gradients):
        assert gradient is not None, weight.path
        assert np.all(np.isfinite(gradient)), weight.path
        assert np.any(gradient != 0), f"{weight.path} does not reach the loss"
    # d(mean cross-entropy)/d(logit bias) = mean over the batch of softmax - one-hot.
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    expected_bias_gradient = (probabilities - np.eye(num_classes)[labels]).mean(axis=0)
    bias = model.get_layer(f"{name}_head_logits").bias
    bias_gradient = gradients[[w.path for w in model.trainable_weights].index(bias.path)]
    np.testing.assert_allclose(bias_gradient, expected_bias_gradient, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layer_conventions(name):
    model = build_model(name, 10)
    batch_norms = [
        layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if name == "vgg16":
        assert batch_norms == []  # the paper's §3.4 point: no BN
    else:
        assert batch_norms
    for layer in batch_norms:
        assert layer.momentum == 0.9 and layer.epsilon == 1e-5, layer.name
    for layer in convs:
        init = layer.kernel_initializer.get_config()
        assert isinstance(layer.kernel_initializer, keras.initializers.VarianceScaling)
        assert (init["scale"], init["mode"], init["distribution"]) == (
            2.0,
            "fan_out",
            "untruncated_normal",
        ), layer.name
        assert layer.use_bias == (name == "vgg16"), layer.name  # bias only where no BN follows
    for layer in model.layers:
        assert layer.name.startswith(f"{name}_"), layer.name
        for attribute in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            assert getattr(layer, attribute, None) is None, (layer.name, attribute)
    assert model.losses == []


def test_strided_conv_pads_symmetrically_like_pytorch():
    # A 3x3 kernel that copies its centre pixel: with PyTorch's padding=1 a
    # stride-2 conv keeps pixels 0, 2, 4, ... (Keras "same" would keep 1, 3, ...).
    inputs = keras.Input(shape=(6, 6, 1))
    model = keras.Model(inputs, conv2d(inputs, filters=1, kernel_size=3, stride=2, name="probe"))
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[1, 1] = 1.0
    model.get_layer("probe").kernel.assign(kernel)
    images = np.arange(36, dtype="float32").reshape(1, 6, 6, 1)
    np.testing.assert_array_equal(np.asarray(model(images)), images[:, ::2, ::2, :])


def test_zero_pad_shortcut_matches_numpy():
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 16)).astype("float32")
    for filters, before in ((32, 8), (19, 1)):  # odd padding: the extra channel goes after
        inputs = keras.Input((8, 8, 16))
        model = keras.Model(inputs, zero_pad_shortcut(inputs, filters=filters, stride=2, name="shortcut"))
        expected = np.pad(images[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (before, filters - 16 - before)])
        np.testing.assert_array_equal(np.asarray(model(images)), expected)
        # Keras's own layers only: the model round-trips through a config without this package's objects.
        assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    with pytest.raises(ValueError, match="Received: filters=8"):
        zero_pad_shortcut(keras.Input((8, 8, 16)), filters=8, name="shrink")


def test_unknown_model_name():
    with pytest.raises(ValueError) as error:
        build_model("resnet1000", 10)
    assert str(error.value) == (
        "Unknown model 'resnet1000'; choose from "
        "preresnet164, resnet18, resnet20, resnet34, vgg16, wrn28_10"
    )


@pytest.mark.parametrize("argument", ["num_classes", "image_size"])
def test_invalid_sizes_raise_before_building(argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        build_model("resnet20", **{"num_classes": 10, "image_size": 32, argument: 0})


def test_model_names_are_the_registry_sorted_and_the_command_line_list():
    from training.config import MODEL_NAMES

    assert model_names() == sorted(MODELS) == list(MODEL_NAMES)
    assert len(set(model_names())) == len(MODELS) == 6


def test_option_a_model_survives_save_and_load(tmp_path):
    model = build_model("resnet20", 10)
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    path = tmp_path / "resnet20.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(reloaded(images)), np.asarray(model(images)))
