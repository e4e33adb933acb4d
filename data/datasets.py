"""The datasets `--dataset` names: TFDS name and version, labels, download source.

| `--dataset`     | TFDS name       | train label                        | test label |
|-----------------|-----------------|------------------------------------|------------|
| `cifar10`       | `cifar10`       | `label`                            | `label`    |
| `cifar100`      | `cifar100`      | `label` (the 100 fine classes)     | `label`    |
| `cifar10n`      | `cifar10_n`     | `worse_label` (`--label-noise`)    | `label`    |
| `cifar100n`     | `cifar100_n`    | `noise_label`                      | `label`    |
| `tiny-imagenet` | `tiny_imagenet` | `label` (data/tiny_imagenet.py)    | `label`    |

Plain data, no TensorFlow or TFDS import: the command lines check a dataset
before their heavy imports (data/availability.py). `version` is the version
the installed TFDS builds (tests/test_data.py compares it with TFDS's
builders), used to find prepared data without asking TFDS; `train_examples`
the size of its train split (compared with the prepared data where it is here).
"""

import dataclasses
import os

from utils.errors import UsageError

TEST_LABEL = "label"
CIFAR10N_LABELS = {
    "worse": "worse_label",
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
}

# Tiny-ImageNet's official archive (data/tiny_imagenet.py reads its layout).
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_ARCHIVE = "tiny-imagenet-200.zip"
TINY_IMAGENET_ROOT = "tiny-imagenet-200"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    version: str
    train_examples: int  # the TFDS train split
    train_label: str | None  # None: chosen by `label_noise`
    download_url: str  # what preparing it fetches; probed before trying


_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
DATASETS = {
    "cifar10": DatasetSpec("cifar10", "3.0.2", 50_000, "label", _CIFAR10_URL),
    "cifar100": DatasetSpec("cifar100", "3.0.2", 50_000, "label", _CIFAR100_URL),
    "cifar10n": DatasetSpec("cifar10_n", "1.0.4", 50_000, None, _CIFAR10_URL),
    "cifar100n": DatasetSpec("cifar100_n", "1.0.1", 50_000, "noise_label", _CIFAR100_URL),
    "tiny-imagenet": DatasetSpec("tiny_imagenet", "1.0.0", 100_000, "label", TINY_IMAGENET_URL),
}


def spec_of(config):
    """The `DatasetSpec` of `config.dataset`; validates the data flags of `config`.

    Raises:
        UsageError: unknown dataset or label noise, or a validation fraction
            outside (0, 1) without `full_train`.
    """
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


def train_label_key(config):
    """The feature the model trains on (test labels are always the clean `label`)."""
    spec = spec_of(config)
    if spec.train_label is not None:
        return spec.train_label
    return CIFAR10N_LABELS[config.label_noise]


def num_train_examples(num_examples, full_train, validation_fraction):
    """Training examples before `limit_train`: all `num_examples`, or what the hold-out leaves."""
    if full_train:
        return num_examples
    return num_examples - round(num_examples * validation_fraction)


def check_limit(config, num_available):
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


def manual_dir(data_dir_root):
    """TFDS's default manual directory: `<data_dir>/downloads/manual`."""
    return os.path.join(os.fspath(data_dir_root), "downloads", "manual")


def find_tiny_imagenet_archive(manual_directory):
    """The extracted Tiny-ImageNet folder or its zip in `manual_directory`, or None."""
    if manual_directory is None:
        return None
    folder = os.path.join(os.fspath(manual_directory), TINY_IMAGENET_ROOT)
    if os.path.isfile(os.path.join(folder, "wnids.txt")):
        return folder
    archive = os.path.join(os.fspath(manual_directory), TINY_IMAGENET_ARCHIVE)
    return archive if os.path.isfile(archive) else None
