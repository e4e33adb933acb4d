"""Flags that read what another command wrote: --lr-from, --swa-lr-from and --stop-epochs-from.

`--lr-from DIR` takes the learning rate (and any tuned weight decay or batch
size) from `python -m app.tune`'s best.json; `--stop-epochs-from RUN` takes
the EMA epochs a validation run selected (its summary.json) for the final
`--full-train` run (paper §4.1), and SGD's early-stopping epoch (a run
without EMAs reads only that). Each problem is a one-line `UsageError`.
"""

import json
import os

from app.errors import UsageError
from callbacks.ema_selection import SUMMARY_KEYS
from training import run_dir as run_directory


def apply_tuned(args):
    """Fills --lr (and a tuned --weight-decay / --batch-size) from a tuner's best.json."""
    if args.lr is not None:
        raise UsageError("give --lr or --lr-from, not both")
    # A search's directory (its best.json), or one of its result files (best_sgd_final.json).
    path = args.lr_from if args.lr_from.endswith(".json") else os.path.join(args.lr_from, "best.json")
    try:
        with open(path, encoding="utf-8") as handle:
            best = json.load(handle)
        args.lr = float(best["lr"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"--lr-from: no readable {os.path.basename(path)} with an 'lr' in {os.path.dirname(path) or '.'}; "
            "run python -m app.tune first, or pass that search's --out"
        )
    # What the user typed wins over the search; what comes from it is said so.
    taken = [f"--lr {args.lr:g}"]
    tuned = best.get("hyperparameters") or {}
    if args.weight_decay is None and "weight_decay" in tuned:
        args.weight_decay = float(tuned["weight_decay"])
        taken.append(f"--weight-decay {args.weight_decay:g}")
    if args.batch_size is None and "batch_size" in tuned:
        args.batch_size = int(tuned["batch_size"])
        taken.append(f"--batch-size {args.batch_size}")
    print(f"--lr-from {args.lr_from}: {', '.join(taken)} (the search's best)", flush=True)


def tuned_swa_lr(source):
    """--swa-lr-from: the SWA learning rate in app.tune_swa's best_swa_lr.json (RUN or the file)."""
    path = source if source.endswith(".json") else os.path.join(source, run_directory.SWA_TUNING_DIR,
                                                                      run_directory.SWA_TUNING_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            lr = float(json.load(handle)["swa_lr"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"--swa-lr-from: no readable {path} with a 'swa_lr'; run python -m app.tune_swa "
                         "on the validation run first, or give that run's directory")
    print(f"--swa-lr-from {source}: --swa-lr {lr:g} (chosen on the validation split)", flush=True)
    return lr


def stop_epochs_from(run, decays, epochs):
    """The EMA epochs a validation run selected: {"<decay>": {"accuracy": e, "loss": e}} ({} for no decays:
    the run then gives SGD's early-stopping epoch only, training/sgd_selection.py)."""
    path = os.path.join(run, run_directory.SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        ema = summary.get("ema") or {}
        sgd_epoch = int(summary["sgd"]["best_val_accuracy"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(
            f"--stop-epochs-from: no finished run in {run} (no readable "
            "summary.json); give the validation run's directory"
        )
    if summary.get("evaluation_split") != "validation":
        raise UsageError(
            f"--stop-epochs-from: {run} was evaluated on the "
            f"{summary.get('evaluation_split')} split; give a run on the 80/20 validation split"
        )
    if sgd_epoch > epochs:  # training/sgd_selection.py would keep no early-stopped SGD
        raise UsageError(f"--stop-epochs-from: {run} selected epoch {sgd_epoch} for SGD's early stopping, "
                         f"beyond --epochs {epochs}; use the validation run's --epochs")
    selected = {}
    for decay in decays:
        entry = ema.get(f"{decay:g}")
        if entry is None and not ema:
            raise UsageError(f"--stop-epochs-from: {run} kept no EMA; give --ema-decays no values, "
                             "or a validation run with EMAs")
        if entry is None:
            raise UsageError(
                f"--stop-epochs-from: {run} has no EMA of decay {decay:g}; "
                f"use its decays: --ema-decays {' '.join(ema)}"
            )
        selected[f"{decay:g}"] = {
            criterion: entry[key]["epoch"]
            for criterion, key in SUMMARY_KEYS.items()
            if entry.get(key)
        }
        late = [e for e in selected[f"{decay:g}"].values() if e > epochs]
        if late:
            raise UsageError(
                f"--stop-epochs-from: {run} selected epoch {max(late)} for decay "
                f"{decay:g}, beyond --epochs {epochs}; use the validation run's --epochs"
            )
    return selected
