"""The steps of `python -m app.reproduce`: each claim's chain of commands, as data.

`plan(budget, out, data_dir, seeds)` turns a budget's runs (evaluation/budgets.py)
into `{claim: [Step]}` (train, tune, tune_swa, evaluate, consistency) and the
directories the claims' pages read. A step is done when all its `done_files`
exist (a consistency step: and its file holds every named seed, `Step.done`);
its image counts feed the dry run's time estimate. Nothing here runs.
"""

import dataclasses
import json
import os
import shlex

from app.cli import EMA_ONLY_FLAGS
from evaluation import budgets, scaling
from training import run_dir as run_directory

SGD_BEST_FILE = "best_sgd_final.json"  # app.tune's SGD objective, beside its best.json
VALIDATION_SEED = 0  # the validation run's (app.train's default --seed): it picks every final run's epochs


@dataclasses.dataclass(frozen=True)
class Step:
    command: str  # train, tune, tune_swa, evaluate, consistency
    argv: tuple
    done_files: tuple  # the step is done when all exist (and, with `seeds`, hold them)
    train_images: int = 0
    forward_images: int = 0
    seeds: tuple = ()  # a consistency step: done only when its file holds these seeds' pairs
    tested: tuple = (0, 0)  # a train step: (weights files, hold-out images) its test evaluation reads

    def text(self):
        return f"python -m app.{self.command} {shlex.join(self.argv)}"

    def done(self):
        if not all(os.path.exists(path) for path in self.done_files):
            return False
        if self.seeds:  # seeds added later (docs/analysis-plan.md, power): the pairs are measured again
            with open(self.done_files[0], encoding="utf-8") as handle:
                return set(self.seeds) <= set(json.load(handle).get("seeds", ()))
        return True


def plan(budget, out, data_dir, seeds, untuned_sgd_lr_differs=False):
    """{claim: [Step]}, the directories the claims' tables read (and `seeds`, the seeds they read), setups.

    `untuned_sgd_lr_differs`: plan a search that has not ended as if its SGD lr differed from its EMA lr
    (the dry run's estimate of the -sgd runs); a search that ended is planned as it came out.
    """
    setups = budgets.setups(budget, out)
    dirs = {
        "validation": os.path.join(out, "protocol", "validation"),
        "validation_seeds": os.path.join(out, "protocol", "validation-seeds"),
        "final": os.path.join(out, "protocol", "final"),
        "noisy_validation": os.path.join(out, "noisy", "validation"),
        "noisy_final": os.path.join(out, "noisy", "final"),
        "adda_constant": os.path.join(out, "adda", "constant"),
        "adda_cosine": os.path.join(out, "adda", "cosine"),
        "tuning": os.path.join(out, "tuning"),  # the searches: the pages name both tuned lrs
        "tuning_noisy": os.path.join(out, "tuning-noisy"),
        "seeds": tuple(seeds),  # the pages read these seeds' runs only (a directory may hold more)
    }
    protocol, noisy, adda = setups["protocol"], setups["noisy"], setups["adda"]
    # Tests on the whole test set (10,000 CIFAR images), except the test suite's budget.
    limit_test = ["--limit-test", str(protocol.limit_validation)] if budget == "tiny" else []
    steps = {}
    tune = []
    if budget in ("paper", "small"):
        # §3.1 one-shot tuning of the initial learning rate on the validation split.
        tune = [_tune_step(protocol, data_dir, dirs["tuning"], budget),
                _tune_step(noisy, data_dir, dirs["tuning_noisy"], budget)]
    # Seed 0's validation run also branches SWA at the grid's largest rate and keeps its branch point:
    # app.tune_swa tries the grid's other rates from it (docs/analysis-plan.md, Comparators).
    swa_grid = [f"{lr:g}" for lr in budgets.SWA_LR_GRID[budget]]
    validation = _train_step(protocol, data_dir, dirs["validation"],
                             ["--bn-recompute", "epoch", "--swa", "--swa-lr", swa_grid[-1], "--keep-checkpoint"])
    tune_swa = _tune_swa_step(protocol, data_dir, dirs["validation"], swa_grid)
    other_seeds = [s for s in seeds if s != VALIDATION_SEED]  # seed 0's is `validation`, whatever --seeds says
    # Every seed's validation run recomputes BN each epoch: Fig. 1a/1b show 3-seed bands.
    # Multi-seed runs are one step per seed, so that a table's steps test each seed
    # right after it trains (the weights are not committed; a later session cannot test them).
    validation_seeds = _train_step(protocol, data_dir, dirs["validation_seeds"], ["--bn-recompute", "epoch"],
                                   other_seeds)
    # The final runs keep only the EMA their statistics read, the largest decay (docs/analysis-plan.md:
    # Table 1, 3 and Fig. 1a's primary; Fig. 2 and Table 2), the same average as among all five: each
    # decay's average is its own. No statistic reads the protocol's final per-epoch EMA curve (the tables
    # test the saved weights with app.evaluate): it is evaluated only at the epochs the validation run chose.
    final = _train_step(
        _largest_decay_only(protocol), data_dir, dirs["final"],
        ["--full-train", "--stop-epochs-from", dirs["validation"], "--ema-evaluate", "selected",
         "--swa", "--swa-lr-from", dirs["validation"]],
        seeds,
    )
    figure_runs = [validation, *validation_seeds]
    # The tables' numbers: every saved model of the final runs on the test split (app.evaluate).
    final_tested = _tested(final, dirs["final"], limit_test)
    # Fig. 1a's primary statistic (docs/analysis-plan.md) tests the final runs' EMA at its validation epoch
    # against the same EMA at the last epoch.
    steps["fig1a"] = tune[:1] + figure_runs + [tune_swa] + final_tested
    steps["fig1b"] = tune[:1] + figure_runs
    steps["table1"] = tune[:1] + figure_runs + [tune_swa] + final_tested
    steps["swa"] = tune[:1] + [validation, tune_swa, *final_tested]
    steps["table3"] = tune[:1] + [validation, tune_swa, *final, _consistency_step(dirs["final"], seeds, limit_test)]
    # Table 5 fits the temperature on the 20 % hold-out: the 80/20 runs, tested.
    steps["table5"] = tune[:1] + [validation, _evaluate_step(dirs["validation"], [], limit_test, validation.tested),
                                  *_tested(validation_seeds, dirs["validation_seeds"], limit_test)]
    # Fig. 2 and Table 2 read the largest decay alone: its validation run only chooses that EMA's epochs.
    noisy_validation = _train_step(_largest_decay_only(noisy), data_dir, dirs["noisy_validation"],
                                   ["--label-noise", "worse"])
    noisy_final = _train_step(
        _largest_decay_only(noisy), data_dir, dirs["noisy_final"],
        ["--label-noise", "worse", "--full-train", "--stop-epochs-from", dirs["noisy_validation"]], seeds,
    )
    # Both read the tested runs (Fig. 2's secondary statistic: the early-stopped EMA and SGD on test).
    steps["fig2"] = tune[1:] + [noisy_validation, *_tested(noisy_final, dirs["noisy_final"], limit_test)]
    steps["table2"] = list(steps["fig2"])
    # The plan's SGD columns (docs/analysis-plan.md, Comparators) come from runs at the lr SGD's last
    # epoch picks in the same tuning trials; where it differs from the EMA's, the runs those columns
    # read are repeated at it, into <dir>-sgd/ (dirs["<key>_sgd"]); where it agrees, one run serves both.
    for tuning, keys, claims in (("tuning", ("validation", "validation_seeds", "final"),
                                  ("fig1a", "fig1b", "table1", "swa", "table3", "table5")),
                                 ("tuning-noisy", ("noisy_validation", "noisy_final"), ("fig2", "table2"))):
        # An unfinished search (no best.json: sgd_lr_differs is False) may be planned as differing; a budget
        # without searches (tiny: one fixed lr for both) never is.
        unfinished = tune and not os.path.exists(os.path.join(out, tuning, "best.json"))
        if sgd_lr_differs(os.path.join(out, tuning)) or (untuned_sgd_lr_differs and unfinished):
            twins = {dirs[key]: dirs[key] + "-sgd" for key in keys}
            dirs.update({f"{key}_sgd": twins[dirs[key]] for key in keys})
            setup = setups["protocol" if tuning == "tuning" else "noisy"]
            for claim in claims:
                tested = {}  # twin run directory -> its train step's `tested`, for its evaluate step
                found = [_sgd_twin(step, twins, os.path.join(out, tuning), setup, tested) for step in steps[claim]
                         if step.command != "tune"]
                steps[claim] += [twin for twin in found if twin is not None]
    # Adda et al. read the final epoch: each run keeps its last EMAs and tests them; seed by seed,
    # both schedules (their differences are paired over seeds).
    steps["adda-constant-lr"] = [
        step for seed in seeds for schedule in ("constant", "cosine")
        for step in _tested(_train_step(adda, data_dir, dirs[f"adda_{schedule}"],
                                        ["--schedule", schedule, "--ema-select", "final"], [seed]),
                            dirs[f"adda_{schedule}"], limit_test)
    ]
    return {claim: unique(claim_steps) for claim, claim_steps in steps.items()}, dirs, setups


def sgd_lr_differs(tuning_dir):
    """True when the search's SGD objective (best_sgd_final.json) picked another lr than its EMA one (best.json)."""
    try:
        lrs = []
        for name in ("best.json", SGD_BEST_FILE):
            with open(os.path.join(tuning_dir, name), encoding="utf-8") as handle:
                lrs.append(float(json.load(handle)["lr"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not tuned yet (main plans again after tuning) or no SGD file: one run serves both
    return lrs[0] != lrs[1]


def _sgd_twin(step, twins, tuning_dir, setup, tested):
    """`step` at the SGD-tuned lr, its run directories mapped to their -sgd twins; None when it reads none.

    No statistic reads a twin's EMAs (only its SGD, early-stopped SGD and SWA), so a twin trains none:
    its train steps give `--ema-decays` no values and drop the flags that act on EMAs. `tested`
    collects each twin run directory's (weights files, hold-out images) for its evaluate step."""
    def twin_of(value):
        return next((twin + value[len(path):] for path, twin in twins.items()
                     if value == path or value.startswith(path + os.sep)), None)

    if not any(twin_of(value) for value in step.argv):
        return None

    def mapped(value):
        return twin_of(value) or (os.path.join(tuning_dir, SGD_BEST_FILE) if value == tuning_dir else value)

    argv = list(map(mapped, step.argv))
    done = tuple(map(mapped, step.done_files))
    if step.command == "train":
        twin = _costed_train(setup, tuple(_without_emas(argv)), done)
        tested[os.path.dirname(twin.done_files[0])] = twin.tested  # done: <run directory>/summary.json
        return twin
    if step.command == "evaluate":
        return dataclasses.replace(_evaluate_step(argv[0], [], argv[1:], tested[argv[0]]), done_files=done)
    return dataclasses.replace(step, argv=tuple(argv), done_files=done)


def _largest_decay_only(setup):
    return dataclasses.replace(setup, decays=(max(setup.decays),))


def _without_emas(argv):
    """A train step's `argv` training no EMA: `--ema-decays` with no values, no flag acting on EMAs."""
    # `--ema-decays` given no values: no EMA (without the flag app.train keeps the paper's decays).
    kept, dropping = ([] if "--ema-decays" in argv else ["--ema-decays"]), False
    for value in argv:
        if value.startswith("--"):
            dropping = value == "--ema-decays" or value in EMA_ONLY_FLAGS
            if value == "--ema-decays":
                kept.append(value)
        if not dropping:
            kept.append(value)
    return kept


def unique(steps):
    return list(dict.fromkeys(steps))


def _num_train(setup, full_train=True):
    from evaluation.runs import train_examples

    return train_examples(setup.dataset, setup.limit_train, full_train=full_train,
                          validation_fraction=_validation_fraction(setup))


def _num_evaluated(setup, full_train=False):
    """Images a run evaluates each model on per epoch: `--limit-validation`, else the hold-out (an 80/20
    run) or the test split (a --full-train run: 10,000 CIFAR images)."""
    from data.datasets import DATASETS, num_train_examples

    if setup.limit_validation or full_train:
        return setup.limit_validation or 10000
    total = DATASETS[setup.dataset].train_examples
    return total - num_train_examples(total, False, _validation_fraction(setup))


def _validation_fraction(setup):
    return float(flag_value(setup.extra, "--validation-fraction") or 0.2)  # app.train's default: 80/20


def _tested(train_steps, path, limit_test):
    """Each seed's training step followed by its test evaluation."""
    return [step for train, seed in zip(train_steps, _step_seeds(train_steps))
            for step in (train, _evaluate_step(os.path.join(path, f"seed-{seed}"), [], limit_test, train.tested))]


def _step_seeds(train_steps):
    return [int(flag_value(step.argv, "--seeds")) for step in train_steps]


def _train_step(setup, data_dir, path, extra, seeds=None):
    """One step, or with `seeds` a list of one `--seeds k` step per seed (into path/seed-k/)."""
    if seeds is not None:  # `--seeds 0`: no validation-seeds runs (an empty list, not one unseeded run)
        return [_train_step(setup, data_dir, path, [*extra, "--seeds", str(seed)]) for seed in seeds]
    argv = setup.argv(data_dir) + list(extra) + ["--out", path]
    if "--seeds" in extra:
        done = (os.path.join(path, f"seed-{flag_value(extra, '--seeds')}", "summary.json"),)
    else:
        done = (os.path.join(path, "summary.json"),)
    return _costed_train(setup, tuple(argv), done)


def _costed_train(setup, argv, done):
    """The train step of `argv` (a run of `setup`), with the images it trains and evaluates."""
    decays = len(_flag_values(argv, "--ema-decays"))
    full_train = "--full-train" in argv
    train, validation = _num_train(setup, full_train), _num_evaluated(setup, full_train)
    if flag_value(argv, "--ema-evaluate") == "selected":  # each EMA at most at its two selected epochs
        forward = validation * (setup.epochs + 2 * decays)
    else:
        forward = (1 + decays) * validation * setup.epochs
    at_end = 2 * decays * (train + validation)  # BN recomputed once, for two selections per decay
    every_epoch = decays * (train + validation) * setup.epochs  # and evaluated, each epoch
    each_epoch = flag_value(argv, "--bn-recompute") == "epoch"
    forward += every_epoch if each_epoch else at_end
    images = train * setup.epochs
    if "--swa" in argv:  # the branch: the last 25 % again, evaluated, and BN once
        branch = int(flag_value(argv, "--swa-epochs") or swa_branch_epochs(setup.epochs))
        images += train * branch
        forward += validation * branch + train + validation
    # app.evaluate tests each distinct weights file on the test split (and on the hold-out, for the
    # temperature): final, sgd_early, every decay's acc/loss, BN as tracked and recomputed, the largest
    # decay's last epoch both ways (training/final_ema.py), SWA. Files that coincide are tested once:
    # with --ema-select final, acc = loss = the last epoch, whose tracked file is the largest decay's too.
    files = 2 + ("--swa" in argv)
    if decays:
        recomputed = flag_value(argv, "--bn-recompute") != "none"
        criteria = 1 if flag_value(argv, "--ema-select") == "final" else 2
        files += criteria * decays * (2 if recomputed else 1) + (criteria == 2) + recomputed
    holdout = 0 if full_train else validation
    return Step("train", argv, done, images, forward, tested=(files, holdout))


def flag_value(argv, name):
    """The value after `name` in `argv` (None without it)."""
    return argv[argv.index(name) + 1] if name in argv else None


def _flag_values(argv, name):
    """The values after `name` in `argv`, up to the next flag (() without it)."""
    if name not in argv:
        return ()
    rest = argv[argv.index(name) + 1:]
    return tuple(next((rest[:i] for i, value in enumerate(rest) if value.startswith("--")), rest))


def _tune_step(setup, data_dir, path, budget):
    # The paper's log grid is wide enough for Fig. 2's peak near lr 0.4 at mid-training;
    # the small budget (batch 32) tries its short end, 0.4 included.
    grid = ["0.05", "0.1", "0.2", "0.4"] if budget == "small" else ["0.025", "0.05", "0.1", "0.2", "0.4", "0.8", "1.6"]
    argv = [a for a in setup.argv(data_dir) if a not in setup.lr] + ["--lrs", *grid, "--out", path]
    trial = _num_train(setup, full_train=False) * setup.epochs  # trials train on the 80/20 split
    # Each epoch of a trial evaluates SGD and every EMA on the validation split.
    evaluated = (1 + len(setup.decays)) * _num_evaluated(setup) * setup.epochs
    return Step("tune", tuple(argv), (os.path.join(path, "best.json"),), int(trial * len(grid)),
                evaluated * len(grid))


def _tune_swa_step(setup, data_dir, run, grid):
    """app.tune_swa on the validation run: one branch per rate of `grid` but the run's own (the last)."""
    argv = [run, "--swa-lr", *grid] + (["--data-dir", data_dir] if data_dir else [])
    branch = swa_branch_epochs(setup.epochs)
    train, validation = _num_train(setup, full_train=False), _num_evaluated(setup)
    branches = len(grid) - 1
    done = os.path.join(run, run_directory.SWA_TUNING_DIR, run_directory.SWA_TUNING_FILE)
    return Step("tune_swa", tuple(argv), (done,), train * branch * branches,
                (validation * branch + train + validation) * branches)


def swa_branch_epochs(epochs):
    """The SWA branch's epochs when it runs to the budget's end (app/cli_swa.py's default start)."""
    return epochs - scaling.swa_start_epoch(epochs) + 1


def _evaluate_step(path, seeds, limit_test, tested):
    """app.evaluate of the run(s) in `path`; `tested`: the train step's (weights files, hold-out images),
    for at most that many forward images over the test split (10,000 CIFAR images or `limit_test`)."""
    done = tuple(os.path.join(path, f"seed-{s}", "evaluation.json") for s in seeds) or (
        os.path.join(path, "evaluation.json"),)
    files, holdout = tested
    test = int(limit_test[1]) if limit_test else 10000
    return Step("evaluate", tuple([path, *limit_test]), done, 0, files * (test + holdout))


def _consistency_step(path, seeds, limit_test):
    return Step("consistency", tuple([path, *limit_test]), (os.path.join(path, "consistency.json"),), 0, 0,
                tuple(seeds))
