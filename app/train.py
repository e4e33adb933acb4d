"""`python -m app.train`: SGD + several EMAs (and SWA) in one run.

Trains a paper model with PyTorch-style Nesterov SGD and coupled L2 weight
decay (FIDELITY.md), keeps every requested average beside it, evaluates all
of them on the validation split after each epoch, and writes a run directory
(docs/run-directory.md): config.json, command.txt, history.csv, summary.json,
tensorboard/, weights/.

Example:

    python -m app.train --dataset cifar10 --model resnet20 \
        --data-dir ../shared/data/tfds --limit-train 4000 --epochs 4
"""

import os
import sys
import time

from app import cli
from app import quiet
from app import run_dir as run_directory
from app.errors import UsageError


def main(argv=None):
    """Runs the command line; returns the summary dict (exit status 2 on bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        runs = prepare(argv)
        if len(runs) == 1 and not runs[0][0].seeds:
            config, path = runs[0]
            return train(config, load_data(config), path, argv)
        # --seeds: independent runs into OUT/seed-<k>/, one after the other.
        return {config.seed: train(config, load_data(config), path, argv) for config, path in runs}
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    except Interrupted as interrupted:
        print(f"interrupted {interrupted}", file=sys.stderr, flush=True)
        raise SystemExit(130)


class Interrupted(Exception):
    """Ctrl-C during a run; the message says where and how to resume."""


def exit_fast_on_interrupt(main_function):
    """Runs the command line; after Ctrl-C exits at once (status 130).

    Every file a run writes is written atomically, so skipping the
    interpreter's teardown (tf.data's threads can hold it for many seconds)
    loses nothing.
    """
    try:
        main_function()
    except SystemExit as exit:
        if exit.code == 130:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise


def prepare(argv):
    """Everything that can fail because of the user, before any expensive work.

    Returns `[(config, run_path)]`: one run, or one per `--seeds` value.
    """
    import dataclasses

    config = cli.parse_config(argv)
    path = config.out or run_directory.default_path(config)
    if config.seeds:
        runs = [
            (dataclasses.replace(config, seed=seed, out=os.path.join(path, f"seed-{seed}")),
             os.path.join(path, f"seed-{seed}"))
            for seed in config.seeds
        ]
    else:
        runs = [(config, path)]
    for run_config, run_path in runs:
        run_directory.check(run_path, run_config)
    quiet.import_tensorflow()  # the arguments are fine: now the heavy imports
    from app import data as data_lib

    data_lib.check_data_available(config)
    return runs


def load_data(config):
    from app import data as data_lib

    return data_lib.load_data(config)


def build_callbacks(config, data, model):
    """The averaging callbacks, in the order their logs must be produced."""
    from callbacks.batch_norm import BatchNormRecompute, batch_norm_layers
    from callbacks.ema import MultiEMA
    from callbacks.swa import SWA

    averaging = {}
    if config.ema_decays:
        averaging["ema"] = MultiEMA(
            decays=config.ema_decays,
            every_steps=config.ema_every_steps,
            warmup=config.ema_warmup,
            bn_mode=config.ema_bn,
            validation_data=data.validation,
            select_epochs=_select_epochs(config),
            verbose=1 if sys.stdout.isatty() else 0,  # live evaluation progress
        )
        if config.bn_recompute != "none" and batch_norm_layers(model):
            averaging["bn"] = BatchNormRecompute(
                averaging["ema"],
                train_data=data.train_one_pass,
                validation_data=data.validation,
                every_epoch=config.bn_recompute == "epoch",
                at_end=True,
            )
    if config.track_stability:
        from callbacks.stability import PredictionStability

        averaging["stability"] = PredictionStability(
            validation_data=data.validation, ema=averaging.get("ema")
        )
    return averaging


def _select_epochs(config):
    """MultiEMA's fixed selections (0-based epochs) from the config's 1-based ones."""
    if config.ema_select_epochs is None:
        return None
    return {
        float(decay): {criterion: epoch - 1 for criterion, epoch in epochs.items()}
        for decay, epochs in config.ema_select_epochs.items()
    }


def build_schedule(config, steps_per_epoch):
    from app.schedules import TrainingSchedule

    return TrainingSchedule(
        config.schedule,
        config.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
    )


def build_model_for(config, data, schedule):
    import keras

    import models
    from app.optimizer import TorchSGD

    model = models.build_model(config.model, data.num_classes, image_size=data.image_size)
    model.compile(
        optimizer=TorchSGD(
            learning_rate=schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            l2=config.weight_decay,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def train(config, data, path, argv):
    import keras

    from app import checkpoint
    from app.history import EpochTimer, RunLogger
    from callbacks.bootstrap import EMABootstrap
    from callbacks.divergence import DivergenceGuard, TrainingDiverged

    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    if config.deterministic:
        enable_determinism()
    checkpoint_dir = os.path.join(path, checkpoint.DIRECTORY)
    resumed = checkpoint.load(checkpoint_dir)  # UsageError if unreadable
    if resumed is None:
        from app import provenance

        run_directory.create(path, config, argv, extra={
            "evaluation_split": data.evaluation_split, "provenance": provenance.collect()})
    schedule = build_schedule(config, data.steps_per_epoch)
    model = build_model_for(config, data, schedule)
    averaging = build_callbacks(config, data, model)
    stateful = {name: cb for name, cb in averaging.items() if hasattr(cb, "get_state")}
    timer = EpochTimer(config.batch_size)
    logger = RunLogger(path, schedule, config.epochs, rows=resumed[0]["rows"] if resumed else None,
                       timer=timer, stability=config.track_stability)
    # The timer first (it marks where each epoch's evaluation starts), then the
    # guard: a diverged step must never reach an average or a checkpoint.
    callbacks = [timer, DivergenceGuard(weights_every_steps=config.ema_every_steps)]
    callbacks += list(averaging.values()) + [logger]
    if config.bootstrap_every_epochs:
        callbacks.append(
            EMABootstrap(averaging["ema"], every_epochs=config.bootstrap_every_epochs)
        )
    callbacks.append(
        checkpoint.RunCheckpoint(
            checkpoint_dir, stateful, logger, every_steps=config.checkpoint_every_steps
        )
    )
    if config.swa:
        from app import swa_branch

        # The SWA branch starts from the baseline as it was at this epoch end.
        callbacks.append(swa_branch.KeepBranchPoint(checkpoint_dir, config.swa_start_epoch - 1))
    start_epoch, skip_batches, contents = 0, 0, None
    if resumed is not None:
        meta, contents = resumed
        checkpoint.restore(model, contents)
        for name, callback in stateful.items():
            callback.set_state(contents["states"][name])
        start_epoch = meta["epoch"]
        skip_batches = meta["global_step"] - start_epoch * data.steps_per_epoch
        print(f"resuming {path} at epoch {start_epoch + 1}, step {skip_batches + 1}", flush=True)
    _print_header(config, data, model, path)
    started = time.time()
    try:
        _fit(config, data, model, callbacks, start_epoch, skip_batches, contents)
    except KeyboardInterrupt:
        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        raise Interrupted(
            f"at epoch {step // data.steps_per_epoch + 1} step {step % data.steps_per_epoch + 1}; "
            f"run the same command to resume from the last checkpoint in {checkpoint_dir}"
        ) from None
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
        from app import swa_branch

        summary["swa"] = swa_branch.train_branch(config, data, path)
    summary["wall_time_seconds"] = round(time.time() - started, 1)
    summary = run_directory.rounded(summary)
    run_directory.write_summary(path, summary)
    if not config.keep_checkpoint:
        # The run is finished (summary.json): nothing will resume it.
        import shutil

        from app import swa_branch

        for directory in (checkpoint_dir, os.path.join(path, swa_branch.DIRECTORY, checkpoint.DIRECTORY)):
            shutil.rmtree(directory, ignore_errors=True)
    _print_summary(summary, path)
    return summary


def _fit(config, data, model, callbacks, start_epoch, skip_batches, contents):
    """One `fit`, or two when resuming mid-epoch (the rest of that epoch, then the others)."""
    from app import checkpoint

    common = dict(
        validation_data=data.validation,
        shuffle=False,  # the stream is shuffled per epoch, reproducibly (app/data.py)
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


def enable_determinism():
    """Deterministic kernels (TensorFlow backend; JAX on CPU is deterministic already)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def finish(config, data, model, averaging, rows, path):
    """Saves every model and builds summary.json."""
    weights_dir = os.path.join(path, run_directory.WEIGHTS_DIR)
    model.save_weights(os.path.join(weights_dir, "final.weights.h5"))
    summary = {
        "evaluation_split": data.evaluation_split,
        "epochs_completed": len(rows),
        "sgd": sgd_summary(rows),
    }
    if "ema" in averaging:
        averaging["ema"].save_selected(weights_dir)
        summary["ema"] = averaging["ema"].summary()
        selected_on = _selected_on(config, data)
        for entry in summary["ema"].values():
            for criterion in ("best_val_accuracy", "lowest_val_loss"):
                if entry[criterion] is not None:
                    entry[criterion]["selected_on"] = selected_on
    if "bn" in averaging:
        averaging["bn"].save(weights_dir)
        for key, entry in averaging["bn"].summary().items():
            for criterion, metrics in entry.items():
                summary["ema"][key][criterion]["bn_recomputed"] = metrics
    return summary


def _selected_on(config, data):
    """Which split chose the EMA epochs (paper §4.1: never the test set)."""
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
        f"({model.count_params():,} parameters), {config.epochs} epochs x "
        f"{data.steps_per_epoch} steps, lr {config.lr} {config.schedule}{_warmup_text(config)}, "
        f"EMA decays {', '.join(f'{d:g}' for d in config.ema_decays) or 'none'} "
        f"every {config.ema_every_steps} steps -> {path}",
        flush=True,
    )
    warning = warmup_warning(config, data.steps_per_epoch)
    if warning:
        print(warning, flush=True)


def _warmup_text(config):
    if not config.warmup_epochs:
        return ""
    shrunk = config.schedule == "cosine" and config.warmup_epochs == config.epochs - 1 < 5
    return (f" (warm-up {config.warmup_epochs} epoch{'s' if config.warmup_epochs > 1 else ''}"
            f"{': the paper’s 5 shrunk to fit the run' if shrunk else ''})")


def warmup_warning(config, steps_per_epoch):
    """A line naming the decays the warm-up never releases in this run, or None.

    Under min(α, (t+1)/(t+10)) (paper §4.1) every decay above (t+1)/(t+10)
    holds the same average: such decays are the same model all run.
    """
    from callbacks.ema import warmup_released_after

    total = steps_per_epoch * config.epochs
    if config.ema_decays and total < config.ema_every_steps:
        return (f"note: the run has {total} optimizer steps, fewer than --ema-every "
                f"{config.ema_every_steps}: the EMAs are never updated and stay at the initial weights")
    release = {d: warmup_released_after(d, config.ema_every_steps, config.ema_warmup)
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


def _print_summary(summary, path):
    split = summary["evaluation_split"]
    lines = [f"\nSummary ({split} split) — run directory: {path}"]
    lines.append(f"{'model':<24}{'epoch':>6}{'accuracy':>10}{'loss':>9}")

    def line(name, entry):
        lines.append(
            f"{name:<24}{entry.get('epoch', ''):>6}"
            f"{entry['val_accuracy']:>10.4f}{entry['val_loss']:>9.4f}"
        )

    sgd = summary["sgd"]
    line("SGD (final)", sgd["final"])
    line("SGD (best acc.)", sgd["best_val_accuracy"])
    shown = set()
    for key, entry in summary.get("ema", {}).items():
        if key in shown:
            continue
        same = [key] + list(entry.get("identical_to", []))
        shown.update(same)
        name = ", ".join(same)
        if len(same) > 1:
            lines.append(f"EMA {name}: one average (never released by the decay warm-up)")
        for criterion, label in (("best_val_accuracy", "acc."), ("lowest_val_loss", "loss")):
            line(f"EMA {key if len(same) == 1 else name.split(',')[0] + '...'} ({label})", entry[criterion])
            if "bn_recomputed" in entry[criterion]:
                line("  + BN recomputed", entry[criterion]["bn_recomputed"])
    if "swa" in summary:
        line("SWA (BN recomputed)", summary["swa"])
    lines.append(f"wall time {summary.get('wall_time_seconds', 0):.0f} s; "
                 f"details: {os.path.join(path, run_directory.SUMMARY_FILE)}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    exit_fast_on_interrupt(main)
