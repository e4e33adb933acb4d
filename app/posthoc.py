"""`python -m app.posthoc RUN --decays ... --epochs ...`: choose the EMA after training (EDM2 post-hoc EMA).

A run trained with `--post-hoc-ema` keeps snapshots of power-function EMAs
(callbacks/power_ema.py). For every requested profile (the paper's EMA of each
`--decays` value with the run's period T and warm-up, and the power function
of each `--sigma-rels` value) stopped at each of `--epochs`, this rebuilds the
average as the least-squares combination of the snapshots taken up to then
(Karras et al. 2024, §3 and App. C; evaluation/posthoc.py), recomputes its
BatchNorm statistics exactly over one pass of the training data (or keeps the
reconstructed averaged statistics, `--bn average`), and evaluates it on the
run's validation split. Every target is checked before anything heavy runs:
a profile the snapshots represent only to a relative residual above
`--max-residual` is refused.

Where the run tracked EMAs itself (MultiEMA), each tracked decay is also
rebuilt at the epoch the run selected for it (best validation accuracy) and
compared with the tracked average: relative weight distance, and validation
accuracy with both models' BatchNorm statistics recomputed over the same pass.

Writes RUN/posthoc/ (or `--out`): posthoc.json (every number), posthoc.md
(the tables), heatmap.png (profile x epoch -> validation accuracy), and
best.weights.h5, the best reconstruction's weights.

Example:

    python -m app.posthoc runs/cifar10-resnet20 --decays 0.99 0.998 0.9995 --epochs 40 80 120
"""

import json
import os
import time

from callbacks.arguments import InvalidArgument
from app.errors import (DefaultsHelpFormatter, OneLineArgumentParser, UsageError, add_run_reading_arguments, choice,
                        entry_point, flag_error, positive_int)

BN_MODES = ("recompute", "average")


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.posthoc",
        description="Rebuild the EMA of any decay at any epoch from a --post-hoc-ema run's snapshots; "
        "evaluate each on the validation split.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run directory trained with --post-hoc-ema")
    parser.add_argument("--decays", type=float, nargs="*", default=None,
                        help="EMA decays to rebuild, as the run's MultiEMA would keep them "
                        "(its --ema-every-steps and warm-up) (default: the run's --ema-decays)")
    parser.add_argument("--sigma-rels", type=float, nargs="*", default=None,
                        help="power-function EMAs (EDM2 sigma_rel) to rebuild as well (default: none)")
    parser.add_argument("--epochs", type=positive_int, nargs="+", required=True,
                        help="1-based epochs at whose end to stop each average")
    parser.add_argument("--max-residual", type=float, default=None,
                        help="refuse a target whose profile the snapshots reproduce only to a larger "
                        "relative least-squares residual (default: 0.05)")
    parser.add_argument("--bn", default="recompute",
                        help="BatchNorm statistics of a rebuilt average: recompute (exactly, over one "
                        "pass of the training data) or average (the rebuilt averaged statistics)")
    add_run_reading_arguments(parser, flags=("--data-dir",))
    parser.add_argument("--out", default=None, help="output directory (default: RUN/posthoc)")
    return parser


@entry_point
def main(argv):
    """Runs the command line; returns the result dict (exit status 2 on bad input)."""
    return run(prepare(argv))


def prepare(argv):
    """Everything that can fail because of the user, before TensorFlow is imported."""
    from callbacks import arguments, power_profiles
    from evaluation import posthoc, runs
    from evaluation import predictions
    from training import run_dir as run_directory

    args = build_parser().parse_args(argv)
    args.sigma_rels = args.sigma_rels or []
    choice(args.bn, BN_MODES, "--bn mode")
    path = args.run_dir.rstrip("/")
    if not os.path.isfile(os.path.join(path, run_directory.CONFIG_FILE)):
        raise UsageError(f"{path} is not a run directory (no config.json); pass one written by python -m app.train")
    with open(os.path.join(path, run_directory.CONFIG_FILE), encoding="utf-8") as handle:
        config_dict = json.load(handle)
    snapshots = posthoc.snapshots_of(os.path.join(path, run_directory.POWER_EMA_DIR))
    if not snapshots:
        raise UsageError(f"{path} has no post-hoc EMA snapshots ({run_directory.POWER_EMA_DIR}/); "
                         "train it with python -m app.train --post-hoc-ema")
    decays = tuple(config_dict.get("ema_decays", ())) if args.decays is None else tuple(args.decays)
    try:
        decays = arguments.checked_decays(decays) if decays else ()
    except InvalidArgument as error:
        raise flag_error("--decays", decays, error) from None
    if args.sigma_rels:
        try:
            power_profiles.checked_sigma_rels(args.sigma_rels, distinct=False)
        except InvalidArgument as error:
            raise flag_error("--sigma-rels", args.sigma_rels, error) from None
    if not decays and not args.sigma_rels:
        raise UsageError("nothing to rebuild: give --decays or --sigma-rels")
    max_residual = posthoc.DEFAULT_MAX_RESIDUAL if args.max_residual is None else args.max_residual
    if not max_residual > 0:
        raise UsageError(f"--max-residual must be > 0; got {max_residual:g}")
    if config_dict.get("full_train"):
        raise UsageError(f"{path} was trained with --full-train: it has no validation split to choose on; "
                         "rebuild from its validation run")
    steps_per_epoch = runs.steps_per_epoch(config_dict)
    epochs = sorted(set(args.epochs))
    targets = posthoc.plan(snapshots, config_dict, steps_per_epoch, decays, tuple(args.sigma_rels), epochs,
                           max_residual)
    tracked = _tracked_targets(path, config_dict, snapshots, steps_per_epoch)
    run = runs.read_run(path)
    config = predictions.run_config(run, args.data_dir)
    predictions.check_data(config)
    return {"path": path, "config": config, "config_dict": config_dict, "targets": targets, "tracked": tracked,
            "epochs": epochs, "bn": args.bn, "max_residual": max_residual, "snapshots": snapshots,
            "out": args.out or os.path.join(path, run_directory.POSTHOC_DIR)}


def _tracked_targets(path, config_dict, snapshots, steps_per_epoch):
    """{decay key: Target} for every decay the run tracked, at the epoch it selected by accuracy."""
    from evaluation import posthoc
    from training import run_dir as run_directory

    summary_path = os.path.join(path, run_directory.SUMMARY_FILE)
    if not os.path.isfile(summary_path):
        return {}
    with open(summary_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    tracked = {}
    for key, entry in summary.get("ema", {}).items():
        epoch = entry.get("best_val_accuracy", {}).get("epoch")
        stem = run_directory.ema_stem(key, "accuracy", bn_recomputed=True)
        if epoch and os.path.isfile(run_directory.weights_path(path, stem)):
            tracked[key] = posthoc.plan_one(snapshots, "ema", float(key), int(epoch), steps_per_epoch, config_dict)
    return tracked


def run(plan):
    from evaluation import posthoc_run

    started = time.time()
    result = posthoc_run.evaluate(plan)
    result["wall_time_seconds"] = round(time.time() - started, 1)
    posthoc_run.write(plan, result)
    return result


if __name__ == "__main__":
    main()
