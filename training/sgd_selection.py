"""SGD with its own validation early stopping: the comparator for an early-stopped EMA.

docs/analysis-plan.md ("Comparators") sets SGD's weights at its epoch of best
validation accuracy beside every early-stopped EMA, so that "EMA + early
stopping" is compared with "SGD + early stopping" as well as with SGD annealed
to 0. An 80/20 run keeps the weights of its best validation epoch so far; a
`--full-train` run (whose per-epoch evaluation is on test images) keeps the
epoch that its `--stop-epochs-from` validation run chose, as the EMAs do
(§4.1: early stopping is not tuned again on the test set). The file is
`weights/sgd_early.weights.h5`, written at that epoch's end, when the trained
weights are in the model (after every average has been swapped back out).

Resuming needs no state: the best value so far is the maximum of the
history rows already written, and the file was written at that epoch.
"""

import math
import os

import keras

from training import run_dir as run_directory
from utils.files import atomic_write


class KeepSGDEpoch(keras.callbacks.Callback):
    """Saves the trained model's weights at one epoch: a fixed one, or its best `val_accuracy` so far.

    Args:
        path: the weights file (`.weights.h5`).
        epoch: the 0-based epoch (Keras's `epoch`) to keep, or None for the best validation accuracy
            so far (the first of equal values, as summary.json's `best_val_accuracy`).
        best_so_far: the best `val_accuracy` of the epochs before this fit (a resumed run's history).
    """

    def __init__(self, path, epoch=None, best_so_far=-math.inf):
        super().__init__()
        if not path.endswith(run_directory.WEIGHTS_SUFFIX):
            raise ValueError(f"Invalid value for argument `path`. Received: path={path!r}. "
                             f"Expected a file name ending in {run_directory.WEIGHTS_SUFFIX}")
        self.path, self.epoch, self.best = path, epoch, best_so_far

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch is None:
            value = (logs or {}).get("val_accuracy")
            if value is None or not value > self.best:
                return
            self.best = value
        elif epoch != self.epoch:
            return
        # The folder may be gone on a resumed run: git and some copies drop an empty one.
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        atomic_write(self.path, self.model.save_weights)


def keep_sgd_epoch(config, run_path, rows):
    """The callback for a run (`rows`: the history rows a resumed run already has)."""
    path = run_directory.weights_path(run_path, run_directory.SGD_EARLY_WEIGHTS)
    if config.stop_epochs_from:
        return KeepSGDEpoch(path, epoch=_chosen_epoch(config) - 1)  # summary.json counts epochs from 1
    best = max((row["val_accuracy"] for row in rows or ()), default=-math.inf)
    return KeepSGDEpoch(path, best_so_far=best)


def summary_entry(config, rows, split="validation"):
    """summary.json's `sgd.early_stopped`: the kept epoch (from 1) and the split that chose it (None if the
    chosen epoch was never reached). `split`: the run's evaluation split, which chooses it without
    `--stop-epochs-from` (a --full-train run's is the test split, and says so)."""
    if config.stop_epochs_from:
        epoch = _chosen_epoch(config)
        chosen = next((row for row in rows if int(row["epoch"]) == epoch), None)
        if chosen is None:  # the validation run's epoch lies past this run's last: nothing was kept
            return None
        selected_on = run_directory.selected_on_run(config.stop_epochs_from)
    else:
        chosen = max(rows, key=lambda row: row["val_accuracy"])
        selected_on = split
    return {"epoch": int(chosen["epoch"]), "val_accuracy": chosen["val_accuracy"], "val_loss": chosen["val_loss"],
            "selected_on": selected_on, "weights": f"{run_directory.WEIGHTS_DIR}/{run_directory.SGD_EARLY_WEIGHTS}"
                                                   f"{run_directory.WEIGHTS_SUFFIX}"}


def _chosen_epoch(config):
    """SGD's epoch of best validation accuracy (from 1) in the `--stop-epochs-from` run."""
    return run_directory.read_summary(config.stop_epochs_from)["sgd"]["best_val_accuracy"]["epoch"]
