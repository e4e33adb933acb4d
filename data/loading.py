"""TFDS -> NumPy: a run's splits as uint8 images and int32 labels, in memory.

Which TFDS dataset and labels each `--dataset` means: data/datasets.py.

Splits (paper §4.1): by default a random 80/20 split of the training set,
seeded by `split_seed` (not `seed`, so every training seed sees the same
split), into `train` and `validation`; the hold-out keeps the training labels
(noisy for CIFAR-N: clean labels would be information a noisy-label method
does not have). `full_train` trains on the whole training set and evaluates on
the test set. `limit_train=N` keeps the first N training examples after that.

Loading reads each split's encoded images and decodes only the ones the run
keeps, into memory (all of CIFAR-10: 150 MB as uint8; its 50,000 train JPEGs
decode in ~3.7 s on 2 shared CPU cores, and `--limit-train 5000
--limit-validation 2000` decodes 7,000 of them); data/pipeline.py turns the
arrays into tf.data streams.

Missing data: data/availability.py fails in one line before TensorFlow is
imported; `check_data_available` is the same check asked of TFDS itself, for
what that one cannot decide.
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from data import availability
from data import cifar_n
from data import datasets
from data import pipeline
from data import tiny_imagenet  # noqa: F401  (registers "tiny_imagenet" with TFDS)
from utils.errors import UsageError


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


def load_data(config):
    """The tf.data pipelines of one run (`config`: a `TrainConfig`)."""
    return pipeline.make_data(load_arrays(config), batch_size=config.batch_size, seed=config.seed,
                              eval_batch_size=config.eval_batch_size)


def load_arrays(config):
    """The run's split data as NumPy arrays (for a training loop without tf.data)."""
    builder = check_data_available(config)
    _prepare(builder, config)
    num_examples = builder.info.splits["train"].num_examples
    if config.full_train:
        train_index, validation_index = np.arange(num_examples), None
    else:
        train_index, validation_index = split_indices(num_examples, config.validation_fraction, config.split_seed)
    train_index = train_index[: datasets.check_limit(config, len(train_index))]
    if config.limit_validation is not None:
        available = len(validation_index) if validation_index is not None else builder.info.splits["test"].num_examples
        if config.limit_validation > available:
            raise UsageError(
                f"--limit-validation {config.limit_validation} is larger than the "
                f"{available} examples of the {'test' if config.full_train else 'validation'} "
                f"split; use at most {available}"
            )
    # One read of the train split; only the kept examples' images are decoded.
    kept = train_index if validation_index is None else np.concatenate(
        [train_index, validation_index[: config.limit_validation]])
    images, labels = _read_split(builder, "train", datasets.train_label_key(config), kept)
    train_images, train_labels = images[: len(train_index)], labels[: len(train_index)]
    test_images, test_labels = _read_split(builder, "test", datasets.TEST_LABEL)
    if validation_index is None:  # the test split; uncut, the same arrays (data/pipeline.py checks `is`)
        validation_images, validation_labels = test_images, test_labels
        if config.limit_validation is not None:
            validation_images = test_images[: config.limit_validation]
            validation_labels = test_labels[: config.limit_validation]
    else:
        validation_images, validation_labels = images[len(train_index):], labels[len(train_index):]
    mean, std = channel_stats(train_images)
    return Arrays(
        train_images=train_images,
        train_labels=train_labels,
        validation_images=validation_images,
        validation_labels=validation_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=builder.info.features[datasets.TEST_LABEL].num_classes,
        evaluation_split="test" if config.full_train else "validation",
        mean=mean,
        std=std,
    )


def check_data_available(config):
    """Fails in one line if `config`'s data can be neither read nor prepared, asking TFDS.

    Prepared data is enough; nothing touches the network then. Otherwise the
    data must be obtainable: the download hosts answer (probed with a
    timeout), CIFAR-N release files named by `cifar_n_dir` exist, or a
    Tiny-ImageNet archive is in the manual directory.

    Returns:
        The TFDS builder.

    Raises:
        UsageError: with the fix, in one line.
    """
    spec = datasets.spec_of(config)
    builder = tfds.builder(spec.tfds_name, data_dir=config.data_dir)
    if _is_prepared(builder):
        num_examples = builder.info.splits["train"].num_examples
        datasets.check_limit(config, datasets.num_train_examples(num_examples, config.full_train,
                                                               config.validation_fraction))
        return builder
    availability.require_obtainable(config, os.fspath(builder.data_dir_root),
                                    f"{builder.name}/{builder.version}")
    return builder


def prepare(config):
    """Downloads and prepares `config`'s dataset with TFDS unless it is prepared; returns the builder."""
    builder = check_data_available(config)
    _prepare(builder, config)
    return builder


def manual_dir_of(builder):
    """TFDS's default manual directory of `builder`: `<data_dir>/downloads/manual`."""
    return datasets.manual_dir(builder.data_dir_root)


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


def _is_prepared(builder):
    # Without TFDS's "Variant folder ... has no dataset_info.json" warning for
    # data not prepared yet: the one-line error that follows says it better.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return builder.is_prepared()
    finally:
        absl_logging.set_verbosity(verbosity)


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


def _read_split(builder, split, label_key, indices=None):
    """Images (uint8) and labels (int32) of `split`'s examples at `indices` (all when None), in that order.

    Reads the encoded images and decodes only those at `indices`, with the
    dataset's own image feature (the decoding TFDS applies when it decodes).
    """
    tf = pipeline.tensorflow()  # before TFDS starts TensorFlow
    records = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False,
                                               decoders={"image": tfds.decode.SkipDecoding()}))
    labels = records[label_key].astype(np.int32)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{builder.name} {split} has no {label_key!r} (it holds -1)")
    encoded = records["image"]
    if indices is not None:
        encoded, labels = encoded[indices], labels[indices]
    feature = builder.info.features["image"]
    if not len(encoded):
        return np.zeros((0, *feature.shape), np.uint8), labels
    decoded = tf.data.Dataset.from_tensor_slices(encoded).map(
        feature.decode_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(4096)
    return np.concatenate(list(tfds.as_numpy(decoded))), labels


def _not_prepared(config, builder, what_failed):
    return availability.not_prepared(config, os.fspath(builder.data_dir_root),
                                     f"{builder.name}/{builder.version}", what_failed)
