"""One training run into its run directory: fit with every average, resume, summary.

`train(config, data, path, argv, report)` is what `python -m app.train` runs
for each seed: it creates (or resumes from its checkpoint) the run directory
(docs/run-directory.md), fits with the callbacks of training/recipe.py, saves
every selected model and the best one whole (best.keras), writes summary.json
and returns it. It prints nothing but the epoch lines (RunLogger): each step
worth telling is reported to `report`, which app/train_report.py words.
"""

import contextlib
import os
import shutil
import time

import keras

from callbacks.divergence import TrainingDiverged
from callbacks.ema_selection import SUMMARY_KEYS
from training import best_model
from training import checkpoint
from training import distribution
from training import final_ema
from training import provenance
from training import recipe
from training import run_dir as run_directory
from training import sgd_selection
from training import stopping
from training import swa_branch
from training.history import EpochTimer, RunLogger
from utils.errors import Interrupted


def train(config, data, path, argv, report=None):
    """Trains one run into `path` (created, or resumed from its checkpoint); returns the summary.

    The run's precision policy holds for the run only: the caller's global
    policy is restored afterwards (a later model in the same process must not
    silently compute in bfloat16).

    `report(event, **details)`, if given, is called with "resumed" (path,
    epoch, step), "checkpoint_fallback" (path, unreadable, epoch, step: a newer
    file could not be read), "started" (config, data, model, path: before the first
    step), "saving_weights" (directory), "swa_branch" (config, start_epoch,
    path), "saving_best" (path) and "finished" (summary, path). Raises
    `TrainingDiverged` (saying which checkpoint is kept) at a non-finite loss
    or weight.
    """
    report = report or _silent
    clock = WallClock()
    with run_context(config):
        summary = _train(config, data, path, argv, report, clock)
    return _conclude(config, data, path, summary, clock, report)


@contextlib.contextmanager
def run_context(config):
    """While a run (or an SWA branch: training/swa_tuning.py) trains: its precision policy (the
    caller's is restored afterwards), determinism and devices; Ctrl-C and SIGTERM's stop become
    `Interrupted` with the line saying what a rerun does."""
    policy = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy(config.precision)
        if config.deterministic:
            recipe.enable_determinism()
        with distribution.data_parallel(config.devices or 1, config.model_parallel):
            yield
    except KeyboardInterrupt:  # a caller without app/signals.py's handling (python -m app.train has it)
        raise Interrupted(stopping.message("interrupted")) from None
    except stopping.Stopped:  # SIGTERM: the checkpoint is saved
        raise Interrupted(stopping.message("terminated"), status=143) from None
    finally:
        stopping.end()
        keras.mixed_precision.set_global_policy(policy)


class WallClock:
    """A run's wall seconds over all its attempts: this one's, plus what its checkpoint recorded."""

    def __init__(self):
        self.started = time.time()
        self.earlier = 0.0

    def seconds(self):
        return self.earlier + time.time() - self.started


def _silent(event, **details):
    """The `report` of a caller that prints nothing."""


def _conclude(config, data, path, summary, clock, report):
    """Writes best.keras and summary.json (the run is then finished)."""
    if summary.get("best"):
        report("saving_best", path=os.path.join(path, run_directory.BEST_MODEL_FILE))
        best_model.save(path, config, data, summary["best"]["name"])
    summary["wall_time_seconds"] = round(clock.seconds(), 1)  # every attempt's (docs/run-directory.md)
    summary = run_directory.rounded(summary)
    run_directory.write_summary(path, summary)
    if not config.keep_checkpoint:
        # The run is finished (summary.json): nothing will resume it.
        checkpoint_dir = os.path.join(path, checkpoint.DIRECTORY)
        for directory in (checkpoint_dir, os.path.join(path, swa_branch.DIRECTORY, checkpoint.DIRECTORY)):
            shutil.rmtree(directory, ignore_errors=True)
    report("finished", summary=summary, path=path)
    return summary


def _train(config, data, path, argv, report, clock):
    keras.utils.set_random_seed(config.seed)
    checkpoint_dir = os.path.join(path, checkpoint.DIRECTORY)
    stopping.start(stopping.checkpoint_files(checkpoint_dir), data.steps_per_epoch)
    resumed = checkpoint.load(checkpoint_dir)  # UsageError if unreadable
    code = provenance.collect()
    if resumed is None:
        run_directory.create(path, config, argv, extra={"evaluation_split": data.evaluation_split, "provenance": code})
        run_directory.record_attempt(path, code)
        # Snapshots of an attempt killed before its first checkpoint: this start replaces them.
        shutil.rmtree(os.path.join(path, run_directory.POWER_EMA_DIR), ignore_errors=True)
    schedule = recipe.build_schedule(config, data.steps_per_epoch)
    model = recipe.build_model(config, data, schedule)
    averaging = recipe.build_callbacks(config, data, model, path)
    stateful = {name: cb for name, cb in averaging.items() if hasattr(cb, "get_state")}
    timer = EpochTimer(config.batch_size)
    logger = RunLogger(path, schedule, config.epochs, rows=resumed.meta["rows"] if resumed else None,
                       timer=timer, stability=config.track_stability)
    # SGD's own early stopping (docs/analysis-plan.md, comparators): the trained weights, after the averages.
    keep_sgd = sgd_selection.keep_sgd_epoch(config, path, resumed.meta["rows"] if resumed else None)
    callbacks = recipe.fit_callbacks(config, averaging, timer, logger, after_averages=[keep_sgd])
    if resumed is not None:
        clock.earlier = resumed.meta.get("wall_seconds", 0.0)  # 0 for a checkpoint written before it was kept
    run_checkpoint = checkpoint.RunCheckpoint(
        checkpoint_dir, stateful, logger, every_steps=config.checkpoint_every_steps, wall_clock=clock.seconds
    )
    callbacks.append(run_checkpoint)
    if config.swa:
        # The SWA branch starts from the baseline as it was at this epoch end.
        callbacks.append(swa_branch.KeepBranchPoint(checkpoint_dir, config.swa_start_epoch - 1))
    callbacks.append(stopping.StopAtStepEnd(run_checkpoint))  # last: after every save of the step
    start_epoch, skip_batches, contents = 0, 0, None
    if resumed is not None:
        meta, contents = resumed.meta, resumed.contents
        checkpoint.restore(model, contents, stateful)
        epoch, step = checkpoint.resume_position(meta, data.steps_per_epoch)
        start_epoch, skip_batches = epoch - 1, step - 1  # both counted from 0: epochs done, batches to skip
        checkpoint.report_fallback(resumed, data.steps_per_epoch, report)
        run_directory.record_attempt(path, code, resumed_at={"epoch": epoch, "step": step})
        report("resumed", path=path, epoch=epoch, step=step)
    report("started", config=config, data=data, model=model, path=path)
    try:
        _fit(config, data, model, callbacks, start_epoch, skip_batches, contents)
    except TrainingDiverged as error:
        kept = (
            f"the last good checkpoint is kept in {checkpoint_dir}"
            if os.path.exists(os.path.join(checkpoint_dir, checkpoint.LAST))
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(f"{error}; no average or checkpoint took it in, {kept}") from None
    summary = finish(config, data, model, averaging, logger.rows, path, report)
    summary["timing"] = timing_totals(logger.rows)
    if config.swa:
        summary["swa"] = swa_branch.train_branch(config, data, path, report)
    best = best_model.choose(summary)
    if best is not None:
        summary["best"] = best
    return summary


def _fit(config, data, model, callbacks, start_epoch, skip_batches, contents):
    """One `fit`, or two when resuming mid-epoch (the rest of that epoch, then the others)."""
    common = dict(
        validation_data=data.validation,
        shuffle=False,  # the stream is shuffled per epoch, reproducibly (data/pipeline.py)
        # RunLogger prints one compact line per epoch (EpochTimer a live status
        # line on a terminal) instead of Keras's line of every metric.
        verbose=0,
    )
    if skip_batches:
        # Keras builds the compiled metrics lazily; one evaluation batch builds
        # them, so that the saved accumulators can be put back (fit resets them first).
        model.evaluate(data.validation.take(1), verbose=0)
        first = [checkpoint.RestoreMetrics(contents)]
        first += [checkpoint.HookFilter(cb, train_end=False) for cb in callbacks]
        model.fit(
            data.train_from(start_epoch, skip_batches),
            steps_per_epoch=data.steps_per_epoch - skip_batches,
            initial_epoch=start_epoch,
            epochs=start_epoch + 1,
            callbacks=first,
            **common,
        )
        callbacks = [checkpoint.HookFilter(cb, train_begin=False) for cb in callbacks]
        start_epoch += 1
    model.fit(
        data.train_from(start_epoch),
        steps_per_epoch=data.steps_per_epoch,
        initial_epoch=start_epoch,
        epochs=config.epochs,
        callbacks=callbacks,
        **common,
    )


def finish(config, data, model, averaging, rows, path, report=_silent):
    """Saves every model and builds summary.json."""
    weights_dir = os.path.join(path, run_directory.WEIGHTS_DIR)
    report("saving_weights", directory=weights_dir)
    os.makedirs(weights_dir, exist_ok=True)  # a resumed run's empty weights/ may be gone (git drops empty folders)
    model.save_weights(run_directory.weights_path(path, run_directory.FINAL_WEIGHTS))
    summary = {
        "evaluation_split": data.evaluation_split,
        "epochs_completed": len(rows),
        "sgd": sgd_summary(rows),
    }
    summary["sgd"]["early_stopped"] = sgd_selection.summary_entry(config, rows, data.evaluation_split)
    if "ema" in averaging:
        averaging["ema"].save_selected(weights_dir)
        summary["ema"] = ema_summary(averaging["ema"])
        selected_on = _selected_on(config, data)
        for entry in summary["ema"].values():
            for criterion in SUMMARY_KEYS.values():
                if entry[criterion] is not None:
                    entry[criterion]["selected_on"] = selected_on
    if "bn" in averaging:
        averaging["bn"].save(weights_dir)
        for key, entry in averaging["bn"].summary().items():
            for criterion, metrics in entry.items():
                summary["ema"][key][criterion]["bn_recomputed"] = metrics
    if "ema" in averaging:
        summary["ema_final"] = final_ema.save(config, path, model, averaging["ema"], data.train_one_pass, rows)
    return summary


def ema_summary(ema):
    """`MultiEMA.summary()` with its epochs counted from 1, as in summary.json and history.csv
    (the callback's are Keras's 0-based `epoch`)."""
    summary = ema.summary()
    for entry in summary.values():
        for key in SUMMARY_KEYS.values():
            if entry[key] is not None:
                entry[key]["epoch"] += 1
    return summary


def _selected_on(config, data):
    """Which split chose the EMA epochs (paper §4.1: never the test set)."""
    if config.ema_select == "final":
        return run_directory.FINAL_EPOCH_SELECTION
    if config.ema_select_epochs is not None:
        return run_directory.selected_on_run(config.stop_epochs_from)
    return data.evaluation_split


def timing_totals(rows):
    """Seconds spent training and evaluating over the run's epochs (history.csv's columns)."""
    timed = [row for row in rows if row.get("epoch_seconds") is not None]
    if not timed:
        return {}
    total = sum(row["epoch_seconds"] for row in timed)
    evaluation = sum(row["evaluation_seconds"] for row in timed)
    return {
        "epochs_timed": len(timed),
        "epoch_seconds": round(total, 1),
        "evaluation_seconds": round(evaluation, 1),
        "train_seconds": round(total - evaluation, 1),
        "mean_train_images_per_second": round(sum(r["train_images_per_second"] for r in timed) / len(timed), 1),
    }


def sgd_summary(rows):
    def at(row):
        return {"epoch": int(row["epoch"]), "val_loss": row["val_loss"], "val_accuracy": row["val_accuracy"]}

    return {
        "final": at(rows[-1]),
        "best_val_accuracy": at(max(rows, key=lambda row: row["val_accuracy"])),
        "lowest_val_loss": at(min(rows, key=lambda row: row["val_loss"])),
    }
