"""`python -m app.report RUN_DIR... --out report/`: the paper's tables and figures from run directories.

Reads runs written by `python -m app.train` (docs/run-directory.md): one run
per RUN_DIR, or a multi-seed directory of `seed-<k>/` runs; groups them by
(dataset, model); writes report.md, table1.csv (and table3/4/5.csv where
consistency.json / transfer.json / evaluation.json exist; shapes in
evaluation/report.py) and Figures 1a/1b/2 as PNG.

Example:

    python -m app.report runs/cifar100-resnet18 runs/cifar100n-resnet34 --out report/
"""

from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, UsageError, entry_point


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.report",
        description="Tables (Markdown + CSV) and figures (PNG) in the paper's shape from training runs.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory, or a directory of seed-<k>/ run directories")
    parser.add_argument("--out", default="report", help="directory for report.md, *.csv and *.png")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="EMA decay reported in Table 1 and Figure 2 (default: the largest the runs kept)")
    parser.add_argument("--smoothing-window", type=int, default=1,
                        help="trailing mean over this many epochs in the figures (the paper's Fig. 1 uses 5)")
    return parser


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.smoothing_window < 1:
        raise UsageError(f"--smoothing-window must be >= 1; got {args.smoothing_window}")
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in (0, 1); got {args.ema_decay:g}")
    return args


@entry_point
def main(argv):
    """Runs the command line; returns `evaluation.report.write_report`'s dict (exit status 2 on bad input)."""
    args = parse_args(argv)
    from evaluation import report, runs

    groups = runs.load_groups(args.run_dirs)
    result = report.write_report(
        groups, args.out, ema_decay=args.ema_decay, smoothing_window=args.smoothing_window
    )
    print(f"wrote {result['markdown']}, {len(result['csv'])} CSV tables, {len(result['figures'])} figures")
    return result


if __name__ == "__main__":
    main()
