"""One training run into its run directory: fit with every average, resume, summary.

`train(config, data, path, argv)` is what `python -m app.train` runs for each
seed: it creates (or resumes from its checkpoint) the run directory
(docs/run-directory.md), fits with the callbacks of training/recipe.py, saves
every selected model and the best one whole (best.keras), writes summary.json
and prints the summary table, the best model and the command to run next.
"""

import os
import shlex
import shutil
import sys
import time

import keras
import numpy as np

from callbacks.bootstrap import EMABootstrap
from callbacks.divergence import DivergenceGuard, TrainingDiverged
from callbacks.ema_averages import averaged_variables
from callbacks.ema_selection import CRITERIA, SUMMARY_KEYS, selection_label
from callbacks.power_snapshots import snapshot_bytes
from callbacks.warmup import warmup_released_after
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
from training.config import ema_batch_scale
from training.history import EpochTimer, RunLogger
from utils.errors import Interrupted


def train(config, data, path, argv):
    """Trains one run into `path` (created, or resumed from its checkpoint); returns the summary.

    The run's precision policy holds for the run only: the caller's global
    policy is restored afterwards (a later model in the same process must not
    silently compute in bfloat16).
    """
    policy = keras.mixed_precision.global_policy()
    started = time.time()
    try:
        with distribution.data_parallel(config.devices or 1, config.model_parallel):
            summary = _train(config, data, path, argv)
    except KeyboardInterrupt:  # a caller without app/signals.py's handling (python -m app.train has it)
        raise Interrupted(stopping.message("interrupted")) from None
    except stopping.Stopped:  # SIGTERM: the checkpoint is saved
        raise Interrupted(stopping.message("terminated"), status=143) from None
    finally:
        stopping.end()
        keras.mixed_precision.set_global_policy(policy)
    return _conclude(config, data, path, summary, started)


def _conclude(config, data, path, summary, started):
    """Writes best.keras and summary.json (the run is then finished), prints the summary."""
    if summary.get("best"):
        print(f"writing the best model to {os.path.join(path, run_directory.BEST_MODEL_FILE)} ...", flush=True)
        best_model.save(path, config, data, summary["best"]["name"])
    summary["wall_time_seconds"] = round(time.time() - started, 1)
    summary = run_directory.rounded(summary)
    run_directory.write_summary(path, summary)
    if not config.keep_checkpoint:
        # The run is finished (summary.json): nothing will resume it.
        checkpoint_dir = os.path.join(path, checkpoint.DIRECTORY)
        for directory in (checkpoint_dir, os.path.join(path, swa_branch.DIRECTORY, checkpoint.DIRECTORY)):
            shutil.rmtree(directory, ignore_errors=True)
    _print_summary(summary, path)
    return summary


def _train(config, data, path, argv):
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    if config.deterministic:
        recipe.enable_determinism()
    checkpoint_dir = os.path.join(path, checkpoint.DIRECTORY)
    stopping.start(stopping.checkpoint_files(checkpoint_dir), data.steps_per_epoch)
    resumed = checkpoint.load(checkpoint_dir)  # UsageError if unreadable
    if resumed is None:
        run_directory.create(path, config, argv, extra={
            "evaluation_split": data.evaluation_split, "provenance": provenance.collect()})
        # Snapshots of an attempt killed before its first checkpoint: this start replaces them.
        shutil.rmtree(os.path.join(path, run_directory.POWER_EMA_DIR), ignore_errors=True)
    schedule = recipe.build_schedule(config, data.steps_per_epoch)
    model = recipe.build_model(config, data, schedule)
    averaging = recipe.build_callbacks(config, data, model, path)
    stateful = {name: cb for name, cb in averaging.items() if hasattr(cb, "get_state")}
    timer = EpochTimer(config.batch_size)
    logger = RunLogger(path, schedule, config.epochs, rows=resumed.meta["rows"] if resumed else None,
                       timer=timer, stability=config.track_stability)
    # The timer first (it marks where each epoch's evaluation starts), then the
    # guard: a diverged step must never reach an average or a checkpoint.
    # The weights are checked on every step an average takes them in (the power EMAs: every step).
    guard_every = 1 if config.post_hoc_ema else config.ema_every_steps
    callbacks = [timer, DivergenceGuard(weights_every_steps=guard_every)]
    callbacks += list(averaging.values())  # each swaps its averages back out before the next callback
    # SGD's own early stopping (docs/analysis-plan.md, comparators): the trained weights, after the averages.
    callbacks += [sgd_selection.keep_sgd_epoch(config, path, resumed.meta["rows"] if resumed else None), logger]
    if config.bootstrap_every_epochs:
        callbacks.append(
            EMABootstrap(averaging["ema"], every_epochs=config.bootstrap_every_epochs)
        )
    run_checkpoint = checkpoint.RunCheckpoint(
        checkpoint_dir, stateful, logger, every_steps=config.checkpoint_every_steps
    )
    callbacks.append(run_checkpoint)
    if config.swa:
        # The SWA branch starts from the baseline as it was at this epoch end.
        callbacks.append(swa_branch.KeepBranchPoint(checkpoint_dir, config.swa_start_epoch - 1))
    callbacks.append(stopping.StopAtStepEnd(run_checkpoint))  # last: after every save of the step
    start_epoch, skip_batches, contents = 0, 0, None
    if resumed is not None:
        meta, contents = resumed.meta, resumed.contents
        checkpoint.restore(model, contents)
        for name, callback in stateful.items():
            callback.set_state(contents["states"][name])
        epoch, step = checkpoint.resume_position(meta, data.steps_per_epoch)
        start_epoch, skip_batches = epoch - 1, step - 1  # both counted from 0: epochs done, batches to skip
        checkpoint.report_fallback(resumed, data.steps_per_epoch)
        print(f"resuming {path} at epoch {epoch}, step {step}", flush=True)
    _print_header(config, data, model, path)
    try:
        _fit(config, data, model, callbacks, start_epoch, skip_batches, contents)
    except TrainingDiverged as error:
        kept = (
            f"the last good checkpoint is kept in {checkpoint_dir}"
            if os.path.exists(os.path.join(checkpoint_dir, checkpoint.LAST))
            else "no checkpoint had been written yet"
        )
        print(
            f"error: {error}; no average or checkpoint took it in, {kept}; "
            f"lower --lr (was {config.lr})",
            file=sys.stderr,
        )
        raise SystemExit(1)
    summary = finish(config, data, model, averaging, logger.rows, path)
    summary["timing"] = timing_totals(logger.rows)
    if config.swa:
        summary["swa"] = swa_branch.train_branch(config, data, path)
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


def finish(config, data, model, averaging, rows, path):
    """Saves every model and builds summary.json."""
    weights_dir = os.path.join(path, run_directory.WEIGHTS_DIR)
    print(f"saving the weights of every model to {weights_dir} ...", flush=True)
    model.save_weights(run_directory.weights_path(path, run_directory.FINAL_WEIGHTS))
    summary = {
        "evaluation_split": data.evaluation_split,
        "epochs_completed": len(rows),
        "sgd": sgd_summary(rows),
    }
    summary["sgd"]["early_stopped"] = sgd_selection.summary_entry(config, rows)
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
        return FINAL_EPOCH_SELECTION
    if config.ema_select_epochs is not None:
        return f"validation (run {config.stop_epochs_from})"
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


def _print_header(config, data, model, path):
    print(
        f"{config.dataset} ({data.num_train_examples} train / "
        f"{data.num_validation_examples} {data.evaluation_split}), {config.model} "
        f"({model.count_params():,} parameters), {_count(config.epochs, 'epoch')} x "
        f"{_count(data.steps_per_epoch, 'step')}, lr {config.lr} {config.schedule}{_warmup_text(config)}, "
        f"{_ema_text(config)} -> {path}",
        flush=True,
    )
    warning = warmup_warning(config, data.steps_per_epoch)
    if warning:
        print(warning, flush=True)
    if config.post_hoc_ema:
        print(_post_hoc_text(config, data, model, path), flush=True)


def _count(number, noun):
    """'1 epoch', '30 epochs'."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _ema_text(config):
    if not config.ema_decays:
        return "no EMA"
    decays = ", ".join(f"{d:g}" for d in config.ema_decays)
    every = "every step" if config.ema_every_steps == 1 else f"every {config.ema_every_steps} steps"
    return f"EMA decay{'s' if len(config.ema_decays) > 1 else ''} {decays} {every}"


def _post_hoc_text(config, data, model, path):
    """What --post-hoc-ema keeps and the disk its snapshots will take."""
    every = recipe.snapshot_every_steps(config, data.steps_per_epoch)
    count = -(-data.steps_per_epoch * config.epochs // every)  # the last step is snapshotted too
    values = sum(int(np.prod(v.shape)) for v in averaged_variables(model, "eman"))  # PowerFunctionEMA's
    size = count * snapshot_bytes(values, len(config.post_hoc_sigma_rels), config.post_hoc_snapshot_dtype)
    sigmas = ", ".join(f"{s:g}" for s in config.post_hoc_sigma_rels)
    return (f"post-hoc EMA: power-function EMAs sigma_rel {sigmas}, a {config.post_hoc_snapshot_dtype} "
            f"snapshot every {_count(every, 'step')}: {_count(count, 'snapshot')}, {size / 2**20:,.1f} MiB in "
            f"{os.path.join(path, run_directory.POWER_EMA_DIR)}")


def _warmup_text(config):
    if not config.warmup_epochs:
        return ""
    shrunk = config.schedule == "cosine" and config.warmup_epochs == config.epochs - 1 < 5
    return (f" (warm-up {config.warmup_epochs:g} epoch{'s' if config.warmup_epochs != 1 else ''}"
            f"{': the paper’s 5 shrunk to fit the run' if shrunk else ''})")


def warmup_warning(config, steps_per_epoch):
    """A line naming the decays the warm-up never releases in this run, or None.

    Under min(α, (t+1)/(t+10)) (paper §4.1) every decay above (t+1)/(t+10)
    holds the same average: such decays are the same model all run.
    """
    total = steps_per_epoch * config.epochs
    if config.ema_decays and total < config.ema_every_steps:
        return (f"note: the run has {total} optimizer steps, fewer than --ema-every-steps "
                f"{config.ema_every_steps}: the EMAs are never updated and stay at the initial weights")
    release = {d: warmup_released_after(d, config.ema_every_steps, config.ema_warmup, ema_batch_scale(config))
               for d in config.ema_decays}
    held = [d for d in config.ema_decays if release[d] > total]
    if not held:
        return None
    steps = ", ".join(f"{release[d]:,}" for d in held)
    same = "; they hold one and the same average" if len(held) > 1 else ""
    return (
        f"note: EMA decay{'s' if len(held) > 1 else ''} {', '.join(f'{d:g}' for d in held)} never "
        f"leave{'s' if len(held) == 1 else ''} the decay warm-up min(a, (t+1)/(t+10)) in this run "
        f"(released after step {steps}; the run has {total:,} steps){same}"
    )


# summary.json's `selected_on` of the EMAs of a run with --ema-select final.
FINAL_EPOCH_SELECTION = "none: the final epoch (--ema-select final)"


def _print_summary(summary, path):
    split = summary["evaluation_split"]
    lines = [f"\nSummary ({split} split) — run directory: {path}"]
    lines.append(f"{'model':<28}{'epoch':>6}{'accuracy':>10}{'loss':>9}")

    def line(name, entry):
        lines.append(
            f"{name:<28}{entry.get('epoch', ''):>6}"
            f"{entry['val_accuracy']:>10.4f}{entry['val_loss']:>9.4f}"
        )

    sgd = summary["sgd"]
    if sgd["best_val_accuracy"]["epoch"] == sgd["final"]["epoch"]:
        line("SGD (final = best acc.)", sgd["final"])
    else:
        line("SGD (final)", sgd["final"])
        line("SGD (best acc.)", sgd["best_val_accuracy"])
    shown = set()
    for key, entry in summary.get("ema", {}).items():
        if key in shown:
            continue
        same = [key] + list(entry.get("identical_to", []))
        shown.update(same)
        if len(same) > 1:
            lines.append(f"EMA {', '.join(same)}: one average (never released by the decay warm-up)")
        for criteria in _distinct_criteria(entry):
            label = selection_label([(key, criterion) for criterion in criteria])
            selected = entry[SUMMARY_KEYS[criteria[0]]]
            if selected.get("selected_on") == FINAL_EPOCH_SELECTION:
                label = f"EMA {key} (final)"  # --ema-select final: no criterion chose it
            line(label.replace(f" {key} ", f" {key}... ") if len(same) > 1 else label, selected)
            if "bn_recomputed" in selected:
                line("  + BN recomputed", selected["bn_recomputed"])
    if "swa" in summary:
        line("SWA (BN recomputed)", summary["swa"])
        swa = summary["swa"]
        lines.append(f"  {swa_branch.models_averaged(swa)}; branch epochs "
                     f"{swa['branch']['from_epoch'] + 1}-{swa['branch']['last_epoch']}")
    best = summary.get("best")
    if best:
        lines.append(f"best on the validation split (highest accuracy): "
                     f"{run_directory.describe_weights(best['name'])}, {best['val_accuracy']:.4f}")
        lines.append(f"  weights: {os.path.join(path, best['weights'])}")
        lines.append(f"  whole Keras model (raw pixels in, logits out): {os.path.join(path, best['model'])}")
    else:
        lines.append(f"no best model chosen: the run has no validation split (--full-train), and choosing "
                     f"on the {split} split would flatter the choice")
    lines.append(f"next: python -m app.evaluate {shlex.quote(path)}   (test accuracy, NLL and ECE of every "
                 f"saved model)")
    lines.append(f"wall time {summary.get('wall_time_seconds', 0):.0f} s; "
                 f"details: {os.path.join(path, run_directory.SUMMARY_FILE)}")
    print("\n".join(lines), flush=True)


def _distinct_criteria(entry):
    """`[("accuracy", "loss")]` when both criteria selected one epoch (one model), else one per criterion."""
    selected = [criterion for criterion in CRITERIA if entry.get(SUMMARY_KEYS[criterion]) is not None]
    epochs = {entry[SUMMARY_KEYS[criterion]]["epoch"] for criterion in selected}
    return [tuple(selected)] if len(epochs) == 1 else [(criterion,) for criterion in selected]
