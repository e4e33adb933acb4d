"""What `python -m app.train` prints around a run, and `app.tune` as each trial starts.

training/trainer.py and tuning/hypermodel.py report events (`report(event,
**details)`) and return results; the lines the user reads are worded here:
the run's header, the notes on what it will do, and the summary table.
"""

import math
import os
import shlex
import sys

from callbacks.ema_selection import CRITERIA, SUMMARY_KEYS, selection_label
from callbacks.warmup import warmup_released_after
from training import run_dir as run_directory
from training.config import ema_batch_scale


def report(event, **details):
    """Prints an event of training/trainer.py or tuning/hypermodel.py for the user (`_PRINTERS`)."""
    _PRINTERS[event](**details)


def header(config, data, model, path):
    """The run's first lines: what trains on what, for how long, with which averages, into where."""
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
    from callbacks.ema_averages import averaged_variables  # Keras: imported once training has begun
    from callbacks.power_snapshots import snapshot_bytes
    from training import recipe

    every = recipe.snapshot_every_steps(config, data.steps_per_epoch)
    count = -(-data.steps_per_epoch * config.epochs // every)  # the last step is snapshotted too
    values = sum(math.prod(v.shape) for v in averaged_variables(model, "eman"))  # PowerFunctionEMA's
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


def trial_note(config, steps_per_epoch):
    """What a tuning trial says as it starts: the decays its warm-up never releases, if any."""
    warning = warmup_warning(config, steps_per_epoch)
    if warning:
        print(warning, flush=True)


def summary_table(summary, path):
    """The run's last lines: every model's accuracy and loss, the best model, the command to run next."""
    split = summary["evaluation_split"]
    lines = [f"\nSummary ({split} split) — run directory: {path}"]
    lines.append(f"{'model':<28}{'epoch':>6}{'accuracy':>10} {'loss':>9}")

    def line(name, entry):  # the space keeps a diverged loss (1234.5678) apart from the accuracy
        lines.append(
            f"{name:<28}{entry.get('epoch', ''):>6}"
            f"{entry['val_accuracy']:>10.4f} {entry['val_loss']:>9.4f}"
        )

    sgd = summary["sgd"]
    # The saved SGD models: the last epoch and the early-stopped one (weights/sgd_early), whose epoch the
    # run's validation split chose, or the --stop-epochs-from run's; runs from before it show the best epoch.
    early = sgd.get("early_stopped") or sgd["best_val_accuracy"]
    name = {None: "best acc.", "test": "best test acc."}.get(early.get("selected_on"), "early-stopped")
    if early["epoch"] == sgd["final"]["epoch"]:
        line(f"SGD (final = {name})", sgd["final"])
    else:
        line("SGD (final)", sgd["final"])
        line(f"SGD ({name})", early)
    chosen_by = run_directory.run_of_selection(early.get("selected_on"))  # a --stop-epochs-from run's
    if chosen_by:
        lines.append(f"  epoch chosen on the validation split of {chosen_by}")
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
            if selected.get("selected_on") == run_directory.FINAL_EPOCH_SELECTION:
                label = f"EMA {key} (final)"  # --ema-select final: no criterion chose it
            line(label.replace(f" {key} ", f" {key}... ") if len(same) > 1 else label, selected)
            if "bn_recomputed" in selected:
                line("  + BN recomputed", selected["bn_recomputed"])
    if "swa" in summary:
        line("SWA (BN recomputed)", summary["swa"])
        swa = summary["swa"]
        lines.append(f"  {_models_averaged(swa)}; branch epochs "
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


def _models_averaged(swa):
    """An SWA summary's count in words: `9 models averaged, the starting point included`."""
    count = swa["models_averaged"]
    start = "included" if swa.get("start_included") else "not included"
    return f"{count} model{'s' if count != 1 else ''} averaged, the starting point {start}"


def swa_branch(config, start_epoch, path):
    """The SWA branch's first line: where it starts, its epochs and learning rate."""
    from training.swa_branch import last_epoch  # Keras: imported once training has begun

    end = last_epoch(config)
    past_budget = f", {end - config.epochs} past the budget" if end > config.epochs else ""
    print(
        f"SWA branch from epoch {start_epoch} of the baseline: epochs "
        f"{config.swa_start_epoch}-{end} ({config.swa_epochs}{past_budget}) at SWA lr {config.swa_lr:g}"
        f"{f' (cycles of {config.swa_cycle_epochs} epochs)' if config.swa_cycle_epochs > 1 else ''}"
        f"{', averaging its starting point too' if config.swa_include_start else ''}"
        f" -> {path}",
        flush=True,
    )


def _line(text):
    print(text, flush=True)


def checkpoint_fallback(path, unreadable, epoch, step):
    print(f"warning: unreadable checkpoint in {os.path.dirname(path)} ({'; '.join(unreadable)}); "
          f"resuming from {os.path.basename(path)} instead, at epoch {epoch}, step {step}", file=sys.stderr, flush=True)


_PRINTERS = {
    "resumed": lambda path, epoch, step: _line(f"resuming {path} at epoch {epoch}, step {step}"),
    "checkpoint_fallback": checkpoint_fallback,
    "started": header,
    "trial_started": trial_note,
    "saving_weights": lambda directory: _line(f"saving the weights of every model to {directory} ..."),
    "swa_branch": swa_branch,
    "saving_best": lambda path: _line(f"writing the best model to {path} ..."),
    "finished": summary_table,
}
