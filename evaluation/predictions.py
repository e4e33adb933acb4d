"""A finished run's saved models and their predictions (shared by app.evaluate/consistency/transfer).

A run directory (docs/run-directory.md) holds the trained SGD model and every
average it kept, as Keras weights files. This module finds them (from what
`summary.json` says was saved, so a missing file is an error, not a silently
missing row), rebuilds the run's model once, loads each weights file into it
and predicts logits on the run's data, re-created from its `config.json` by
the data layer (data/loading.py: the same split, normalization and hold-out).

Names: a saved model is named by its file's stem, `final`, `ema_<d>_acc`,
`ema_<d>_acc_bn`, `ema_<d>_loss`, `ema_<d>_loss_bn`, `swa`. The paper's
methods map onto them as `baseline` -> `final`, `ema_acc` / `ema_loss` ->
`ema_<d>_{acc,loss}_bn` (BatchNorm recomputed once after training, paper
§4.2; the tracked statistics where the run recomputed none, e.g. VGG-16).

Everything that can fail because of the user (`check_*`, `saved_weights`,
`method_weights`) is cheap and raises `UsageError` before any data is read.
"""

import contextlib
import dataclasses
import os

import numpy as np

from callbacks.ema_selection import SUMMARY_KEYS
from training import run_dir as run_directory
from data import availability
from utils.errors import UsageError
from utils.files import atomic_write
from evaluation import runs



def expand_runs(path):
    """The finished runs behind RUN_DIR (itself, or its `seed-<k>/`), read; `UsageError` if none."""
    directories, _ = runs.expand(path)
    return [runs.read_run(directory) for directory in directories]


def weights_path(run_path, name):
    return run_directory.weights_path(run_path, name)


def relative_weights_path(name):
    return f"{run_directory.WEIGHTS_DIR}/{name}{run_directory.WEIGHTS_SUFFIX}"


def saved_weights(run, require_files=True):
    """Stems of every weights file `summary.json` says the run saved, in table order.

    Raises:
        UsageError: if one of them is missing (unless `require_files` is False).
    """
    names = [run_directory.FINAL_WEIGHTS]
    if run.summary.get("sgd", {}).get("early_stopped"):  # runs from before the analysis plan have none
        names.append(run_directory.SGD_EARLY_WEIGHTS)
    for key, entry in run.summary.get("ema", {}).items():
        for criterion in runs.EMA_METHODS.values():
            selected = entry.get(SUMMARY_KEYS[criterion])
            if selected is None:
                continue  # never selected (no epoch evaluated)
            names.append(run_directory.ema_stem(key, criterion))
            if "bn_recomputed" in selected:
                names.append(run_directory.ema_stem(key, criterion, bn_recomputed=True))
    names += run.summary.get("ema_final", {}).get("weights", [])  # runs from before the analysis plan have none
    if "swa" in run.summary:
        names.append(run_directory.SWA_WEIGHTS)
        if "budget" in run.summary["swa"]:
            names.append(run_directory.SWA_BUDGET_WEIGHTS)
    for name in names if require_files else ():
        if not os.path.isfile(weights_path(run.path, name)):
            raise UsageError(
                f"{weights_path(run.path, name)} is missing although summary.json lists it; "
                "restore the file or train the run again"
            )
    return names


def choose_decay(run, requested=None):
    """The summary key (e.g. '0.998') of the EMA decay to report: `requested`, else the largest kept."""
    from evaluation import report

    return report.choose_decay(runs.Group(run.config.get("dataset"), run.config.get("model"), [run], []), requested)


def method_weights(run, decay_key, names=None):
    """{method: stem} for `baseline`, `sgd_early`, `ema_acc`, `ema_loss` (BN recomputed where saved) and `swa`.

    `names` defaults to `saved_weights(run)` (which requires the files).
    """
    names = saved_weights(run) if names is None else names
    methods = {"baseline": run_directory.FINAL_WEIGHTS}
    if run_directory.SGD_EARLY_WEIGHTS in names:
        methods["sgd_early"] = run_directory.SGD_EARLY_WEIGHTS
    if decay_key is not None:
        for method, criterion in runs.EMA_METHODS.items():
            for stem in (run_directory.ema_stem(decay_key, criterion, bn_recomputed=True),
                         run_directory.ema_stem(decay_key, criterion)):
                if stem in names:
                    methods[method] = stem
                    break
    if decay_key is not None:
        for stem in (run_directory.ema_final_stem(decay_key) + "_bn", run_directory.ema_final_stem(decay_key)):
            if stem in names:
                methods["ema_final"] = stem
                break
    if run_directory.SWA_WEIGHTS in names:
        methods["swa"] = run_directory.SWA_WEIGHTS
    if run_directory.SWA_BUDGET_WEIGHTS in names:
        methods["swa_budget"] = run_directory.SWA_BUDGET_WEIGHTS
    return methods


# A table label for a weights stem: 'EMA 0.998 (loss) + BN recomputed'.
describe = run_directory.describe_weights


def run_config(run, data_dir=None):
    """The run's `TrainConfig`, with `data_dir` replaced when given (data may move between machines)."""
    return run_directory.load_config(run.path, data_dir)


def check_data(config, limit_test=None):
    """Fails in one line if the data is not available or `limit_test` too large.

    Cheap, and without TensorFlow: where the dataset is prepared here,
    data/availability.py reads its split sizes from disk; otherwise TFDS
    (which does not import TensorFlow for this) decides.
    """
    sizes = availability.check(config)
    if sizes is None:
        from data import loading

        splits = loading.check_data_available(config).info.splits
        sizes = {name: splits[name].num_examples for name in splits.keys()}
    if limit_test is not None and "test" in sizes:
        # Known without reading the data where the dataset is prepared; else checked after loading.
        check_limit("--limit-test", limit_test, sizes["test"])


def check_limit(flag, limit, available):
    if limit is not None and limit > available:
        raise UsageError(f"{flag} {limit} is larger than the {available} examples there; use at most {available}")


# The one most recent `load_arrays` result: the seeds of a multi-seed directory
# (and the commands run one after another in one process) share their data,
# and decoding CIFAR's 60,000 images takes seconds; one entry bounds the memory.
_DATA_FIELDS = ("dataset", "data_dir", "cifar_n_dir", "label_noise", "full_train",
                "validation_fraction", "split_seed", "limit_train", "limit_validation")
_cached_arrays = {}


def load_arrays(config):
    """`data.loading.load_arrays(config)`, reused while the data-defining fields stay the same."""
    from data import loading

    key = tuple(getattr(config, field) for field in _DATA_FIELDS)
    if key not in _cached_arrays:
        _cached_arrays.clear()
        _cached_arrays[key] = loading.load_arrays(config)
    return _cached_arrays[key]


@dataclasses.dataclass(frozen=True)
class Split:
    """Evaluation batches (normalized, in order) and their labels as NumPy."""

    dataset: object
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's hold-out (None with `full_train`) and test split, as the run saw them."""

    validation: Split | None
    test: Split
    num_classes: int
    image_size: int
    mean: np.ndarray
    std: np.ndarray


def load_run_data(config, limit_test=None, batch_size=None):
    """The run's validation (its 20 % hold-out, `limit_validation` kept) and test splits.

    Normalized with the run's own training statistics (data/loading.py). With
    `full_train` the run had no hold-out: `validation` is None.

    Args:
        config: the run's `TrainConfig`.
        limit_test: keep the first N test examples. Defaults to None (all).
        batch_size: prediction batch size. Defaults to the run's.
    """
    from data import pipeline

    arrays = load_arrays(config)
    check_limit("--limit-test", limit_test, len(arrays.test_labels))
    batch_size = batch_size or config.batch_size

    def split(images, labels, limit=None):
        images, labels = images[:limit], labels[:limit]
        return Split(pipeline.evaluation_dataset(images, labels, arrays.mean, arrays.std, batch_size), labels)

    return RunData(
        validation=None if config.full_train else split(arrays.validation_images, arrays.validation_labels),
        test=split(arrays.test_images, arrays.test_labels, limit_test),
        num_classes=arrays.num_classes,
        image_size=arrays.image_size,
        mean=arrays.mean,
        std=arrays.std,
    )


@contextlib.contextmanager
def float32_policy():
    """Builds layers in float32 whatever policy the process uses (a run may train in mixed precision)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(config, num_classes, image_size):
    """The run's architecture, uncompiled, in float32 (the weights files fit it)."""
    import models

    with float32_policy():
        return models.build_model(config.model, num_classes, image_size=image_size)


def load_weights(model, run, name):
    """Loads a saved weights file into `model`; a foreign or corrupt file is a `UsageError`."""
    path = weights_path(run.path, name)
    try:
        model.load_weights(path)
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"{path} does not fit the run's {run.config.get('model')} ({reason}); "
                         "restore the file or train the run again") from None


def predict_logits(model, split):
    """float32 (N, classes) logits of `model` in inference mode."""
    return np.asarray(model.predict(split.dataset, verbose=0), dtype=np.float32)


def weights_digest(run_path, name):
    """A digest of the arrays a weights file holds (names and values, not the file's bytes: HDF5
    stamps times), so that two files with the same weights are found (an EMA whose accuracy and
    loss selections are one epoch)."""
    import hashlib

    import h5py

    digest = hashlib.sha256()

    def add(key, item):
        if isinstance(item, h5py.Dataset):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(item[()]).tobytes())

    with h5py.File(weights_path(run_path, name), "r") as handle:
        handle.visititems(add)
    return digest.hexdigest()


class RunPredictor:
    """One rebuilt model per run; `logits(name, split)` loads a weights file and predicts (cached)."""

    def __init__(self, run, config, run_data):
        self.run = run
        self.model = build_model(config, run_data.num_classes, run_data.image_size)
        self._cache = {}

    def logits(self, name, split):
        key = (name, id(split))
        if key not in self._cache:
            load_weights(self.model, self.run, name)
            self._cache[key] = predict_logits(self.model, split)
        return self._cache[key]


# The test logits of the Table 3 models (`baseline`, `sgd_early`, `ema_acc`, `ema_loss`),
# written by app.evaluate beside evaluation.json. Weights are not kept with
# committed results (they are large), so app.consistency falls back on these
# to compare seeds trained and evaluated in different sessions.
CACHED_METHODS = ("baseline", "sgd_early", "ema_acc", "ema_loss")
_LABELS_KEY = "labels"
_LIMIT_KEY = "limit_test"  # 0: the whole test split


def save_test_logits(run_path, logits_by_name, labels, limit_test):
    """Writes `test_logits.npz` (float32 logits per weights stem, the labels, the limit) atomically."""
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in logits_by_name.items()}
    arrays.update({_LABELS_KEY: np.asarray(labels, dtype=np.int64), _LIMIT_KEY: np.int64(limit_test or 0)})
    return atomic_write(os.path.join(run_path, run_directory.TEST_LOGITS_FILE),
                        lambda temporary: np.savez_compressed(temporary, **arrays))


def can_predict(run, name):
    """Whether the model `name`'s weights, or its test logits `save_test_logits` kept, are in `run`."""
    if os.path.isfile(weights_path(run.path, name)):
        return True
    path = os.path.join(run.path, run_directory.TEST_LOGITS_FILE)
    if not os.path.isfile(path):
        return False
    with np.load(path) as cached:
        return name in cached.files


def cached_test_logits(run, names, limit_test):
    """({stem: logits}, labels) from the run's `test_logits.npz` for `names`, first `limit_test` rows.

    Raises:
        UsageError: the file is missing, lacks a model or holds fewer test examples than asked.
    """
    path = os.path.join(run.path, run_directory.TEST_LOGITS_FILE)
    fix = f"run `python -m app.evaluate {run.path}` while its weights exist, or restore {run.path}/weights"
    if not os.path.isfile(path):
        raise UsageError(f"{run.path} has neither its weights nor {run_directory.TEST_LOGITS_FILE}; {fix}")
    with np.load(path) as cached:
        missing = [name for name in names if name not in cached.files]
        if missing:
            raise UsageError(f"{path} holds no test logits of {', '.join(missing)}; {fix}")
        cached_limit = int(cached[_LIMIT_KEY]) or None
        if cached_limit is not None and (limit_test is None or limit_test > cached_limit):
            wanted = "the whole test split" if limit_test is None else f"{limit_test} test examples"
            raise UsageError(f"{path} holds the first {cached_limit} test examples, not {wanted}; "
                             f"pass --limit-test {cached_limit} or {fix}")
        rows = slice(None, limit_test)
        return {name: cached[name][rows] for name in names}, cached[_LABELS_KEY][rows]
