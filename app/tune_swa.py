"""`python -m app.tune_swa RUN`: the SWA learning rate tuned on the validation split.

The analysis plan's comparator (docs/analysis-plan.md): SWA's constant
learning rate chosen over a grid (default 0.01, 0.02, 0.05, the SWA paper's
range, App. A) by the SWA average's validation accuracy at the budget's end,
BatchNorm recomputed. RUN is a finished validation run (80/20 split) trained
with `--swa --keep-checkpoint`: every branch starts from the baseline it kept at
its SWA start epoch, so the baseline is trained once. Each branch is
`RUN/swa-tuning/lr-<lr>/` (a rerun resumes it); the run's own branch is reused
for its learning rate. The choice goes to `RUN/swa-tuning/best_swa_lr.json`,
which `python -m app.train --swa --swa-lr-from RUN` reads (training/swa_tuning.py).

Example:

    python -m app.train --dataset cifar10 --epochs 40 --swa --swa-lr 0.05 --keep-checkpoint --out runs/val
    python -m app.tune_swa runs/val --swa-lr 0.01 0.02 0.05
"""

import os

if __name__ == "__main__":
    from app import signals

    signals.install()

from app.errors import (DefaultsHelpFormatter, OneLineArgumentParser, UsageError,  # noqa: E402
                        add_run_reading_arguments, entry_point)

GRID = (0.01, 0.02, 0.05)


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.tune_swa",
        description="Choose the SWA learning rate on the validation split: one SWA branch per rate "
        "from a --swa --keep-checkpoint run's branch point.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="a finished validation run trained with --swa --keep-checkpoint")
    parser.add_argument("--swa-lr", type=float, nargs="+", default=list(GRID), help="the grid of SWA learning rates")
    add_run_reading_arguments(parser, flags=("--data-dir",))
    return parser


def prepare(argv):
    """(config, summary, lrs): every one-line refusal before TensorFlow is imported."""
    from evaluation import predictions
    from training import run_dir as run_directory
    from training import swa_tuning

    args = build_parser().parse_args(argv)
    if not all(lr > 0 for lr in args.swa_lr):
        raise UsageError(f"--swa-lr must be > 0; got {' '.join(f'{lr:g}' for lr in args.swa_lr)}")
    lrs = list(dict.fromkeys(args.swa_lr))  # each rate once, in the given order
    if not os.path.exists(os.path.join(args.run_dir, run_directory.SUMMARY_FILE)):
        raise UsageError(f"{args.run_dir} is not a finished run (no summary.json); give a finished validation run")
    summary = run_directory.read_summary(args.run_dir)
    config = run_directory.load_config(args.run_dir, args.data_dir)
    if summary.get("evaluation_split") != "validation":
        raise UsageError(f"{args.run_dir} was evaluated on the {summary.get('evaluation_split')} split; the SWA "
                         "learning rate is tuned on a validation run (without --full-train)")
    if not config.swa or not os.path.exists(swa_tuning.branch_point(args.run_dir)):
        raise UsageError(f"{args.run_dir} kept no SWA branch point ({swa_tuning.branch_point(args.run_dir)}); "
                         "train it with --swa --keep-checkpoint")
    predictions.check_data(config)
    return args.run_dir, config, summary, lrs


@entry_point
def main(argv):
    """Runs the command line; returns best_swa_lr.json's content (exit status 2 on bad input)."""
    run_dir, config, summary, lrs = prepare(argv)
    print(f"starting: importing TensorFlow, then reading {config.dataset} ...", flush=True)
    from app import train_report
    from data import loading
    from training import run_dir as run_directory
    from training import swa_tuning

    with run_directory.locked([run_dir]):
        data = loading.load_data(config)
        result = swa_tuning.tune(config, data, run_dir, lrs, summary, train_report.report)
    for trial in result["trials"]:
        reused = " (the run's own branch)" if trial.get("reused") else ""
        print(f"SWA lr {trial['swa_lr']:g}: validation accuracy {100 * trial['val_accuracy']:.2f} % at epoch "
              f"{config.epochs}, {trial['models_averaged']} models averaged{reused}")
    print(f"chosen: SWA lr {result['swa_lr']:g} -> {os.path.join(run_dir, swa_tuning.DIRECTORY, swa_tuning.BEST_FILE)}")
    return result


if __name__ == "__main__":
    main()
