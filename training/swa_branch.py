"""SWA as the SWA paper runs it: a branch off the baseline, not a change to it.

Izmailov et al. (2018) §4.1: conventional SGD for about 75 % of the budget,
then, from those weights, a constant (or cyclic) SWA learning rate for the
rest, capturing the weights once per epoch (or at each cycle's end) and
recomputing the BatchNorm statistics of the average at the end (§3.2); the
average starts with those weights, Algorithm 1's `w_SWA <- w_hat`
(`swa_include_start`, on by default). So
that the baseline and its EMAs (Table 1's other columns) stay one unchanged
cosine run, the SWA phase runs after the baseline has finished, from the
baseline's checkpoint at the end of epoch `swa_start_epoch - 1`, in
`RUN/swa/` (its own history.csv, TensorBoard logs and checkpoint; it resumes
like the main run). The final average is saved as `RUN/weights/swa.weights.h5`.
The branch trains `swa_epochs` more epochs, by default `epochs -
swa_start_epoch + 1`: SWA costs that much more compute than the baseline, as
in the SWA paper's "budget" tables, where the SWA run's total epochs equal the
baseline's and the first 75 % of them are the same conventional phase; a
longer branch gives its 1.25 and 1.5 budgets (Table 1, SWA for 0.5 and 0.75
of the budget after 0.75 of it).
"""

import os
import shutil

import keras

from callbacks.divergence import DivergenceGuard
from callbacks.swa import SWA
from callbacks.swa_schedules import swa_schedule
from training import checkpoint
from training import run_dir as run_directory
from training import stopping
from training.history import EpochTimer, RunLogger
from training.recipe import build_model, build_schedule
from utils.files import atomic_write

BRANCH_POINT = "swa-branch.npz"
DIRECTORY = "swa"


class KeepBranchPoint(keras.callbacks.Callback):
    """After `RunCheckpoint` saved epoch `epoch` (1-based count), keeps a copy of it."""

    def __init__(self, checkpoint_dir, epoch):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 != self.epoch:
            return
        last = os.path.join(self.checkpoint_dir, checkpoint.LAST)
        atomic_write(os.path.join(self.checkpoint_dir, BRANCH_POINT),
                     lambda temporary: shutil.copyfile(last, temporary))


class SaveBudgetAverage(keras.callbacks.Callback):
    """For a branch past the budget: at the budget's last epoch, saves the average so far
    (BN recomputed) as `weights/swa_budget.weights.h5` (SWA paper Table 1's "1 budget"
    beside the longer branch's own). Runs after `SWA` captured that epoch."""

    def __init__(self, swa, budget_epochs, path):
        super().__init__()
        self.swa, self.budget_epochs, self.path = swa, budget_epochs, path

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.budget_epochs:
            self.swa.save_average(self.path)


def branch_schedule(config, steps_per_epoch):
    """The SWA phase's learning rate: constant, or cyclic with `swa_cycle_epochs` > 1."""
    return swa_schedule(
        build_schedule(config, steps_per_epoch),
        start_step=(config.swa_start_epoch - 1) * steps_per_epoch,
        swa_lr=config.swa_lr,
        # One-epoch cycles mean a constant SWA rate (SWA paper §4.1).
        cycle_steps=(
            config.swa_cycle_epochs * steps_per_epoch if config.swa_cycle_epochs > 1 else None
        ),
    )


def _budget_entry(config):
    """The average saved at the budget's end: its epoch and model count (its test numbers:
    `app.evaluate`, which evaluates every saved weights file)."""
    captured = config.epochs - config.swa_start_epoch + 1  # epoch captures up to the budget's end
    count = captured // config.swa_cycle_epochs + int(config.swa_include_start)
    return {"epoch": config.epochs, "models_averaged": count, "weights": run_directory.SWA_BUDGET_WEIGHTS}


def last_epoch(config):
    """The branch's last epoch (1-based), past `config.epochs` for a long branch."""
    return config.swa_start_epoch - 1 + config.swa_epochs


def train_branch(config, data, run_path, report, directory=DIRECTORY, weights_dir=None):
    """Runs (or resumes) the SWA branch; returns its summary entry.

    `report("swa_branch", config=, start_epoch=, path=)` as the branch's `fit` starts (trainer.train's `report`).
    The branch lives in `run_path/directory` and writes its average into `weights_dir` (default
    `run_path/weights`); app.tune_swa gives each learning rate of its grid its own of both.
    """
    path = os.path.join(run_path, directory)
    checkpoint_dir = os.path.join(path, checkpoint.DIRECTORY)
    os.makedirs(path, exist_ok=True)
    start_epoch = config.swa_start_epoch - 1
    branch_point = os.path.join(run_path, checkpoint.DIRECTORY, BRANCH_POINT)
    stopping.start(stopping.checkpoint_files(checkpoint_dir, branch_point), data.steps_per_epoch)
    resumed = checkpoint.load(checkpoint_dir)
    if resumed is None:
        meta, contents = checkpoint.read(branch_point)
        assert meta["epoch"] == start_epoch, (meta["epoch"], start_epoch)
    else:
        meta, contents = resumed.meta, resumed.contents
        checkpoint.report_fallback(resumed, data.steps_per_epoch, report)
    keras.utils.set_random_seed(config.seed + 1)
    schedule = branch_schedule(config, data.steps_per_epoch)
    model = build_model(config, data, schedule)
    checkpoint.restore(model, contents)
    swa = SWA(
        start_epoch=start_epoch,
        cycle_epochs=config.swa_cycle_epochs,
        train_data=data.train_one_pass,
        validation_data=data.validation,
        include_start=config.swa_include_start,
        verbose=1,
    )
    if resumed is not None:
        swa.set_state(contents["states"]["swa"])
    timer = EpochTimer(config.batch_size)
    end = last_epoch(config)
    weights_dir = weights_dir or os.path.join(run_path, run_directory.WEIGHTS_DIR)
    budget_average = SaveBudgetAverage(
        swa, config.epochs, os.path.join(weights_dir, run_directory.SWA_BUDGET_WEIGHTS + run_directory.WEIGHTS_SUFFIX))
    logger = RunLogger(path, schedule, end, rows=meta["rows"] if resumed else None, timer=timer)
    run_checkpoint = checkpoint.RunCheckpoint(checkpoint_dir, {"swa": swa}, logger)
    callbacks = [
        timer,
        DivergenceGuard(weights_every_steps=config.ema_every_steps),
        swa,
        *([budget_average] if end > config.epochs else []),
        logger,
        run_checkpoint,
        # The branch resumes at epoch ends only (one fit from meta["epoch"]): SIGTERM stops without a checkpoint.
        stopping.StopAtStepEnd(run_checkpoint, within_epoch=False),
    ]
    report("swa_branch", config=config, start_epoch=start_epoch, path=path)
    model.fit(
        data.train_from(meta["epoch"]),
        steps_per_epoch=data.steps_per_epoch,
        initial_epoch=meta["epoch"],
        epochs=end,
        callbacks=callbacks,
        validation_data=data.validation,
        shuffle=False,
        verbose=0,
    )
    os.makedirs(weights_dir, exist_ok=True)
    swa.save(weights_dir)
    summary = swa.summary()
    summary["start_epoch"] += 1  # summary.json counts epochs from 1, as --swa-start-epoch
    if end > config.epochs:
        summary["budget"] = _budget_entry(config)
    summary["branch"] = {
        "from_epoch": start_epoch,
        "epochs": config.swa_epochs,
        "last_epoch": end,
        "swa_lr": config.swa_lr,
        "directory": directory,
        "final_sgd_val_accuracy": logger.rows[-1]["val_accuracy"],
        "final_sgd_val_loss": logger.rows[-1]["val_loss"],
    }
    return summary
