"""The run's best saved model, chosen on the validation split and written whole as `best.keras`.

`choose(summary)` picks, among the models a run saved (SGD at the end and at
its best validation epoch, every EMA selection with its BatchNorm statistics as tracked and recomputed, SWA),
the one of highest validation accuracy (ties: the lowest validation loss,
then the summary table's order). A `--full-train` run measures on the test
split: choosing on it would flatter the choice, so none is chosen.

`save` writes it as a whole Keras model, `RUN/best.keras`, with the run's
input normalization in front: it takes raw pixels (0-255) and returns
logits, uncompiled, float32. It holds Keras's own layers only, so plain
Keras loads it, without this repository:

    import keras
    model = keras.saving.load_model("RUN/best.keras")

Evidence: tests/test_end_of_run.py loads it that way in a fresh process, in
another directory, and scores the accuracy and loss summary.json gives it on
the validation split.
"""

import os

import keras
import numpy as np

import models
from callbacks.ema_selection import SUMMARY_KEYS
from training import run_dir as run_directory
from utils.files import atomic_write

CRITERION = "val_accuracy"


def candidates(summary):
    """`(stem, metrics)` of every saved model with validation metrics, in the summary table's order."""
    yield run_directory.FINAL_WEIGHTS, summary["sgd"]["final"]
    if summary["sgd"].get("early_stopped"):  # SGD at its best validation epoch (training/sgd_selection.py)
        yield run_directory.SGD_EARLY_WEIGHTS, summary["sgd"]["early_stopped"]
    for key, entry in summary.get("ema", {}).items():
        for criterion, summary_key in SUMMARY_KEYS.items():
            selected = entry.get(summary_key)
            if selected is None:
                continue  # never selected (no epoch evaluated)
            yield run_directory.ema_stem(key, criterion), selected
            if "bn_recomputed" in selected:
                yield run_directory.ema_stem(key, criterion, bn_recomputed=True), selected["bn_recomputed"]
    if summary.get("swa", {}).get(CRITERION) is not None:
        yield run_directory.SWA_WEIGHTS, summary["swa"]


def choose(summary):
    """summary.json's `best` entry, or None for a run without a validation split."""
    if summary["evaluation_split"] != "validation":
        return None
    scored = [(stem, metrics) for stem, metrics in candidates(summary) if metrics.get(CRITERION) is not None]
    # min() keeps the first of equals: the table's order breaks exact ties.
    stem, metrics = min(scored, key=lambda item: (-item[1][CRITERION], item[1]["val_loss"]))
    return {
        "name": stem,
        "weights": f"{run_directory.WEIGHTS_DIR}/{stem}{run_directory.WEIGHTS_SUFFIX}",
        "model": run_directory.BEST_MODEL_FILE,
        "selected_on": "validation",
        "criterion": f"highest {CRITERION}, ties: lowest val_loss",
        "val_accuracy": metrics[CRITERION],
        "val_loss": metrics["val_loss"],
    }


def save(run_path, config, data, stem):
    """Writes `RUN/best.keras`: the run's architecture holding `weights/<stem>`; returns its path.

    Build it outside any distribution scope: the file holds plain variables.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # the weights files are float32, a mixed-precision run's too
    try:
        network = models.build_model(config.model, data.num_classes, image_size=data.image_size)
        network.load_weights(run_directory.weights_path(run_path, stem))
        inputs = keras.Input((data.image_size, data.image_size, 3), name="pixels")
        # data/pipeline.py's normalization, (pixels / 255 - mean) / std, in pixel units.
        mean, std = 255.0 * np.asarray(data.mean, np.float64), 255.0 * np.asarray(data.std, np.float64)
        normalized = keras.layers.Normalization(mean=mean, variance=std**2, name="normalization")(inputs)
        model = keras.Model(inputs, network(normalized), name=f"{config.model}_best")
    finally:
        keras.config.set_dtype_policy(previous)
    return atomic_write(os.path.join(run_path, run_directory.BEST_MODEL_FILE), model.save)
