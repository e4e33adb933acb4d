"""Reading run directories (docs/run-directory.md) back, and grouping seeds by (dataset, model).

A RUN_DIR given to the report is either one run (it holds `config.json`) or a
multi-seed directory holding `seed-<k>/` run directories. Runs from all
arguments are grouped by the `dataset` and `model` of their `config.json`; the
rest of the config must agree within a group (apart from the seed and the
paths), since averaging over seeds of different setups would mislead.

Everything here is cheap and raises `UsageError` (one line naming the fix)
before any figure is drawn.
"""

import dataclasses
import json
import math
import os
import re

from data import datasets
from training.run_dir import (CONFIG_FILE, CONSISTENCY_FILE, EVALUATION_FILE, HISTORY_FILE,  # noqa: F401
                              SUMMARY_FILE, TRANSFER_FILE)
from training.run_dir import field_defaults
from training.run_dir import read_history as _read_history
from callbacks.ema_selection import SUMMARY_KEYS
from callbacks.warmup import warmup_released_after
from utils.errors import UsageError

# The tables' EMA methods (EMA (acc.), EMA (loss)) -> the criterion that selected each.
EMA_METHODS = {"ema_acc": "accuracy", "ema_loss": "loss"}


def summary_key(method):
    """The summary.json key of an EMA method's selection: `best_val_accuracy` or `lowest_val_loss`."""
    return SUMMARY_KEYS[EMA_METHODS[method]]
_SEED_DIRECTORY = re.compile(r"seed-(\d+)$")
# Config keys that may differ between the seeds of one group (provenance: a
# seed may run on another commit or machine; the result is still the same setup).
_PER_RUN_KEYS = ("seed", "seeds", "out", "data_dir", "cifar_n_dir", "provenance", "keep_checkpoint")
# The SWA branch runs after the baseline has finished, from its checkpoint (training/swa_branch.py):
# it changes nothing in the baseline's history or models, so seeds with and without it (app.reproduce's
# seed-0 validation run branches to tune the SWA lr, the other seeds do not) are one setup. Readers of
# the SWA average check that every run of the group has it (report.py, predictions.py).
_BRANCH_KEYS = ("swa", "swa_start_epoch", "swa_lr", "swa_cycle_epochs", "swa_epochs", "swa_include_start")


@dataclasses.dataclass
class Run:
    path: str
    config: dict
    history: list  # one dict per epoch; empty cells are NaN
    summary: dict
    evaluation: dict | None = None
    transfer: dict | None = None


@dataclasses.dataclass
class Group:
    dataset: str
    model: str
    runs: list
    consistency: list  # (directory, consistency.json contents) pairs

    @property
    def config(self):
        return self.runs[0].config

    @property
    def seeds(self):
        return [run.config.get("seed") for run in self.runs]

    @property
    def name(self):
        return f"{self.dataset}-{self.model}"


def _read_json(path, run_path, required):
    if not os.path.exists(path):
        if required:
            raise UsageError(
                f"{run_path} has no {os.path.basename(path)} (training unfinished?); "
                "wait for `python -m app.train` to finish or leave this run out"
            )
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        raise UsageError(f"{path} is not readable JSON; rewrite it or leave this run out")


def read_history(path):
    """history.csv (training/run_dir.py's reader) with empty cells as NaN, for the tables and figures."""
    return _read_history(path, missing=math.nan)


def read_run(path):
    config = _read_json(os.path.join(path, CONFIG_FILE), path, required=True)
    summary = _read_json(os.path.join(path, SUMMARY_FILE), path, required=True)
    if not isinstance(summary.get("sgd"), dict) or "final" not in summary["sgd"]:
        raise UsageError(f"{path}/{SUMMARY_FILE} has no sgd.final entry; pass runs written by `python -m app.train`")
    return Run(
        path=path,
        config=config,
        history=read_history(os.path.join(path, HISTORY_FILE)),
        summary=summary,
        evaluation=_read_json(os.path.join(path, EVALUATION_FILE), path, required=False),
        transfer=_read_json(os.path.join(path, TRANSFER_FILE), path, required=False),
    )


def seed_directories(path):
    """[(seed, its seed-<k>/ directory)] of a directory of seeds, by seed."""
    found = []
    for name in os.listdir(path):
        match = _SEED_DIRECTORY.match(name)
        if match and os.path.isdir(os.path.join(path, name)):
            found.append((int(match.group(1)), os.path.join(path, name)))
    return sorted(found)


def _seed_directories(path):
    return [directory for _, directory in seed_directories(path)]


def expand(path):
    """The run directories behind one RUN_DIR argument, and its consistency.json (or None)."""
    if not os.path.isdir(path):
        raise UsageError(f"run directory {path} does not exist; pass directories written by `python -m app.train`")
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        return [path], None
    seeds = _seed_directories(path)
    if not seeds:
        raise UsageError(
            f"{path} holds neither {CONFIG_FILE} nor seed-<k>/ run directories; "
            "pass directories written by `python -m app.train`"
        )
    return seeds, _read_json(os.path.join(path, CONSISTENCY_FILE), path, required=False)


def _shared(config):
    return {key: value for key, value in config.items() if key not in _PER_RUN_KEYS + _BRANCH_KEYS}


def load_groups(paths):
    """Reads every run behind `paths`; returns `Group`s in the order their first run was given."""
    if not paths:
        raise UsageError("no run directory given; pass at least one RUN_DIR")
    groups = {}
    seen = {}
    for argument in paths:
        directories, consistency = expand(argument)
        keys = set()
        for directory in directories:
            real = os.path.realpath(directory)
            if real in seen:
                raise UsageError(f"run {directory} is given twice (also as {seen[real]}); pass each run once")
            seen[real] = directory
            run = read_run(directory)
            for field in ("dataset", "model"):
                if field not in run.config:
                    raise UsageError(f"{directory}/{CONFIG_FILE} has no {field!r}; pass runs written by `python -m app.train`")
            key = (run.config["dataset"], run.config["model"])
            group = groups.setdefault(key, Group(dataset=key[0], model=key[1], runs=[], consistency=[]))
            _check_compatible(group, run)
            group.runs.append(run)
            keys.add(key)
        if consistency is not None:
            if len(keys) != 1:
                raise UsageError(f"{argument} mixes datasets or models; keep one setup per multi-seed directory")
            groups[keys.pop()].consistency.append((argument, consistency))
    return list(groups.values())


def _check_compatible(group, run):
    if not group.runs:
        return
    first = group.runs[0]
    ours, theirs = _shared(first.config), _shared(run.config)
    # A field newer than one of the runs is its default there (seeds of one setup made before and after it).
    defaults = field_defaults()
    differing = sorted(key for key in set(ours) | set(theirs)
                       if ours.get(key, defaults.get(key)) != theirs.get(key, defaults.get(key)))
    if differing:
        raise UsageError(
            f"runs {first.path} and {run.path} are both {group.dataset}/{group.model} but differ in "
            f"{', '.join(differing)}; report them separately"
        )
    seed = run.config.get("seed")
    for other in group.runs:
        if other.config.get("seed") == seed:
            raise UsageError(
                f"runs {other.path} and {run.path} have the same seed {seed}; pass each seed once"
            )


def train_examples(dataset, limit_train=None, full_train=False, validation_fraction=0.2):
    """The training examples of a run: `limit_train`, else the training split (data/datasets.py's rule)."""
    if limit_train:
        return limit_train
    return datasets.num_train_examples(datasets.DATASETS[dataset].train_examples, full_train, validation_fraction)


def steps_per_epoch(config):
    """Optimizer steps per epoch of a run, from its config.json."""
    train = train_examples(config["dataset"], config.get("limit_train"), config.get("full_train", False),
                           config.get("validation_fraction", 0.2))
    return math.ceil(train / config.get("batch_size", 128))


def warmup_release_epochs(config):
    """{decay key: the 1-based epoch in which the decay warm-up releases it} (None: never)."""
    per_epoch = steps_per_epoch(config)
    released = {}
    for decay in config.get("ema_decays", ()):
        scale = config.get("batch_size", 128) / 128 if config.get("ema_batch_scaling") else 1.0
        step = warmup_released_after(decay, config["ema_every_steps"], config.get("ema_warmup", "steps"), scale)
        epoch = max(1, math.ceil(step / per_epoch))
        released[f"{decay:g}"] = epoch if epoch <= config["epochs"] else None
    return released
