"""`python -m app.tune`: one-shot tuning of the initial learning rate (paper §3.1).

With a cosine schedule, 5 EMAs evaluated every epoch and early stopping on the
20 % validation split, one run per initial learning rate tunes the EMA decay
and the final learning rate on the go (Morales-Brotons et al., §3.1); what is
left to search is the initial learning rate. Each trial is an `app.train` run
(same data and model flags) on the 80/20 split; its objective is the best
validation accuracy of any EMA at any epoch (`--objective ema`), or of the SGD
model (`--objective sgd`). The test set is never looked at.

Example:

    python -m app.tune --dataset cifar10 --model resnet20 \\
        --data-dir ../shared/data/tfds --limit-train 2000 --epochs 2 --lrs 0.05 0.1 0.2

Output, in `--tuner-dir` (default `tuning-runs/<dataset>-<model>`):

- `best.json`: `{"lr", "objective", "objective_name", "decay", "epoch",
  "command", ...}`; `command` is the final run, `python -m app.train <the same
  flags> --lr <best> --full-train`;
- `tuning.json`, `command.txt`: this search's settings and command line;
- KerasTuner's own files: `oracle.json`, `tuner0.json`, and per trial
  `trial_<id>/trial.json` (hyperparameters, status, score) and
  `checkpoint.weights.h5` (the SGD model at the objective's epoch);
- per trial, an `app.train` run directory in the same `trial_<id>/`:
  config.json, command.txt, history.csv, summary.json, tensorboard/,
  weights/ema_<d>_acc.weights.h5 (the EMA that scored the objective);
- TensorBoard HParams: `tensorboard --logdir <tuner dir>`, tab HPARAMS,
  shows lr -> objective.

Resuming: without `--overwrite` a search continues where it stopped
(KerasTuner's `overwrite=False`): finished trials are kept, an interrupted one
reruns from scratch, then the remaining ones run. The settings must be the
same (checked against tuning.json); `--max-trials` may grow.
`--overwrite` deletes the tuner directory first.

Distributed search (KerasTuner's chief/worker mode over gRPC): start the same
command once per process, with the environment variables

    KERASTUNER_ORACLE_IP=10.0.0.1  KERASTUNER_ORACLE_PORT=8000  (all processes)
    KERASTUNER_TUNER_ID=chief       (exactly one process: holds the oracle)
    KERASTUNER_TUNER_ID=tuner0, tuner1, ...   (one per worker: run trials)

e.g. on one machine with two GPUs:

    export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000
    KERASTUNER_TUNER_ID=chief python -m app.tune ARGS &
    KERASTUNER_TUNER_ID=tuner0 CUDA_VISIBLE_DEVICES=0 python -m app.tune ARGS &
    KERASTUNER_TUNER_ID=tuner1 CUDA_VISIBLE_DEVICES=1 python -m app.tune ARGS &

The chief trains nothing: it hands out trials, records their results
(oracle.json, trial_<id>/trial.json in its --tuner-dir), waits until every
worker asked for a trial after the last one (KerasTuner polls every 20 s),
then writes best.json and prints the result. Workers write each trial's run
directory and checkpoint in their own --tuner-dir: give all processes the same
directory on a shared file system to have everything in one place. Only the
chief honours --overwrite. Workers wait for the chief (up to KerasTuner's 60
minutes). A killed chief is resumed like a single process; restart the
workers too.
"""

import dataclasses
import json
import os
import shlex
import sys
import time

from app import cli
from app import config as config_lib
from app.errors import UsageError
from app.history import atomic_write_text

DEFAULT_TUNER_ROOT = "tuning-runs"
BEST_FILE = "best.json"
TUNING_FILE = "tuning.json"
COMMAND_FILE = "command.txt"
ORACLES = ("grid", "random", "bayesian")
OBJECTIVE_NAMES = ("ema", "sgd")
DEFAULT_RANDOM_TRIALS = 10
# tuning.json keys that may change when a search resumes.
_RESUMABLE_CHANGES = ("max_trials", "tuner_dir", "overwrite", "role", "train_argv")
_MACHINE_SPECIFIC = ("out", "data_dir", "cifar_n_dir")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    train: config_lib.TrainConfig
    train_argv: tuple
    lrs: tuple
    weight_decays: tuple = ()
    batch_sizes: tuple = ()
    oracle: str = "grid"
    max_trials: int = 1
    objective: str = "ema"
    tuner_dir: str = ""
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


def main(argv=None):
    """Runs the command line; returns best.json's dict (None on a worker)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, arrays = prepare(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    return tune(config, arrays, argv)


def prepare(argv, environ=None):
    """Everything that can fail because of the user, before any expensive work."""
    import models  # imported here so that `--help` stays quick

    config = parse_config(argv, model_names=models.model_names(), environ=environ)
    check_tuner_dir(config)
    from app import data as data_lib

    data_lib.check_data_available(config.train)
    return config, data_lib.load_arrays(config.train)


def build_parser():
    """app.train's flags plus the tuning flags (for --help)."""
    parser = cli.build_parser(prog="python -m app.tune")
    parser.description = (
        "Tune the initial learning rate of EMA training in one shot (paper §3.1): "
        "one app.train run per trial on the 80/20 split, scored by the best validation "
        "accuracy of any EMA at any epoch; writes best.json with the final-run command."
    )
    _add_tuning_flags(parser.add_argument_group("tuning (app.tune only)"))
    return parser


def _add_tuning_flags(group):
    group.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.2],
        help="initial learning rates: the grid (--oracle grid), or the ends of the "
        "log-uniform range (random, bayesian)",
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
        help=f"at most this many trials (default: the whole grid; {DEFAULT_RANDOM_TRIALS} "
        "for random, bayesian)",
    )
    group.add_argument(
        "--objective",
        default="ema",
        help="ema: best val. accuracy of any EMA at any epoch (the paper's); "
        "sgd: best val. accuracy of the SGD model",
    )
    group.add_argument(
        "--tuner-dir", default=None, help="default: tuning-runs/<dataset>-<model>"
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="delete --tuner-dir first (default: resume the search found there)",
    )


class _OneLineParser(cli.argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def parse_config(argv, model_names=None, environ=None):
    """Parses and validates `argv`; returns a frozen `TuneConfig`."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        raise SystemExit(0)
    parser = _OneLineParser(add_help=False, allow_abbrev=False)
    _add_tuning_flags(parser)
    args, train_argv = parser.parse_known_args(argv)
    for flag, instead in (("--lr", "--lrs"), ("--out", "--tuner-dir")):
        if any(token == flag or token.startswith(flag + "=") for token in train_argv):
            raise UsageError(f"app.tune does not take {flag}; use {instead}")
    for flag, plural in (("--weight-decay", "--weight-decays"), ("--batch-size", "--batch-sizes")):
        given = any(token == flag or token.startswith(flag + "=") for token in train_argv)
        if given and getattr(args, plural[2:].replace("-", "_")) is not None:
            raise UsageError(f"give either {flag} or {plural}, not both")
    train = cli.parse_config(train_argv, model_names=model_names)
    if train.full_train:
        raise UsageError(
            "app.tune scores trials on the validation split: drop --full-train "
            "(best.json's final-run command adds it)"
        )
    _choice(args.oracle, ORACLES, "--oracle")
    _choice(args.objective, OBJECTIVE_NAMES, "--objective")
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
        tuner_dir=args.tuner_dir or os.path.join(DEFAULT_TUNER_ROOT, f"{train.dataset}-{train.model}"),
        overwrite=args.overwrite,
        role=distributed_role(os.environ if environ is None else environ),
    )


def _choice(value, choices, flag):
    if value not in choices:
        raise UsageError(f"unknown {flag} {value!r}; choose from {', '.join(choices)}")


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


def check_tuner_dir(config):
    """Raises UsageError if --tuner-dir cannot hold or resume this search. Writes nothing."""
    path = config.tuner_dir
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--tuner-dir {path} is a file; choose a directory path")
    if config.role == "worker" or not os.path.isdir(path) or not os.listdir(path):
        return  # the chief owns the directory of a distributed search
    tuning_path = os.path.join(path, TUNING_FILE)
    if not os.path.exists(tuning_path):
        raise UsageError(
            f"--tuner-dir {path} exists and holds no search ({TUNING_FILE}); "
            "choose a new or empty --tuner-dir"
        )
    if config.overwrite:
        return
    try:
        with open(tuning_path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        raise UsageError(f"--tuner-dir {path} holds an unreadable {TUNING_FILE}; pass --overwrite")
    ours, theirs = _comparable(config.to_dict()), _comparable(saved)
    differing = sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))
    if differing:
        raise UsageError(
            f"--tuner-dir {path} holds a search with other settings (differs in: "
            f"{', '.join(differing)}); pass --overwrite or choose another --tuner-dir"
        )


def _comparable(values):
    values = json.loads(json.dumps(values))
    flat = {k: v for k, v in values.items() if k not in _RESUMABLE_CHANGES and k != "train"}
    for key, value in values.get("train", {}).items():
        if key not in _MACHINE_SPECIFIC:
            flat[key] = value
    return flat


def tune(config, arrays, argv):
    """Runs (or resumes, or serves) the search; returns best.json's dict."""
    from tuning import hparams_logging
    from tuning.hypermodel import OBJECTIVES, OneShotHyperModel
    from tuning.oracles import build_oracle
    from tuning.tuner import OneShotTuner

    started = time.time()
    hypermodel = OneShotHyperModel(
        config.train, arrays, config.search_space(), config.objective, config.train_argv
    )
    path = os.path.normpath(config.tuner_dir)
    tuner = OneShotTuner(
        oracle=build_oracle(
            config.oracle, OBJECTIVES[config.objective], config.max_trials, config.train.seed
        ),
        hypermodel=hypermodel,
        directory=os.path.dirname(path) or ".",
        project_name=os.path.basename(path),
        overwrite=config.overwrite and config.role != "worker",
    )
    if config.role != "worker":
        atomic_write_text(
            os.path.join(path, TUNING_FILE), json.dumps(config.to_dict(), indent=2) + "\n"
        )
        atomic_write_text(
            os.path.join(path, COMMAND_FILE), "python -m app.tune " + shlex.join(argv) + "\n"
        )
        hparams_logging.write_experiment(
            path, tuner.oracle.get_space(), OBJECTIVES[config.objective]
        )
    tuner.search(verbose="auto")
    if config.role == "worker":
        print(
            f"worker {tuner.tuner_id} finished; ran trials: {' '.join(tuner.trial_ids_run) or 'none'}"
            f"; the chief writes {BEST_FILE}",
            flush=True,
        )
        return None
    return finish(config, tuner.oracle, path, started)


def finish(config, oracle, path, started):
    """Writes best.json and prints the trials, the best learning rate and the final command."""
    from tuning.hypermodel import hyperparameter_flags
    from tuning.tuner import NoCompletedTrial, best_trial_result, trial_counts

    _print_trials(oracle)
    completed, failed, other = trial_counts(oracle)
    try:
        best = best_trial_result(oracle, config.objective)
    except NoCompletedTrial as error:
        print(f"error: no trial completed ({error}); try smaller --lrs", file=sys.stderr)
        raise SystemExit(1)
    final_argv = list(config.train_argv) + hyperparameter_flags(best["hyperparameters"])
    best["command"] = "python -m app.train " + shlex.join(final_argv + ["--full-train"])
    best["trials"] = {"completed": completed, "failed": failed, "other": other}
    best["wall_time_seconds"] = round(time.time() - started, 1)
    atomic_write_text(os.path.join(path, BEST_FILE), json.dumps(best, indent=2) + "\n")
    where = f"epoch {best['epoch']}"
    if best["decay"] is not None:
        where += f", EMA decay {best['decay']:g}"
    print(
        f"\nBest learning rate: {best['lr']:g} ({best['objective_metric']} "
        f"{best['objective']:.4f} at {where}; {completed} trials completed, {failed} failed)\n"
        f"Final run:\n  {best['command']}\n"
        f"Details: {os.path.join(path, BEST_FILE)}",
        flush=True,
    )
    return best


def _print_trials(oracle):
    lines = ["\nTrials (validation split):", f"{'trial':<8}{'hyperparameters':<40}{'status':<11}objective"]
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = ", ".join(f"{k} {v:g}" for k, v in trial.hyperparameters.values.items())
        if trial.score is not None:
            outcome = f"{trial.score:.4f}"
        else:
            outcome = (trial.message or "").strip().splitlines()[-1:] or [""]
            outcome = outcome[0]
        lines.append(f"{trial_id:<8}{values:<40}{trial.status:<11}{outcome}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
