"""The SWA learning rate tuned on the validation split (docs/analysis-plan.md, Comparators).

A validation run trained with `--swa --keep-checkpoint` keeps the baseline as
it was when its SWA branch started (`checkpoint/swa-branch.npz`). From that one
branch point, `tune` trains one SWA branch per learning rate of a grid (the
plan's 0.01, 0.02, 0.05) to the budget's end, each in
`RUN/swa-tuning/lr-<lr>/` with its own history, checkpoint (a rerun resumes it)
and `weights/swa.weights.h5`, and scores each by its average's validation
accuracy at the budget's end, BatchNorm recomputed (the SWA paper's protocol,
§3.2). The run's own branch counts as the trial of its learning rate when it
ended at the budget's end. The choice is written to
`RUN/swa-tuning/best_swa_lr.json`, which `app.train --swa-lr-from` reads.
Ties go to the earlier learning rate of the grid.
"""

import dataclasses
import json
import os
import shutil

from training import checkpoint, provenance, swa_branch, trainer
from training import run_dir as run_directory
from utils.files import atomic_write

DIRECTORY = run_directory.SWA_TUNING_DIR
BEST_FILE = run_directory.SWA_TUNING_FILE
TRIAL_FILE = "trial.json"
OBJECTIVE = "val_accuracy"


def branch_directory(lr):
    """The trial of `lr`, relative to the run directory."""
    return os.path.join(DIRECTORY, f"lr-{lr:g}")


def branch_point(run_path):
    return os.path.join(run_path, checkpoint.DIRECTORY, swa_branch.BRANCH_POINT)


def own_trial(run_path, summary, config):
    """The run's own SWA branch as a trial, if it ran exactly to the budget's end; else None."""
    swa = summary.get("swa") or {}
    branch = swa.get("branch") or {}
    if branch.get("last_epoch") != config.epochs or OBJECTIVE not in swa:
        return None
    return {"swa_lr": branch["swa_lr"], OBJECTIVE: swa[OBJECTIVE], "val_loss": swa.get("val_loss"),
            "models_averaged": swa.get("models_averaged"), "directory": branch.get("directory", swa_branch.DIRECTORY)}


def tune(config, data, run_path, lrs, summary, report):
    """Trains (or resumes, or reuses) one branch per learning rate in `lrs`; writes and returns the choice.

    `summary` is the run's summary.json; `report` is trainer.train's (the branches report "swa_branch").
    """
    budget_epochs = config.epochs - config.swa_start_epoch + 1
    own = own_trial(run_path, summary, config)
    trials = []
    for lr in lrs:
        if own is not None and own["swa_lr"] == lr:
            trials.append({**own, "reused": True})
            continue
        directory = branch_directory(lr)
        trial_path = os.path.join(run_path, directory, TRIAL_FILE)
        if os.path.exists(trial_path):
            with open(trial_path, encoding="utf-8") as handle:
                trials.append(json.load(handle))
            continue
        trials.append(_train_trial(config, data, run_path, lr, budget_epochs, directory, report))
        atomic_write(trial_path, json.dumps(trials[-1], indent=2) + "\n")
        shutil.rmtree(os.path.join(run_path, directory, checkpoint.DIRECTORY), ignore_errors=True)
    best = max(trials, key=lambda trial: trial[OBJECTIVE])  # max keeps the first of equals
    result = {
        "swa_lr": best["swa_lr"],
        "objective": f"the SWA average's {OBJECTIVE} at the budget's end (epoch {config.epochs}), "
                     "BatchNorm recomputed, on the validation split",
        "run": run_path,
        "seed": config.seed,
        "swa_start_epoch": config.swa_start_epoch,
        "epochs": config.epochs,
        "trials": trials,
        "provenance": provenance.collect(),
    }
    atomic_write(os.path.join(run_path, DIRECTORY, BEST_FILE), json.dumps(run_directory.rounded(result), indent=2) + "\n")
    return result


def _train_trial(config, data, run_path, lr, budget_epochs, directory, report):
    branch_config = dataclasses.replace(config, swa_lr=lr, swa_epochs=budget_epochs)
    with trainer.run_context(config):  # as app.train's own branch runs, its interruptions included
        summary = swa_branch.train_branch(branch_config, data, run_path, report, directory=directory,
                                          weights_dir=os.path.join(run_path, directory, run_directory.WEIGHTS_DIR))
    return {"swa_lr": lr, OBJECTIVE: summary[OBJECTIVE], "val_loss": summary.get("val_loss"),
            "models_averaged": summary["models_averaged"], "directory": directory}
