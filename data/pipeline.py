"""The tf.data pipelines of a run: NumPy arrays (data/loading.py) -> batches.

Normalization: per-channel mean and std of the training images actually used,
in [0, 1] units (torchvision's `Normalize` convention), computed exactly from
pixel histograms (`loading.channel_stats`). Not the published CIFAR constants:
the images here are a JPEG re-encoding (shared/data/README.md), and
Tiny-ImageNet has none.

Augmentation (train only), as torchvision's `RandomCrop(32, padding=4)` +
`RandomHorizontalFlip()`: pad 4 black pixels on each side of the uint8 image
(so the padding normalizes to -mean/std, as in PyTorch), take a random window
of the original size, flip it with probability 1/2. Done per batch with
stateless ops whose seeds come from `seed`, so a run is reproducible.

Batching: training keeps the last partial batch, like PyTorch's `DataLoader`
default (`drop_last=False`), so each epoch sees every example once;
`steps_per_epoch = ceil(num_train_examples / batch_size)`.

The train pipeline gives 30,000-56,000 images/s on 2 shared CPU cores
(bench/data_pipeline.py), 70x or more what a ResNet-20 trains at there.
tf.data lives here only: models and callbacks are backend-neutral.
"""

import dataclasses
import functools
import math

import numpy as np

CROP_PADDING = 4
# Augmentation seeds differ from the shuffling seeds of the same run.
AUGMENTATION_SEED_OFFSET = 1_000_003
# The one-pass copy of the training data (BatchNorm recompute) uses its own epoch index.
STATISTICS_EPOCH = -1


@dataclasses.dataclass(frozen=True)
class Data:
    """Batched tf.data pipelines of (float32 normalized images, int32 labels).

    `train` is an endless stream, shuffled and augmented anew each epoch: pass
    `steps_per_epoch` to `fit`. `train_from(epoch, skip_batches)` starts the
    same stream later (resume). `train_one_pass` is one finite, augmented
    pass with its own order, for BatchNorm statistics. `validation` and `test`
    are neither shuffled nor augmented, and keep their last partial batch.
    """

    train: object
    train_from: object
    train_one_pass: object
    validation: object
    test: object
    num_classes: int
    image_size: int
    num_train_examples: int
    num_validation_examples: int
    num_test_examples: int
    batch_size: int
    steps_per_epoch: int
    evaluation_split: str
    mean: np.ndarray
    std: np.ndarray


def make_data(arrays, batch_size, seed, eval_batch_size=None):
    """Builds the tf.data pipelines from `Arrays`.

    `eval_batch_size` (default `batch_size`) batches the validation and test
    sets: forward passes need no gradients and run faster in larger batches
    (bench/eval_batch_size.py), with the same predictions (BatchNorm uses its
    moving statistics).
    """
    num_train = len(arrays.train_labels)
    mean, std = arrays.mean, arrays.std
    eval_batch_size = eval_batch_size or batch_size
    test = evaluation_dataset(arrays.test_images, arrays.test_labels, mean, std, eval_batch_size)
    if arrays.validation_images is not arrays.test_images:
        validation = evaluation_dataset(
            arrays.validation_images, arrays.validation_labels, mean, std, eval_batch_size
        )
    else:  # full_train: one copy of the test images
        validation = test
    train_from = functools.partial(
        train_dataset, arrays.train_images, arrays.train_labels, mean, std, batch_size, seed
    )

    def resume_at(epoch, skip_batches=0):
        return train_from(start_epoch=epoch, skip_batches=skip_batches)

    return Data(
        train=train_from(),
        train_from=resume_at,
        train_one_pass=train_from(start_epoch=STATISTICS_EPOCH, num_epochs=1),
        validation=validation,
        test=test,
        num_classes=arrays.num_classes,
        image_size=arrays.image_size,
        num_train_examples=num_train,
        num_validation_examples=len(arrays.validation_labels),
        num_test_examples=len(arrays.test_labels),
        batch_size=batch_size,
        steps_per_epoch=math.ceil(num_train / batch_size),
        evaluation_split=arrays.evaluation_split,
        mean=arrays.mean,
        std=arrays.std,
    )


def train_dataset(
    images, labels, mean, std, batch_size, seed, start_epoch=0, skip_batches=0, num_epochs=None
):
    """Shuffled, augmented, normalized batches, epoch after epoch (last batch partial).

    Every epoch's order and augmentation are a function of `(seed, epoch)` only
    (stateless random ops), so a run resumed at epoch `e`, batch `b` sees
    exactly the batches the uninterrupted run would have: start the stream
    with `start_epoch=e, skip_batches=b`. Iterating the stream for a BatchNorm
    recompute or an evaluation never moves the training order either.

    Args:
        num_epochs: epochs in the stream; None (default) for an endless one,
            to be cut into epochs by `fit(steps_per_epoch=...)`.
    """
    tf = tensorflow()
    images, labels = _constants(tf, images, labels)
    num_examples = len(labels)
    steps = math.ceil(num_examples / batch_size)
    end = start_epoch + num_epochs if num_epochs is not None else 2**62

    def epoch_batches(epoch):
        keys = tf.random.stateless_uniform([num_examples], tf.stack([tf.constant(seed, tf.int64), epoch]))
        order = tf.data.Dataset.from_tensor_slices(tf.argsort(keys)).batch(batch_size)
        positions = tf.data.Dataset.range(steps).map(lambda step: epoch * steps + step)
        return tf.data.Dataset.zip((order, positions))

    def load(index, position):
        augmentation_seed = tf.stack([tf.constant(seed + AUGMENTATION_SEED_OFFSET, tf.int64), position])
        batch = random_crop_flip(tf.gather(images, index), augmentation_seed)
        return _normalize(tf, batch, mean, std), tf.gather(labels, index)

    batches = tf.data.Dataset.range(start_epoch, end).flat_map(epoch_batches).skip(skip_batches)
    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(images, labels, mean, std, batch_size):
    """Normalized batches in order, not augmented; last one partial."""
    tf = tensorflow()
    images, labels = _constants(tf, images, labels)

    def load(index):
        return _normalize(tf, tf.gather(images, index), mean, std), tf.gather(labels, index)

    batches = tf.data.Dataset.range(len(labels)).batch(batch_size)
    batches = batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    # Every evaluation makes a new iterator; with tf.data's autotuner on, its
    # teardown waits for the tuner's next tick: 5.1 s instead of 2.7-3.2 s
    # per evaluation of 2,560 images here (bench/ema_overhead.py notes).
    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.with_options(options)


def random_crop_flip(images, seed, padding=CROP_PADDING):
    """Per image: a random window of the zero-padded image, flipped left-right w.p. 1/2.

    Args:
        images: a batch (B, H, W, C) tensor.
        seed: int32/int64 tensor of shape (2,) for the stateless random ops.
        padding: pixels of zeros on each side. Defaults to 4.
    """
    tf = tensorflow()
    shape = tf.shape(images)
    batch_size, height, width = shape[0], shape[1], shape[2]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform(
        [batch_size, 2], crop_seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    flips = tf.random.stateless_uniform([batch_size], flip_seed) < 0.5
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None, :]
    columns = offsets[:, 1:] + tf.range(width)[None, :]
    # Flipping the crop is reading its columns backwards.
    columns = tf.where(flips[:, None], tf.reverse(columns, axis=[1]), columns)
    crops = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(crops, columns, axis=2, batch_dims=1)


def _normalize(tf, images, mean, std):
    scale = tf.constant(1.0 / (255.0 * np.asarray(std, np.float64)), tf.float32)
    offset = tf.constant(-np.asarray(mean, np.float64) / np.asarray(std, np.float64), tf.float32)
    return tf.cast(images, tf.float32) * scale + offset


def _constants(tf, images, labels):
    # On the CPU: tf.data runs there, and a GPU's memory belongs to the model.
    with tf.device("/CPU:0"):
        return tf.constant(images), tf.constant(np.asarray(labels, np.int32))


@functools.cache
def tensorflow():
    """TensorFlow for tf.data and TFDS; on another Keras backend, without the GPU."""
    import keras
    import tensorflow as tf

    if keras.config.backend() != "tensorflow":
        # TF would reserve the GPU memory the model's backend needs; tf.data
        # runs on the CPU anyway (Keras's advice for tf.data with JAX).
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already initialized its devices
            pass
    return tf
