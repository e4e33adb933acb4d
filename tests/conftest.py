"""Session-scoped fixtures shared by test files.

`tiny_seed_runs`: one real `python -m app.train --seeds 0 1` on CIFAR-10
(ResNet-20, 128 training / 128 validation examples, 2 epochs, one EMA of
decay 0.9 updated every 2 steps, BatchNorm recomputed at the end), trained
once per session (~30-60 s on 2 CPU cores; under tests/run.sh's pytest-xdist
workers once for all of them) and read by the evaluation
commands' tests (test_evaluate.py, test_consistency.py, test_transfer.py).
Those tests write their own files into it (evaluation.json, transfer.json,
consistency.json) and must not change what training wrote.

The session's JAX processes (this one and every subprocess the tests start:
`app.train` on JAX, the multi-process runs) share one persistent XLA
compilation cache in a temporary directory (JAX's `jax_compilation_cache_dir`,
every program cached whatever its compile time): a program compiled once is
loaded by the next process that compiles the same one. The executable is the
same, so the results are; on 2 CPU cores a repeated ResNet-20 run then takes
25 s of CPU instead of 44 s. A directory set by the caller is kept.
"""

import atexit
import fcntl
import os
import shutil
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
TINY_RUN_ARGS = [
    "--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR,
    "--limit-train", "128", "--limit-validation", "128", "--batch-size", "64",
    "--epochs", "2", "--ema-decays", "0.9", "--ema-every", "2",
]
TINY_SEEDS = (0, 1)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # pytest-xdist's workers inherit the controller's
    _jax_cache = tempfile.mkdtemp(prefix="weight-averaging-tests-jax-cache-")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_jax_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="session")
def tiny_seed_runs(tmp_path_factory):
    """Path of a directory holding seed-0/ and seed-1/ finished tiny CIFAR-10 runs."""
    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
    from app import train

    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = str(tmp_path_factory.mktemp("tiny_runs") / "cifar10-resnet20")
        train.main(TINY_RUN_ARGS + ["--seeds", *map(str, TINY_SEEDS), "--out", out])
        return out
    # Under pytest-xdist (tests/run.sh) the workers share one training: the first
    # to get here trains into their common base directory, the others wait for it.
    shared = tmp_path_factory.getbasetemp().parent / "tiny_runs"
    shared.mkdir(exist_ok=True)
    out = str(shared / "cifar10-resnet20")
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "trained").exists():
            train.main(TINY_RUN_ARGS + ["--seeds", *map(str, TINY_SEEDS), "--out", out])
            (shared / "trained").touch()
    return out


# Files whose tests take minutes, scheduled first so that pytest-xdist's
# workers (tests/run.sh: one file per worker at a time) end together.
LONGEST_FIRST = (
    "test_distribution_app.py", "test_resume.py", "test_reproduce.py", "test_resume_branch.py", "test_distribution.py",
    "test_multi_process.py", "test_train.py", "test_tune.py", "test_evaluate.py", "test_posthoc.py",
    "test_end_of_run.py", "test_consistency.py", "test_models.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


def normalized_test_images(run_path, limit):
    """The first `limit` test images and labels, normalized in NumPy with the run's training statistics.

    An independent path to the model's inputs (not data/pipeline.py's tf.data
    pipeline): the channel mean/std of the exact training images the run
    used, recomputed here in float64.
    """
    from training import run_dir
    from evaluation import predictions

    # The decoded images themselves come from the data layer (cached there).
    arrays = predictions.load_arrays(run_dir.load_config(run_path))
    pixels = arrays.train_images.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    images = (arrays.test_images[:limit].astype(np.float64) / 255.0 - mean) / std
    return images.astype(np.float32), arrays.test_labels[:limit], arrays
