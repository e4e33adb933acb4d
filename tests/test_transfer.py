"""`python -m app.transfer`: linear evaluation, re-derived in NumPy (head training) and checked for frozen features."""

import json
import os

import keras
import numpy as np
import pytest

import models
from app import transfer
from tests.conftest import normalized_test_images

ARGS = ["--dataset", "cifar10", "--limit-train", "256", "--limit-test", "128", "--epochs", "4",
        "--batch-size", "64"]


def _softmax(logits):
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def numpy_linear_head(kernel, bias, features, labels, epochs, lr, momentum, batch_size, seed):
    """PyTorch's SGD (Nesterov, no weight decay) on mean cross-entropy, in float64: v <- mu v + g; w <- w - lr (g + mu v)."""
    kernel, bias = kernel.astype(np.float64), bias.astype(np.float64)
    velocity = [np.zeros_like(kernel), np.zeros_like(bias)]
    losses = []
    for order in transfer.epoch_orders(len(labels), epochs, seed):
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x, y = features[index].astype(np.float64), labels[index]
            probabilities = _softmax(x @ kernel + bias)
            total += -np.sum(np.log(probabilities[np.arange(len(y)), y]))
            probabilities[np.arange(len(y)), y] -= 1.0
            gradients = [x.T @ probabilities / len(y), probabilities.mean(0)]
            for i, (weight, gradient) in enumerate(zip((kernel, bias), gradients)):
                velocity[i] = momentum * velocity[i] + gradient
                weight -= lr * (gradient + momentum * velocity[i])
        losses.append(total / len(labels))
    return kernel, bias, losses


def test_head_training_is_nesterov_sgd_without_weight_decay():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(23, 6)).astype(np.float32)  # 23 = 4 batches of 5 + a partial one
    labels = rng.integers(0, 4, size=23).astype(np.int32)
    head = transfer.build_linear_head(6, 4, seed=1)
    kernel, bias = (np.array(w) for w in head.get_weights())
    bound = 1 / np.sqrt(6)  # PyTorch's nn.Linear default initialization
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound and np.abs(bias).max() > 0
    losses = transfer.train_linear_head(head, features, labels, epochs=3, lr=0.1, momentum=0.9,
                                        batch_size=5, seed=7)
    expected_kernel, expected_bias, expected_losses = numpy_linear_head(
        kernel, bias, features, labels, epochs=3, lr=0.1, momentum=0.9, batch_size=5, seed=7)
    np.testing.assert_allclose(head.get_weights()[0], expected_kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.get_weights()[1], expected_bias, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)


def test_features_are_the_frozen_classifier_input():
    model = models.build_model("resnet20", 10, image_size=32)
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    before = [np.array(w) for w in model.get_weights()]
    extractor = transfer.feature_extractor(model)
    features = extractor.predict(images, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    np.testing.assert_allclose(features @ kernel + bias, model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
    head = transfer.build_linear_head(features.shape[1], 3, seed=0)
    transfer.train_linear_head(head, features, np.arange(8) % 3, epochs=2, lr=0.01, batch_size=4)
    for old, new in zip(before, model.get_weights()):
        assert np.array_equal(old, new)  # the backbone never trains


@pytest.fixture(scope="module")
def transferred(tiny_seed_runs):
    path = os.path.join(tiny_seed_runs, "seed-0")
    return path, transfer.main([path] + ARGS)[path]


def test_transfer_json_and_an_independent_rederivation(transferred):
    path, result = transferred
    assert json.load(open(os.path.join(path, "transfer.json"))) == json.loads(json.dumps(result))
    assert (result["epochs"], result["lr"], result["momentum"], result["augmentation"]) == (4, 0.01, 0.9, False)
    assert result["targets"]["cifar10"] == {"train_examples": 256, "test_examples": 128}
    entries = result["linear_eval"]["cifar10"]
    assert list(entries) == ["baseline", "ema_acc", "ema_loss"]
    assert entries["ema_loss"]["weights"] == "weights/ema_0.9_loss_bn.weights.h5"
    for entry in entries.values():
        assert len(entry["train_loss"]) == 4 and 0 <= entry["accuracy"] <= 1
    # The target is the whole CIFAR-10 training set (first 256), normalized with the run's statistics.
    images, test_labels, arrays = normalized_test_images(path, 128)
    import tensorflow_datasets as tfds

    from training import run_dir

    train = tfds.as_numpy(tfds.builder("cifar10", data_dir=run_dir.load_config(path).data_dir).as_dataset(
        split="train[:256]", batch_size=-1, shuffle_files=False))
    train_images, train_labels = train["image"], train["label"]
    pixels = arrays.train_images.reshape(-1, 3).astype(np.float64) / 255.0
    train_inputs = ((train_images[:256] / 255.0 - pixels.mean(0)) / pixels.std(0)).astype(np.float32)
    model = models.build_model("resnet20", 10, image_size=32)
    model.load_weights(os.path.join(path, "weights", "ema_0.9_loss_bn.weights.h5"))
    extractor = keras.Model(model.inputs, model.layers[-2].output)  # global average pooling
    head = transfer.build_linear_head(64, 10, seed=0)
    kernel, bias = (np.array(w) for w in head.get_weights())
    kernel, bias, losses = numpy_linear_head(
        kernel, bias, extractor.predict(train_inputs, verbose=0), train_labels[:256],
        epochs=4, lr=0.01, momentum=0.9, batch_size=64, seed=0)
    entry = entries["ema_loss"]
    np.testing.assert_allclose(entry["train_loss"], losses, rtol=1e-3)
    assert losses[-1] < losses[0]  # the head learns
    logits = extractor.predict(images, verbose=0) @ kernel + bias
    nll = -np.mean(np.log(_softmax(logits)[np.arange(128), test_labels]))
    assert entry["loss"] == pytest.approx(nll, rel=1e-3)
    assert abs(entry["accuracy"] - np.mean(logits.argmax(1) == test_labels)) <= 1 / 128


def test_other_settings_or_targets_are_refused_in_one_line(transferred, capsys):
    path, _ = transferred
    for argv, expected in (
        ([path] + ARGS[:-4] + ["--epochs", "3", "--batch-size", "64"], "other settings (epochs=4)"),
        ([path, "--dataset", "cifar10n"], "unknown target dataset 'cifar10n'"),
        ([path, "--dataset", "cifar10", "--lr", "0"], "--lr must be > 0"),
        ([path, "--dataset", "cifar10", "--limit-test", "10001"], "at most 10000"),
        ([path], "the following arguments are required: --dataset"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            transfer.main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and expected in error[0]
