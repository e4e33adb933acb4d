"""`python -m app.reproduce CLAIM`: one command per claim of the papers.

Runs the chain a claim needs (`app.tune`, `app.train`, `app.tune_swa`,
`app.evaluate`, `app.consistency`, by calling their `main(argv)`; the chains
as data: app/reproduce_plan.py) and writes the claim's table (Markdown + CSV)
and figure (PNG) into `OUT/<budget>/<claim>/`, beside the paper's numbers
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

import glob
import json
import os
import shlex
import time

if __name__ == "__main__":
    from app import signals

    signals.install()  # first: Ctrl-C and SIGTERM are one line, as in app.train (app/signals.py)

from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, UsageError, entry_point  # noqa: E402
from app.reproduce_plan import SGD_BEST_FILE, flag_value, plan, swa_branch_epochs  # noqa: E402
from evaluation import claims as claim_pages  # noqa: E402
from evaluation.claim_list import CLAIM_ORDER, CLAIMS  # noqa: E402

BUDGETS = ("small", "paper", "tiny")


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
    if args.claim in ("table3", "all") and len(args.seeds) < 2:  # refused now, not after hours of runs
        includes = "all includes table3, which" if args.claim == "all" else "table3"
        raise UsageError(f"{includes} compares seeds pairwise (churn, JS divergence): give --seeds at least two "
                         "(e.g. --seeds 0 1 2)")
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
    """`argv` without the flags naming what earlier steps write (a validation run, a tuner's best.json), and
    `--ema-evaluate`, whose `selected` needs the epochs `--stop-epochs-from` reads."""
    kept, skip = [], False
    for value in argv:
        if skip:
            skip = False
        elif value in ("--stop-epochs-from", "--lr-from", "--swa-lr-from", "--ema-evaluate"):
            skip = True
        else:
            kept.append(value)
    return kept


@entry_point
def main(argv):
    """Runs the command line; returns {claim: outputs} (exit status 2 on bad input).

    A step that fails (exit status other than 0) ends a single claim's command there; under `all` the
    claims that do not need that step still run (as `make -k`), and the command ends with status 2.
    """
    args = parse_args(argv)
    if args.list:
        for claim in CLAIM_ORDER:
            print(f"{claim:<18}{CLAIMS[claim]}")
        return {}
    out = os.path.join(args.out, args.budget)
    steps, dirs, setups = plan(args.budget, out, args.data_dir, args.seeds)
    claims = CLAIM_ORDER if args.claim == "all" else (args.claim,)
    if args.dry_run:
        twins = plan(args.budget, out, args.data_dir, args.seeds, untuned_sgd_lr_differs=True)[0]
        return _dry_run(claims, steps, setups, out, twins)
    _check_data(claims, setups, steps, args.data_dir)
    from utils import quiet

    quiet.import_tensorflow()
    from training import stopping

    with stopping.between_runs("between steps; run the same command to continue (finished steps are kept)"):
        results, failures = {}, []
        for claim in claims:
            failed_texts = {failure.step.text() for failure in failures}
            failed = [step for step in steps[claim] if step.text() in failed_texts]
            if failed:  # it would run the failed step again: make -k, not make
                print(f"[{claim}] skipped: it needs the step that failed above: {failed[0].text()}", flush=True)
                continue
            try:
                started = time.time()  # the claim's share of this command: its search too
                # A claim's search before its runs (the noisy one waits for fig2): what it picks decides
                # which runs the SGD columns need, so the steps are planned again after it.
                tunes = [step for step in steps[claim] if step.command == "tune" and not step.done()]
                for step in tunes:
                    print(f"[tuning] running: {step.text()}", flush=True)
                    _run_step(step)
                if tunes:
                    steps, dirs, setups = plan(args.budget, out, args.data_dir, args.seeds)
                results[claim] = _run_claim(claim, steps[claim], dirs, setups, out, args, started)
            except StepFailed as failure:
                if len(claims) == 1:
                    raise
                failures.append(failure)
                print(f"[{claim}] {failure}; going on with the claims that do not need it", flush=True)
        print(f"index: {claim_pages.write_index(out, CLAIM_ORDER)}", flush=True)
    if failures:
        left = [claim for claim in claims if claim not in results]
        ran = f"; {', '.join(results)} ran" if results else ""
        raise UsageError(f"{len(failures)} step{'s' if len(failures) > 1 else ''} failed (see above): "
                         f"no new page for {', '.join(left)} (an earlier one, if any, is unchanged){ran}. "
                         "Fix what the failed step said and run the same command to continue (finished steps are kept)")
    return results


class StepFailed(UsageError):
    """A step of a claim's chain exited with an error (it printed why); `all` goes on with the other claims."""

    def __init__(self, step, status):
        super().__init__(f"step failed with exit status {status}: {step.text()}")
        self.step, self.status = step, status


# ResNet-20 on 2 idle cores of this project's CPU machines (TensorFlow backend, docs/performance.md):
# training and forward (evaluation, BN recompute) images per second, for the dry run's time estimate.
CPU_IMAGES_PER_SECOND = {"train": 420, "forward": 950}


def _dry_run(claims, steps, setups, out, twins):
    """Prints the steps and what is left of them; `twins`: the plan with every unfinished search's SGD lr
    differing from its EMA lr (the -sgd runs it would add are estimated apart)."""
    progress, done = {}, set()  # progress: unfinished step -> (fraction done, where it is), read once
    for claim in claims:
        print(f"# {claim}: {CLAIMS[claim]}")
        for step in steps[claim]:
            finished = step.done()
            if finished:
                done.add(step)
            elif step not in progress:
                progress[step] = _progress(step)
            where = "" if finished else progress[step][1]
            mark = "(done) " if finished else f"(in progress: {where}) " if where else ""
            print(f"{mark}{step.text()}")
    train_images, forward_images = _left({step: fraction for step, (fraction, _) in progress.items()})
    print(f"# estimated images to process: {train_images:,} trained, {forward_images:,} forward "
          "(evaluation, BN recompute)")
    resnet20 = {setup.model for setup in setups.values()} == {"resnet20"}
    if resnet20:
        print(f"# about {_hours(train_images, forward_images):.1f} h on 2 idle CPU cores (ResNet-20 at "
              f"{CPU_IMAGES_PER_SECOND['train']} training and {CPU_IMAGES_PER_SECOND['forward']} forward images/s; "
              "longer on loaded cores)")
    if done:
        print(f"# {len(done)} of {len(done) + len(progress)} steps are done already in {out} (their outputs are "
              "there: e.g. committed results); to reproduce them from scratch, give --out a new directory")
    extra = {step: _progress(step)[0] for claim in claims for step in twins[claim]
             if step not in progress and not step.done()}
    more_train, more_forward = _left(extra)
    if extra:
        hours = f", about {_hours(more_train, more_forward):.1f} h more" if resnet20 else ""
        print(f"# after tuning: where {SGD_BEST_FILE} picks another lr than best.json, the runs the SGD "
              f"columns read are repeated at it (into <dir>-sgd/): {len(extra)} steps, {more_train:,} trained "
              f"and {more_forward:,} forward images more{hours}")
    return {"train_images": train_images, "forward_images": forward_images,
            "sgd_twin_images": (more_train, more_forward)}


def _left(fractions):
    """(training, forward) images left of unfinished steps, `{step: fraction done}`."""
    train_images = forward_images = 0
    for step, fraction in fractions.items():
        train_images += round(step.train_images * (1 - fraction))
        forward_images += round(step.forward_images * (1 - fraction))
    return train_images, forward_images


def _hours(train_images, forward_images):
    return (train_images / CPU_IMAGES_PER_SECOND["train"] + forward_images / CPU_IMAGES_PER_SECOND["forward"]) / 3600


def _progress(step):
    """(fraction done, what the dry run says) of an unfinished train or tune step, from its checkpoints.

    A train run's fraction counts its epochs, its SWA branch's included (app.train writes summary.json, which
    makes the step done, after both); a search's counts its finished trials and the epochs of the one in
    progress. (0.0, "") where nothing started.
    """
    from evaluation import scaling
    from training import checkpoint_meta

    def epochs_done(run):
        meta = checkpoint_meta.read_meta(os.path.join(run, checkpoint_meta.DIRECTORY, checkpoint_meta.LAST))
        return meta["epoch"] if meta else 0

    epochs = int(flag_value(step.argv, "--epochs") or 0)
    if step.command == "train" and epochs:
        run = os.path.dirname(step.done_files[0])
        done, where = epochs_done(run), ""
        total = epochs
        if "--swa" in step.argv:  # the branch: from the default start (app/cli_swa.py) to the budget's end
            start = scaling.swa_start_epoch(epochs) - 1
            branch = int(flag_value(step.argv, "--swa-epochs") or swa_branch_epochs(epochs))
            total += branch
            branch_done = max(epochs_done(os.path.join(run, "swa")) - start, 0)  # training/swa_branch.DIRECTORY
            where = f", SWA branch {branch_done} of {branch}" if done >= epochs else ""
            done += branch_done
        if done:
            where = f"{min(done, epochs)} of {epochs} epochs{where}"
        return min(done / total, 1.0), where
    if step.command == "tune" and epochs and "--lrs" in step.argv:
        after = step.argv[step.argv.index("--lrs") + 1:]
        trials = next((i for i, word in enumerate(after) if word.startswith("--")), len(after))
        finished, current = 0, 0
        for path in glob.glob(os.path.join(os.path.dirname(step.done_files[0]), "trial_*", "trial.json")):
            try:
                with open(path, encoding="utf-8") as handle:
                    status = json.load(handle).get("status")
            except (OSError, ValueError):
                continue
            if status == "RUNNING":
                current = max(current, epochs_done(os.path.dirname(path)))
            elif status is not None:
                finished += 1
        if finished or current:
            running = f", one at epoch {current} of {epochs}" if current else ""
            return (finished + current / epochs) / trials, f"{finished} of {trials} trials finished{running}"
    return 0.0, ""


def _run_claim(claim, steps, dirs, setups, out, args, started):
    ran = 0
    for step in steps:
        if step.done():
            print(f"[{claim}] done already: {step.text()}", flush=True)
            continue
        print(f"[{claim}] running: {step.text()}", flush=True)
        _run_step(step)
        ran += 1
    claim_dir = os.path.join(out, claim)
    os.makedirs(claim_dir, exist_ok=True)
    commands = [step.text() for step in steps]
    reproduce_command = "python -m app.reproduce " + shlex.join(
        [claim, "--budget", args.budget, "--seeds", *map(str, args.seeds), "--out", args.out]
        + (["--data-dir", args.data_dir] if args.data_dir else [])
    )
    result = claim_pages.write_claim(
        claim, CLAIMS[claim], claim_dir, dirs, commands=commands, command=reproduce_command,
        wall_seconds=time.time() - started, run_seconds=_train_seconds(steps), steps_run=ran,
        images=sum(step.train_images for step in steps), forward=sum(step.forward_images for step in steps),
    )
    print(f"[{claim}] wrote {', '.join(result['files'])}", flush=True)
    print(result["headline"], flush=True)
    return result


def _train_seconds(steps):
    """Wall time of the claim's training runs, from their summary.json files."""
    total = 0.0
    for step in steps:
        if step.command != "train":
            continue
        for path in step.done_files:
            with open(path, encoding="utf-8") as handle:
                total += json.load(handle).get("wall_time_seconds", 0.0)
    return total


def _run_step(step):
    from app import consistency, evaluate, train, tune, tune_swa

    entry = {"train": train.main, "evaluate": evaluate.main, "consistency": consistency.main,
             "tune": tune.main, "tune_swa": tune_swa.main}[step.command]
    try:
        entry(list(step.argv))
    except SystemExit as exit:
        if exit.code in (130, 143):  # Ctrl-C or SIGTERM: the step said where a rerun resumes
            raise
        if exit.code not in (0, None):
            raise StepFailed(step, exit.code) from None


if __name__ == "__main__":
    from app.train import exit_fast_on_interrupt

    exit_fast_on_interrupt(main)
