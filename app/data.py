"""Data layer of `python -m app.train`: TFDS -> NumPy (uint8, in memory) -> tf.data.

| `--dataset`     | TFDS name       | train label                        | test label |
|-----------------|-----------------|------------------------------------|------------|
| `cifar10`       | `cifar10`       | `label`                            | `label`    |
| `cifar100`      | `cifar100`      | `label` (the 100 fine classes)     | `label`    |
| `cifar10n`      | `cifar10_n`     | `worse_label` (`--label-noise`)    | `label`    |
| `cifar100n`     | `cifar100_n`    | `noise_label`                      | `label`    |
| `tiny-imagenet` | `tiny_imagenet` | `label` (app/tiny_imagenet.py)     | `label`    |

Splits (paper §4.1): by default a random 80/20 split of the training set,
seeded by `split_seed` (not `seed`, so every training seed sees the same
split), into `train` and `validation`; the hold-out keeps the training labels
(noisy for CIFAR-N: clean labels would be information a noisy-label method
does not have). `full_train` trains on the whole training set and evaluates on
the test set. `limit_train=N` keeps the first N training examples after that.

Normalization: per-channel mean and std of the training images actually used,
in [0, 1] units (torchvision's `Normalize` convention), computed exactly from
pixel histograms. Not the published CIFAR constants: the images here are a
JPEG re-encoding (shared/data/README.md), and Tiny-ImageNet has none.

Augmentation (train only), as torchvision's `RandomCrop(32, padding=4)` +
`RandomHorizontalFlip()`: pad 4 black pixels on each side of the uint8 image
(so the padding normalizes to -mean/std, as in PyTorch), take a random window
of the original size, flip it with probability 1/2. Done per batch with
stateless ops whose seeds come from `seed`, so a run is reproducible.

Batching: training keeps the last partial batch, like PyTorch's `DataLoader`
default (`drop_last=False`), so each epoch sees every example once;
`steps_per_epoch = ceil(num_train_examples / batch_size)`.

Loading decodes each split into memory once (CIFAR-10: 150 MB as uint8; the
50,000 train JPEGs decode in ~3.7 s on 2 shared CPU cores). The train pipeline
then gives 30,000-56,000 images/s there (bench/data_pipeline.py), 70x or more
what a ResNet-20 trains at on that CPU.

Missing data: `check_data_available` fails in one line, before any expensive
work and without network retries, when a dataset is neither prepared nor
downloadable; see `_not_prepared`.
"""

import dataclasses
import functools
import math
import os
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from app import cifar_n
from app import tiny_imagenet
from app.errors import UsageError

TEST_LABEL = "label"
CIFAR10N_LABELS = {
    "worse": "worse_label",
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
}
CROP_PADDING = 4
# Augmentation seeds differ from the shuffling seeds of the same run.
AUGMENTATION_SEED_OFFSET = 1_000_003
# The one-pass copy of the training data (BatchNorm recompute) uses its own epoch index.
STATISTICS_EPOCH = -1
NETWORK_PROBE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    train_label: str | None  # None: chosen by `label_noise`
    download_url: str  # what preparing it fetches; probed before trying


_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
DATASETS = {
    "cifar10": DatasetSpec("cifar10", "label", _CIFAR10_URL),
    "cifar100": DatasetSpec("cifar100", "label", _CIFAR100_URL),
    "cifar10n": DatasetSpec("cifar10_n", None, _CIFAR10_URL),
    "cifar100n": DatasetSpec("cifar100_n", "noise_label", _CIFAR100_URL),
    "tiny-imagenet": DatasetSpec("tiny_imagenet", "label", tiny_imagenet.URL),
}


@dataclasses.dataclass(frozen=True)
class Arrays:
    """One run's data as NumPy: uint8 images (N, H, W, 3), int32 labels (N,).

    `validation_*` is the 20 % hold-out, or the test split when
    `evaluation_split == "test"` (full_train). `mean`/`std` are float32 (3,)
    in [0, 1] units: the model sees `(images / 255 - mean) / std`.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    evaluation_split: str
    mean: np.ndarray
    std: np.ndarray

    @property
    def image_size(self):
        return int(self.train_images.shape[1])


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


def load_data(config):
    """The tf.data pipelines of one run (`config`: a `TrainConfig`)."""
    return make_data(load_arrays(config), batch_size=config.batch_size, seed=config.seed,
                     eval_batch_size=config.eval_batch_size)


def load_arrays(config):
    """The run's split data as NumPy arrays (for a training loop without tf.data)."""
    builder = check_data_available(config)
    _prepare(builder, config)
    images, labels = _read_split(builder, "train", train_label_key(config))
    test_images, test_labels = _read_split(builder, "test", TEST_LABEL)
    if config.full_train:
        train_index = np.arange(len(labels))
        validation_images, validation_labels = test_images, test_labels
    else:
        train_index, validation_index = split_indices(
            len(labels), config.validation_fraction, config.split_seed
        )
        validation_images, validation_labels = images[validation_index], labels[validation_index]
    train_index = train_index[: _check_limit(config, len(train_index))]
    if config.limit_validation is not None:
        if config.limit_validation > len(validation_labels):
            raise UsageError(
                f"--limit-validation {config.limit_validation} is larger than the "
                f"{len(validation_labels)} examples of the {'test' if config.full_train else 'validation'} "
                f"split; use at most {len(validation_labels)}"
            )
        validation_images = validation_images[: config.limit_validation]
        validation_labels = validation_labels[: config.limit_validation]
    train_images = images[train_index]
    mean, std = channel_stats(train_images)
    return Arrays(
        train_images=train_images,
        train_labels=labels[train_index],
        validation_images=validation_images,
        validation_labels=validation_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=builder.info.features[TEST_LABEL].num_classes,
        evaluation_split="test" if config.full_train else "validation",
        mean=mean,
        std=std,
    )


def check_data_available(config):
    """Fails in one line, cheaply, if `config`'s data can be neither read nor prepared.

    Prepared data (`<data_dir>/<tfds name>/<version>/`) is enough; nothing
    touches the network then. Otherwise the data must be obtainable: the
    download hosts answer (probed with a timeout, so an offline machine fails
    at once instead of after TFDS's retries), CIFAR-N release files named by
    `cifar_n_dir` exist, or a Tiny-ImageNet archive is in the manual directory.

    Returns:
        The TFDS builder.

    Raises:
        UsageError: with the fix, in one line.
    """
    spec = _spec(config)
    builder = tfds.builder(spec.tfds_name, data_dir=config.data_dir)
    if _is_prepared(builder):
        _check_limit(config, _num_train_examples(builder, config))
        return builder
    manual_dir = manual_dir_of(builder)
    needs_cifar_n = config.dataset in cifar_n.RELEASES
    if needs_cifar_n and config.cifar_n_dir is not None:
        cifar_n.check_sources(config.dataset, config.cifar_n_dir)
    if config.dataset == "tiny-imagenet" and tiny_imagenet.find_local_archive(manual_dir):
        return builder
    urls = [spec.download_url]
    if needs_cifar_n and config.cifar_n_dir is None:
        if not cifar_n.manual_dir_is_ready(config.dataset, manual_dir):
            release = cifar_n.RELEASES[config.dataset]
            urls.append(release.url(release.human_pt))
    if not all(_reachable(url) for url in urls):
        raise _not_prepared(config, builder, "could not be downloaded (no network?)")
    return builder


def train_label_key(config):
    """The feature the model trains on (test labels are always the clean `label`)."""
    spec = _spec(config)
    if spec.train_label is not None:
        return spec.train_label
    return CIFAR10N_LABELS[config.label_noise]


def manual_dir_of(builder):
    """TFDS's default manual directory of `builder`: `<data_dir>/downloads/manual`."""
    return os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")


def split_indices(num_examples, validation_fraction, seed):
    """Sorted, disjoint (train, validation) indices covering range(num_examples)."""
    num_validation = round(num_examples * validation_fraction)
    permutation = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(permutation[num_validation:]), np.sort(permutation[:num_validation])


def channel_stats(images):
    """Exact per-channel mean and std (float32, [0, 1] units) of uint8 images (N, H, W, C)."""
    channels = images.shape[-1]
    # Pixel histograms, a few thousand images at a time: exact, and no float
    # copy of the images (1 GB for CIFAR).
    counts = np.zeros((channels, 256), np.int64)
    for start in range(0, len(images), 4096):
        pixels = images[start : start + 4096].reshape(-1, channels)
        for channel in range(channels):
            counts[channel] += np.bincount(pixels[:, channel], minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    variance = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)


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
    tf = _tensorflow()
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
    tf = _tensorflow()
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
    tf = _tensorflow()
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
def _tensorflow():
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


def _is_prepared(builder):
    # Without TFDS's "Variant folder ... has no dataset_info.json" warning for
    # data not prepared yet: the one-line error that follows says it better.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return builder.is_prepared()
    finally:
        absl_logging.set_verbosity(verbosity)


def _spec(config):
    if config.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {config.dataset!r}; choose from {', '.join(DATASETS)}")
    if config.dataset == "cifar10n" and config.label_noise not in CIFAR10N_LABELS:
        raise UsageError(
            f"unknown label noise {config.label_noise!r}; choose from {', '.join(CIFAR10N_LABELS)}"
        )
    if not config.full_train and not 0 < config.validation_fraction < 1:
        raise UsageError(
            f"validation fraction must be in (0, 1), got {config.validation_fraction}; "
            "use --full-train to train on everything"
        )
    return DATASETS[config.dataset]


def _num_train_examples(builder, config):
    num_examples = builder.info.splits["train"].num_examples
    if config.full_train:
        return num_examples
    return num_examples - round(num_examples * config.validation_fraction)


def _check_limit(config, num_available):
    """The number of training examples kept: `limit_train`, at most what the split has."""
    if config.limit_train is None:
        return num_available
    if config.limit_train > num_available:
        kept = 1 - config.validation_fraction
        split = "training set" if config.full_train else f"{kept:.0%} training split"
        raise UsageError(
            f"--limit-train {config.limit_train} is larger than the {split} of "
            f"{config.dataset} ({num_available} examples); use at most {num_available}"
        )
    return config.limit_train


def _prepare(builder, config):
    """Downloads and prepares the dataset with TFDS unless it is prepared already."""
    if _is_prepared(builder):
        return
    manual_dir = manual_dir_of(builder)
    if config.dataset in cifar_n.RELEASES:
        cifar_n.prepare_manual_dir(config.dataset, manual_dir, config.cifar_n_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    except ModuleNotFoundError as error:
        # tensorflow-datasets 4.9.10 needs it to prepare anything but does not
        # declare it (tensorflow/datasets#11212).
        raise UsageError(f"{error}; run `pip install {error.name}`") from None
    except (OSError, AssertionError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise _not_prepared(config, builder, f"could not be prepared ({reason})") from None


def _read_split(builder, split, label_key):
    _tensorflow()  # before TFDS starts TensorFlow
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    labels = arrays[label_key].astype(np.int32)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{builder.name} {split} has no {label_key!r} (it holds -1)")
    return arrays["image"], labels


def _not_prepared(config, builder, what_failed):
    where = os.fspath(builder.data_dir_root)
    holding = f"{builder.name}/{builder.version}"
    if config.dataset == "tiny-imagenet":
        fix = (
            f"run once online, put {tiny_imagenet.ARCHIVE_NAME} ({tiny_imagenet.URL}) in "
            f"{manual_dir_of(builder)}, or pass --data-dir DIR holding {holding}"
        )
    else:
        fix = f"run once online or pass --data-dir DIR holding {holding}"
    return UsageError(
        f"dataset {config.dataset!r} is not prepared in {where} and {what_failed}; {fix}"
    )


def _reachable(url, timeout=NETWORK_PROBE_SECONDS):
    """Whether a TCP connection to `url`'s host (or its proxy) opens within `timeout` s."""
    scheme = urllib.parse.urlsplit(url).scheme
    parts = urllib.parse.urlsplit(urllib.request.getproxies().get(scheme, url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    opened = []

    def probe():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    # A thread, because name resolution ignores socket timeouts.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)
