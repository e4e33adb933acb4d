"""Command line of `python -m app.tune`: app.train's flags plus the tuning flags.

Flags -> a validated, frozen `TuneConfig` (which holds the `TrainConfig` of
every trial); `check_out` decides whether --out can hold or resume the
search (`--tuner-dir`, its name before, still works). Every user error is a
one-line `UsageError`, raised before any data is read or any file is written.
"""

import argparse
import dataclasses
import json
import os

from app import cli
from app.errors import OneLineArgumentParser, choice
from training import config as config_lib
from utils.errors import UsageError

DEFAULT_TUNER_ROOT = "tuning-runs"
TUNING_FILE = "tuning.json"
ORACLES = ("grid", "random", "bayesian")
OBJECTIVE_NAMES = ("ema", "sgd")
DEFAULT_RANDOM_TRIALS = 10
# tuning.json keys that may change when a search resumes.
# ("tuner_dir": what `out` was called in the tuning.json of older searches.)
_RESUMABLE_CHANGES = ("max_trials", "out", "tuner_dir", "overwrite", "role", "train_argv")
_MACHINE_SPECIFIC = ("out", "data_dir", "cifar_n_dir")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """One search: the `TrainConfig` of its trials, the space, the oracle.

    `train_argv` is the app.train part of the command line, repeated in each
    trial's command.txt and in best.json's final-run command.
    """

    train: config_lib.TrainConfig
    train_argv: tuple
    lrs: tuple
    weight_decays: tuple = ()
    batch_sizes: tuple = ()
    oracle: str = "grid"
    max_trials: int = 1
    objective: str = "ema"
    out: str = ""
    overwrite: bool = False
    role: str = "single"  # or "chief", "worker" (KerasTuner's distributed mode)

    def search_space(self):
        from tuning.hypermodel import SearchSpace

        return SearchSpace(
            lrs=self.lrs,
            weight_decays=self.weight_decays,
            batch_sizes=self.batch_sizes,
            sampling="grid" if self.oracle == "grid" else "log-uniform",
        )

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["train"] = self.train.to_dict()
        return values


def build_parser():
    """app.train's flags plus the tuning flags (for --help)."""
    parser = cli.build_parser(prog="python -m app.tune", out_help=_OUT_HELP)
    parser.description = (
        "Tune the initial learning rate of EMA training in one shot (paper §3.1): "
        "one app.train run per trial on the 80/20 split, scored by the best validation "
        "accuracy of any EMA at any epoch; writes best.json with the final-run command. "
        "Takes app.train's flags, except --lr (searched: --lrs), "
        "--seeds (one seed per trial: --seed) and --full-train (added to the final-run "
        "command)."
    )
    _add_tuning_flags(parser.add_argument_group("tuning (app.tune only)"), with_out=False)
    # The flags parse_config refuses stay out of the usage line and the list (argparse has no
    # public way to drop an argument; hiding its help is the documented SUPPRESS).
    for action in parser._actions:
        if set(action.option_strings) & REFUSED_FLAGS:
            action.help = argparse.SUPPRESS
    return parser


REFUSED_FLAGS = {"--lr", "--seeds", "--full-train"}  # searched (--lrs), one seed per trial, added to the final run


_OUT_HELP = f"where the search lives (default: {DEFAULT_TUNER_ROOT}/<dataset>-<model>); --tuner-dir also works"


def _add_tuning_flags(group, with_out=True):
    group.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=[0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6],
        help="initial learning rates: the grid (--oracle grid), or the ends of the "
        "log-uniform range (random, bayesian). The default log grid reaches the paper's "
        "Fig. 2 optimum (lr ~0.4 at mid-cosine, i.e. ~0.8 initially)",
    )
    group.add_argument(
        "--weight-decays",
        type=float,
        nargs="+",
        default=None,
        help="also search the weight decay over these values (grid) or this range",
    )
    group.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="also search the batch size"
    )
    group.add_argument("--oracle", default="grid", help=f"one of: {', '.join(ORACLES)}")
    group.add_argument(
        "--max-trials",
        type=int,
        default=None,
        help=f"at most this many trials; None: the whole grid, or {DEFAULT_RANDOM_TRIALS} "
        "for random, bayesian",
    )
    group.add_argument(
        "--objective",
        default="ema",
        help="ema: best val. accuracy of any EMA at any epoch (the paper's); "
        "sgd: best val. accuracy of the SGD model",
    )
    if with_out:  # (the help parser has app.train's --out, with _OUT_HELP)
        group.add_argument("--out", "--tuner-dir", dest="out", default=None, help=_OUT_HELP)
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="delete --out first, instead of resuming the search found there",
    )


def parse_config(argv, model_names=config_lib.MODEL_NAMES, environ=None):
    """Parses and validates `argv`; returns a frozen `TuneConfig`."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        raise SystemExit(0)
    parser = OneLineArgumentParser(add_help=False, allow_abbrev=False)
    _add_tuning_flags(parser)
    args, train_argv = parser.parse_known_args(argv)
    for flag, instead in (("--lr", "--lrs"),):
        if any(token == flag or token.startswith(flag + "=") for token in train_argv):
            raise UsageError(f"app.tune does not take {flag}; use {instead}")
    for flag, plural in (("--weight-decay", "--weight-decays"), ("--batch-size", "--batch-sizes")):
        given = any(token == flag or token.startswith(flag + "=") for token in train_argv)
        if given and getattr(args, plural[2:].replace("-", "_")) is not None:
            raise UsageError(f"give either {flag} or {plural}, not both")
    train = cli.parse_config(train_argv, model_names=model_names)
    if train.seeds:
        raise UsageError("a trial trains one seed: give --seed, not --seeds")
    if train.full_train:
        raise UsageError(
            "app.tune scores trials on the validation split: drop --full-train "
            "(best.json's final-run command adds it)"
        )
    if train.ema_evaluate == "selected":
        raise UsageError("app.tune scores each trial on its EMAs' validation curve: drop --ema-evaluate selected")
    choice(args.oracle, ORACLES, "--oracle")
    choice(args.objective, OBJECTIVE_NAMES, "--objective")
    if args.objective == "ema" and not train.ema_decays:
        raise UsageError("--objective ema needs --ema-decays; give some or use --objective sgd")
    lrs = _positive_values(args.lrs, "--lrs")
    weight_decays = _positive_values(args.weight_decays or (), "--weight-decays", zero_ok=True)
    batch_sizes = _positive_values(args.batch_sizes or (), "--batch-sizes")
    if args.oracle != "grid":
        for flag, values in (("--lrs", lrs), ("--weight-decays", weight_decays)):
            if values and (len(values) < 2 or min(values) <= 0):
                raise UsageError(
                    f"--oracle {args.oracle} samples {flag} log-uniformly: give its "
                    f"ends, two values > 0 (got {' '.join(map(str, values))})"
                )
    grid_size = len(lrs) * max(len(weight_decays), 1) * max(len(batch_sizes), 1)
    max_trials = args.max_trials
    if max_trials is None:
        max_trials = grid_size if args.oracle == "grid" else DEFAULT_RANDOM_TRIALS
    if max_trials < 1:
        raise UsageError(f"--max-trials must be >= 1; got {max_trials}")
    if args.oracle == "grid":
        max_trials = min(max_trials, grid_size)
    return TuneConfig(
        train=train,
        train_argv=tuple(train_argv),
        lrs=lrs,
        weight_decays=weight_decays,
        batch_sizes=batch_sizes,
        oracle=args.oracle,
        max_trials=max_trials,
        objective=args.objective,
        out=args.out or os.path.join(DEFAULT_TUNER_ROOT, f"{train.dataset}-{train.model}"),
        overwrite=args.overwrite,
        role=distributed_role(os.environ if environ is None else environ),
    )


def _positive_values(values, flag, zero_ok=False):
    bad = [v for v in values if not (v >= 0 if zero_ok else v > 0)]
    if bad:
        raise UsageError(
            f"{flag} must be {'>= 0' if zero_ok else '> 0'}; got {' '.join(map(str, bad))}"
        )
    if len(set(values)) != len(values):
        raise UsageError(f"{flag} has duplicates: {' '.join(map(str, values))}")
    return tuple(values)


def distributed_role(environ):
    """"single", or KerasTuner's "chief"/"worker" from its environment variables."""
    if not environ.get("KERASTUNER_ORACLE_IP"):
        return "single"
    missing = [
        name
        for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
        if not environ.get(name)
    ]
    if missing:
        raise UsageError(
            f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not: set both "
            "(KERASTUNER_TUNER_ID=chief for the chief, tuner0, tuner1, ... for workers)"
        )
    # KerasTuner's rule (keras_tuner/src/distribute/utils.py).
    return "chief" if "chief" in environ["KERASTUNER_TUNER_ID"] else "worker"


def check_out(config):
    """Raises UsageError if --out cannot hold or resume this search. Writes nothing."""
    path = config.out
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path} is a file; choose a directory path")
    if config.role == "worker" or not os.path.isdir(path) or not os.listdir(path):
        return  # the chief owns the directory of a distributed search
    tuning_path = os.path.join(path, TUNING_FILE)
    if not os.path.exists(tuning_path):
        if os.path.exists(os.path.join(path, "oracle.json")):
            return  # KerasTuner's files of a search killed before it wrote tuning.json
        raise UsageError(
            f"--out {path} exists and holds no search ({TUNING_FILE}); "
            "choose a new or empty --out"
        )
    if config.overwrite:
        return
    try:
        with open(tuning_path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        raise UsageError(f"--out {path} holds an unreadable {TUNING_FILE}; pass --overwrite")
    ours, theirs = _comparable(config.to_dict()), _comparable(saved)
    # A training setting newer than the saved search is its default there.
    defaults = _comparable({"train": config_lib.TrainConfig().to_dict()})
    theirs = {**{k: v for k, v in defaults.items() if k in ours}, **theirs}
    differing = sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))
    if differing:
        raise UsageError(
            f"--out {path} holds a search with other settings (differs in: "
            f"{', '.join(differing)}); pass --overwrite or choose another --out"
        )


def _comparable(values):
    values = json.loads(json.dumps(values))
    flat = {k: v for k, v in values.items() if k not in _RESUMABLE_CHANGES and k != "train"}
    for key, value in values.get("train", {}).items():
        if key not in _MACHINE_SPECIFIC:
            flat[key] = value
    return flat
