"""The largest-decay EMA at the last epoch, beside its early-stopped selections.

docs/analysis-plan.md (fig1a's primary statistic, "peaks and deteriorates")
compares, on the test set, the EMA at its validation-selected epoch with the
same EMA at the end of training, both with BatchNorm recomputed once. The run
keeps that last-epoch average as `weights/ema_<d>_final.weights.h5` (BatchNorm
statistics as tracked) and `ema_<d>_final_bn.weights.h5` (recomputed over one
pass of the training data, as `BatchNormRecompute` does for the selections),
for the largest decay: the one the paper's tables report (§4.2).
"""

from callbacks.batch_norm import recompute_batch_norm, recomputed_layers
from training import run_dir as run_directory
from utils.files import atomic_write


def save(config, path, model, ema, train_one_pass, rows):
    """Writes the weights files; returns summary.json's `ema_final` entry."""
    decay = max(ema.decays)
    stem = run_directory.ema_final_stem(decay)
    entry = {"decay": f"{decay:g}", "epoch": int(rows[-1]["epoch"]), "weights": [stem]}
    with ema.swapped_in(decay):
        atomic_write(run_directory.weights_path(path, stem), model.save_weights)
        if config.bn_recompute != "none" and recomputed_layers(model):
            recompute_batch_norm(model, train_one_pass)
            atomic_write(run_directory.weights_path(path, stem + "_bn"), model.save_weights)
            entry["weights"].append(stem + "_bn")
    return entry
