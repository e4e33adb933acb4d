"""`python -m app.reproduce CLAIM`: one command per claim of the papers.

Runs the chain a claim needs (`app.train`, `app.evaluate`, `app.consistency`,
by calling their `main(argv)`) and writes the claim's table (Markdown + CSV)
and figure (PNG) into `OUT/<claim>/`, beside the paper's numbers
(`evaluation/claims.py`). Claims share runs: the CIFAR protocol's validation
run serves Fig. 1a, Fig. 1b and the final runs' early-stopping epochs (paper
§4.1); a step whose outputs exist is skipped, and an interrupted train run
resumes from its checkpoint, so rerunning the same command continues.

Budgets (`--budget`; their runs as data: evaluation/budgets.py): `paper` is
the paper's configuration, for a GPU; `small` a miniature of it for a 2-core
CPU under the budget-scaling rule (evaluation/scaling.py); `tiny` the test
suite's.

Example:

    python -m app.reproduce --list
    python -m app.reproduce table1 --budget small --data-dir ../shared/data/tfds --dry-run
    python -m app.reproduce all --budget small --data-dir ../shared/data/tfds
"""

import dataclasses
import os
import shlex
import time

from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, UsageError, entry_point
from evaluation import budgets
from evaluation import claims as claim_pages
from evaluation.claims import CLAIM_ORDER, CLAIMS

BUDGETS = ("small", "paper", "tiny")
SGD_BEST_FILE = "best_sgd_final.json"  # app.tune's SGD objective, beside its best.json


@dataclasses.dataclass(frozen=True)
class Step:
    command: str  # train, tune, evaluate, consistency
    argv: tuple
    done_files: tuple  # the step is done when all exist
    train_images: int = 0
    forward_images: int = 0

    def text(self):
        return f"python -m app.{self.command} {shlex.join(self.argv)}"


def plan(budget, out, data_dir, seeds):
    """{claim: [Step]} and the directories the claims' tables read."""
    setups = budgets.setups(budget, out)
    dirs = {
        "validation": os.path.join(out, "protocol", "validation"),
        "validation_seeds": os.path.join(out, "protocol", "validation-seeds"),
        "final": os.path.join(out, "protocol", "final"),
        "noisy_validation": os.path.join(out, "noisy", "validation"),
        "noisy_final": os.path.join(out, "noisy", "final"),
        "adda_constant": os.path.join(out, "adda", "constant"),
        "adda_cosine": os.path.join(out, "adda", "cosine"),
    }
    protocol, noisy, adda = setups["protocol"], setups["noisy"], setups["adda"]
    # Tests on the whole test set (10,000 CIFAR images), except the test suite's budget.
    limit_test = ["--limit-test", str(protocol.limit_validation)] if budget == "tiny" else []
    steps = {}
    tune = []
    if budget in ("paper", "small"):
        # §3.1 one-shot tuning of the initial learning rate on the validation split.
        tune = [_tune_step(protocol, data_dir, os.path.join(out, "tuning"), budget),
                _tune_step(noisy, data_dir, os.path.join(out, "tuning-noisy"), budget)]
    validation = _train_step(protocol, data_dir, dirs["validation"], ["--bn-recompute", "epoch"])
    other_seeds = [s for s in seeds if s != seeds[0]]
    # Every seed's validation run recomputes BN each epoch: Fig. 1a/1b show 3-seed bands.
    # Multi-seed runs are one step per seed, so that a table's steps test each seed
    # right after it trains (the weights are not committed; a later session cannot test them).
    validation_seeds = _train_step(protocol, data_dir, dirs["validation_seeds"], ["--bn-recompute", "epoch"],
                                   other_seeds)
    final = _train_step(
        protocol, data_dir, dirs["final"],
        ["--full-train", "--stop-epochs-from", dirs["validation"], "--swa", *budgets.swa_flags(budget)], seeds,
    )
    figure_runs = [validation, *validation_seeds]
    # The tables' numbers: every saved model of the final runs on the test split (app.evaluate).
    final_tested = _tested(final, dirs["final"], limit_test)
    # Fig. 1a's primary statistic (docs/analysis-plan.md) tests the final runs' EMA at its validation epoch
    # against the same EMA at the last epoch.
    steps["fig1a"] = tune[:1] + figure_runs + final_tested
    steps["fig1b"] = tune[:1] + figure_runs
    steps["table1"] = tune[:1] + figure_runs + final_tested
    steps["swa"] = tune[:1] + [validation, *final_tested]
    steps["table3"] = tune[:1] + [validation, *final, _consistency_step(dirs["final"], seeds, limit_test)]
    # Table 5 fits the temperature on the 20 % hold-out: the 80/20 runs, tested.
    steps["table5"] = tune[:1] + [validation, _evaluate_step(dirs["validation"], [], limit_test),
                                  *_tested(validation_seeds, dirs["validation_seeds"], limit_test)]
    noisy_validation = _train_step(noisy, data_dir, dirs["noisy_validation"], ["--label-noise", "worse"])
    noisy_final = _train_step(
        noisy, data_dir, dirs["noisy_final"],
        ["--label-noise", "worse", "--full-train", "--stop-epochs-from", dirs["noisy_validation"]], seeds,
    )
    steps["fig2"] = tune[1:] + [noisy_validation, *noisy_final]
    steps["table2"] = tune[1:] + [noisy_validation, *_tested(noisy_final, dirs["noisy_final"], limit_test)]
    # The plan's SGD columns (docs/analysis-plan.md, Comparators) come from runs at the lr SGD's last
    # epoch picks in the same tuning trials; where it differs from the EMA's, the runs those columns
    # read are repeated at it, into <dir>-sgd/ (dirs["<key>_sgd"]); where it agrees, one run serves both.
    for tuning, keys, claims in (("tuning", ("validation", "validation_seeds", "final"),
                                  ("table1", "swa", "table3", "table5")),
                                 ("tuning-noisy", ("noisy_validation", "noisy_final"), ("fig2", "table2"))):
        if sgd_lr_differs(os.path.join(out, tuning)):
            twins = {dirs[key]: dirs[key] + "-sgd" for key in keys}
            dirs.update({f"{key}_sgd": twins[dirs[key]] for key in keys})
            for claim in claims:
                found = [_sgd_twin(step, twins, os.path.join(out, tuning)) for step in steps[claim]
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
    return {claim: _unique(claim_steps) for claim, claim_steps in steps.items()}, dirs, setups


def sgd_lr_differs(tuning_dir):
    """True when the search's SGD objective (best_sgd_final.json) picked another lr than its EMA one (best.json)."""
    import json

    try:
        lrs = []
        for name in ("best.json", SGD_BEST_FILE):
            with open(os.path.join(tuning_dir, name), encoding="utf-8") as handle:
                lrs.append(float(json.load(handle)["lr"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not tuned yet (main plans again after tuning) or no SGD file: one run serves both
    return lrs[0] != lrs[1]


def _sgd_twin(step, twins, tuning_dir):
    """`step` at the SGD-tuned lr, its run directories mapped to their -sgd twins; None when it reads none."""
    def twin_of(value):
        return next((twin + value[len(path):] for path, twin in twins.items()
                     if value == path or value.startswith(path + os.sep)), None)

    if not any(twin_of(value) for value in step.argv):
        return None

    def mapped(value):
        return twin_of(value) or (os.path.join(tuning_dir, SGD_BEST_FILE) if value == tuning_dir else value)

    return dataclasses.replace(step, argv=tuple(map(mapped, step.argv)),
                               done_files=tuple(map(mapped, step.done_files)))


def _unique(steps):
    return list(dict.fromkeys(steps))


def _num_train(setup, full_train=True):
    from evaluation.runs import train_examples

    return train_examples(setup.dataset, setup.limit_train, full_train=full_train)


def _tested(train_steps, path, limit_test):
    """Each seed's training step followed by its test evaluation."""
    return [step for train, seed in zip(train_steps, _step_seeds(train_steps))
            for step in (train, _evaluate_step(os.path.join(path, f"seed-{seed}"), [], limit_test))]


def _step_seeds(train_steps):
    return [int(step.argv[step.argv.index("--seeds") + 1]) for step in train_steps]


def _train_step(setup, data_dir, path, extra, seeds=None):
    """One step, or with `seeds` a list of one `--seeds k` step per seed (into path/seed-k/)."""
    if seeds:
        return [_train_step(setup, data_dir, path, [*extra, "--seeds", str(seed)]) for seed in seeds]
    argv = setup.argv(data_dir) + list(extra) + ["--out", path]
    if "--seeds" in extra:
        done = (os.path.join(path, f"seed-{extra[extra.index('--seeds') + 1]}", "summary.json"),)
    else:
        done = (os.path.join(path, "summary.json"),)
    train = _num_train(setup)
    validation = setup.limit_validation or 10000
    models = 1 + len(setup.decays)
    forward = models * validation * setup.epochs
    if "epoch" in extra:  # BN recompute of every EMA each epoch, and its evaluation
        forward += len(setup.decays) * (train + validation) * setup.epochs
    else:  # once at the end, for two selections per decay
        forward += 2 * len(setup.decays) * (train + validation)
    images = train * setup.epochs
    if "--swa" in extra:  # the branch: the last 25 % again, evaluated, and BN once
        branch = (int(extra[extra.index("--swa-epochs") + 1]) if "--swa-epochs" in extra
                  else setup.epochs - int(0.75 * setup.epochs))
        images += train * branch
        forward += validation * branch + train + validation
    return Step("train", tuple(argv), done, images, forward)


def _tune_step(setup, data_dir, path, budget):
    # The paper's log grid is wide enough for Fig. 2's peak near lr 0.4 at mid-training;
    # the small budget (batch 32) tries its short end, 0.4 included.
    grid = ["0.05", "0.1", "0.2", "0.4"] if budget == "small" else ["0.025", "0.05", "0.1", "0.2", "0.4", "0.8", "1.6"]
    argv = [a for a in setup.argv(data_dir) if a not in setup.lr] + ["--lrs", *grid, "--out", path]
    trial = _num_train(setup, full_train=False) * setup.epochs  # trials train on the 80/20 split
    return Step("tune", tuple(argv), (os.path.join(path, "best.json"),), int(trial * len(grid)), 0)


def _evaluate_step(path, seeds, limit_test):
    done = tuple(os.path.join(path, f"seed-{s}", "evaluation.json") for s in seeds) or (
        os.path.join(path, "evaluation.json"),)
    return Step("evaluate", tuple([path, *limit_test]), done, 0, 0)


def _consistency_step(path, seeds, limit_test):
    return Step("consistency", tuple([path, *limit_test]), (os.path.join(path, "consistency.json"),), 0, 0)


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.reproduce",
        description="Reproduce one claim of the papers (or all): train, evaluate, tabulate, plot.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("claim", nargs="?", help=f"one of: {', '.join(CLAIM_ORDER)}, or all")
    parser.add_argument("--list", action="store_true", help="list the claims with the paper's numbers")
    parser.add_argument("--budget", default="small", help="small (2-core CPU), paper (GPU), tiny (tests)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--out", default="reproductions", help="runs go to OUT/<budget>/, tables to OUT/<budget>/<claim>/")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (default: TFDS's own)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and the images to process; run nothing")
    return parser


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.list:
        return args
    if args.claim is None:
        raise UsageError("name a claim (see --list) or all")
    if args.claim != "all" and args.claim not in CLAIMS:
        raise UsageError(f"unknown claim {args.claim!r}; choose from {', '.join(CLAIM_ORDER)}, all")
    if args.budget not in BUDGETS:
        raise UsageError(f"unknown budget {args.budget!r}; choose from {', '.join(BUDGETS)}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds has duplicates: {' '.join(map(str, args.seeds))}")
    return args


def _check_data(claims, setups, steps, data_dir):
    """A budget whose datasets are not prepared here: one line, before any work."""
    from app import cli
    from data import availability

    needed = {}
    for claim in claims:
        for step in steps[claim]:
            if step.command == "train":
                needed[step.argv] = claim
    for argv, claim in needed.items():
        config = cli.parse_config(_without_later_inputs(argv))
        try:
            if availability.check(config) is None:  # undecided without TFDS: ask it
                from data import loading

                loading.check_data_available(config)
        except UsageError as error:
            raise UsageError(f"{claim} needs {config.dataset}, which is not available: {error}")


def _without_later_inputs(argv):
    """`argv` without the flags naming what earlier steps write (a validation run, a tuner's best.json)."""
    kept, skip = [], False
    for value in argv:
        if skip:
            skip = False
        elif value in ("--stop-epochs-from", "--lr-from"):
            skip = True
        else:
            kept.append(value)
    return kept


@entry_point
def main(argv):
    """Runs the command line; returns {claim: outputs} (exit status 2 on bad input)."""
    args = parse_args(argv)
    if args.list:
        for claim in CLAIM_ORDER:
            print(f"{claim:<18}{CLAIMS[claim]}")
        return {}
    out = os.path.join(args.out, args.budget)
    steps, dirs, setups = plan(args.budget, out, args.data_dir, args.seeds)
    claims = CLAIM_ORDER if args.claim == "all" else (args.claim,)
    if args.dry_run:
        return _dry_run(claims, steps, setups, out)
    _check_data(claims, setups, steps, args.data_dir)
    from utils import quiet

    quiet.import_tensorflow()
    # The searches first: what they pick decides which runs the SGD columns need (plan again).
    tunes = _unique([step for claim in claims for step in steps[claim] if step.command == "tune"])
    for step in tunes:
        if not all(os.path.exists(f) for f in step.done_files):
            print(f"[tuning] running: {step.text()}", flush=True)
            _run_step(step)
    if tunes:
        steps, dirs, setups = plan(args.budget, out, args.data_dir, args.seeds)
    results = {}
    for claim in claims:
        results[claim] = _run_claim(claim, steps[claim], dirs, setups, out, args)
    print(f"index: {claim_pages.write_index(out, CLAIM_ORDER)}", flush=True)
    return results


# ResNet-20 on 2 idle cores of this project's CPU machines (TensorFlow backend, docs/performance.md):
# training and forward (evaluation, BN recompute) images per second, for the dry run's time estimate.
CPU_IMAGES_PER_SECOND = {"train": 420, "forward": 950}


def _dry_run(claims, steps, setups, out):
    seen, done, train_images, forward_images = set(), set(), 0, 0
    for claim in claims:
        print(f"# {claim}: {CLAIMS[claim]}")
        for step in steps[claim]:
            mark = "(done) " if all(os.path.exists(f) for f in step.done_files) else ""
            print(f"{mark}{step.text()}")
            if mark:
                done.add(step)
            elif step not in seen:
                seen.add(step)
                train_images += step.train_images
                forward_images += step.forward_images
    print(f"# estimated images to process: {train_images:,} trained, {forward_images:,} forward "
          "(evaluation, BN recompute)")
    if {setup.model for setup in setups.values()} == {"resnet20"}:
        seconds = train_images / CPU_IMAGES_PER_SECOND["train"] + forward_images / CPU_IMAGES_PER_SECOND["forward"]
        print(f"# about {seconds / 3600:.1f} h on 2 idle CPU cores (ResNet-20 at {CPU_IMAGES_PER_SECOND['train']} "
              f"training and {CPU_IMAGES_PER_SECOND['forward']} forward images/s; longer on loaded cores)")
    if done:
        print(f"# {len(done)} of {len(done | seen)} steps are done already in {out} (their outputs are there: e.g. "
              "committed results); to reproduce them from scratch, give --out a new directory")
    if any(step.command == "tune" and not all(os.path.exists(f) for f in step.done_files)
           for claim in claims for step in steps[claim]):
        print(f"# after tuning: where {SGD_BEST_FILE} picks another lr than best.json, the runs the SGD "
              "columns read are repeated at it (into <dir>-sgd/; not counted above)")
    return {"train_images": train_images, "forward_images": forward_images}


def _run_claim(claim, steps, dirs, setups, out, args):
    started = time.time()
    for step in steps:
        if all(os.path.exists(f) for f in step.done_files):
            print(f"[{claim}] done already: {step.text()}", flush=True)
            continue
        print(f"[{claim}] running: {step.text()}", flush=True)
        _run_step(step)
    claim_dir = os.path.join(out, claim)
    os.makedirs(claim_dir, exist_ok=True)
    commands = [step.text() for step in steps]
    reproduce_command = "python -m app.reproduce " + shlex.join(
        [claim, "--budget", args.budget, "--seeds", *map(str, args.seeds), "--out", args.out]
        + (["--data-dir", args.data_dir] if args.data_dir else [])
    )
    result = claim_pages.write_claim(
        claim, CLAIMS[claim], claim_dir, dirs, commands=commands, command=reproduce_command,
        wall_seconds=time.time() - started, run_seconds=_train_seconds(steps),
        images=sum(step.train_images for step in steps), forward=sum(step.forward_images for step in steps),
    )
    print(f"[{claim}] wrote {', '.join(result['files'])}", flush=True)
    print(result["headline"], flush=True)
    return result


def _train_seconds(steps):
    """Wall time of the claim's training runs, from their summary.json files."""
    import json

    total = 0.0
    for step in steps:
        if step.command != "train":
            continue
        for path in step.done_files:
            with open(path, encoding="utf-8") as handle:
                total += json.load(handle).get("wall_time_seconds", 0.0)
    return total


def _run_step(step):
    from app import consistency, evaluate, train, tune

    entry = {"train": train.main, "evaluate": evaluate.main, "consistency": consistency.main,
             "tune": tune.main}[step.command]
    try:
        entry(list(step.argv))
    except SystemExit as exit:
        if exit.code == 130:  # Ctrl-C: app.train said where to resume
            raise
        if exit.code not in (0, None):
            raise UsageError(f"step failed with exit status {exit.code}: {step.text()}")


if __name__ == "__main__":
    from app.train import exit_fast_on_interrupt

    exit_fast_on_interrupt(main)
