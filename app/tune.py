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

Output, in `--out` (default `tuning-runs/<dataset>-<model>`):

- `best.json`: `{"lr", "objective", "objective_name", "decay", "epoch",
  "command", ...}`; `command` is the final run, `python -m app.train <the same
  flags> --lr <best> --full-train`;
- `best_sgd_final.json` (objective ema): the lr that SGD's last-epoch
  validation accuracy picks from the same trials (the SGD comparator's lr;
  `app.train --lr-from` and app.reproduce read it);
- `tuning.json`, `command.txt`: this search's settings and command line;
- KerasTuner's own files: `oracle.json`, `tuner0.json`, and per trial
  `trial_<id>/trial.json` (hyperparameters, status, score) and
  `checkpoint.weights.h5` (the SGD model at the objective's epoch);
- per trial, an `app.train` run directory in the same `trial_<id>/`:
  config.json, command.txt, history.csv, summary.json, tensorboard/,
  weights/ema_<d>_acc.weights.h5 (the EMA that scored the objective);
  while the trial runs, `checkpoint/` (its last epoch end, for a resume);
- TensorBoard HParams: `tensorboard --logdir <tuner dir>`, tab HPARAMS,
  shows lr -> objective.

Resuming: without `--overwrite` a search continues where it stopped
(KerasTuner's `overwrite=False`): finished trials are kept, an interrupted one
resumes at its last epoch end (`trial_<id>/checkpoint/`, deleted when the trial
finishes; from scratch if it had not finished an epoch), then the remaining
ones run. The settings must be the
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
(oracle.json, trial_<id>/trial.json in its --out), waits until every
worker asked for a trial after the last one (KerasTuner polls every 20 s),
then writes best.json and prints the result. Workers write each trial's run
directory and checkpoint in their own --out: give all processes the same
directory on a shared file system to have everything in one place. Only the
chief honours --overwrite. Workers wait for the chief (up to KerasTuner's 60
minutes). A killed chief is resumed like a single process; restart the
workers too.
"""

import os
import sys

if __name__ == "__main__":
    from app import signals

    signals.install()  # first: Ctrl-C and SIGTERM are one line, as in app.train (app/signals.py)

import json  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402

from app.errors import Interrupted, entry_point  # noqa: E402
from data import availability  # noqa: E402
from utils.errors import UsageError  # noqa: E402
from utils.files import atomic_write_text  # noqa: E402

BEST_FILE = "best.json"
BEST_SGD_FILE = "best_sgd_final.json"  # the lr for SGD, read from the same trials
COMMAND_FILE = "command.txt"


@entry_point
def main(argv):
    """Runs the command line; returns best.json's dict (None on a worker)."""
    config, arrays = prepare(argv)
    return tune(config, arrays, argv)


def prepare(argv, environ=None):
    """Everything that can fail because of the user, before any expensive work."""
    from utils import quiet
    from app import tune_cli as cli

    config = cli.parse_config(argv, environ=environ)
    cli.check_out(config)
    availability.check(config.train)  # without TensorFlow, where it can tell
    print(f"starting: importing TensorFlow, then reading {config.train.dataset} ...", flush=True)
    quiet.import_tensorflow()  # the arguments are fine: now the heavy imports
    from data import loading

    loading.check_data_available(config.train)
    arrays = loading.load_arrays(config.train)
    check_trials_update_the_emas(config, len(arrays.train_labels))
    return config, arrays


def check_trials_update_the_emas(config, num_train):
    """Refuses a search whose trials end before the first EMA update.

    The EMAs would still hold the initial weights, and the objective would
    rank untrained models (and break ties arbitrarily).
    """
    import math

    if config.objective != "ema":
        return
    batch_size = max(config.batch_sizes or (config.train.batch_size,))
    steps = math.ceil(num_train / batch_size) * config.train.epochs
    if steps < config.train.ema_every_steps:
        raise UsageError(
            f"each trial runs {steps} optimizer steps, fewer than --ema-every-steps "
            f"{config.train.ema_every_steps}: no EMA would be updated and the search would rank "
            "untrained weights; raise --epochs or --limit-train, or lower --ema-every-steps"
        )


def tune(config, arrays, argv):
    """Runs (or resumes, or serves) the search; returns best.json's dict."""
    from tuning import hparams_logging
    from app import train_report
    from app.tune_cli import TUNING_FILE
    from tuning.hypermodel import OBJECTIVES, OneShotHyperModel, TrialStopped
    from tuning.oracles import build_oracle
    from tuning.tuner import OneShotTuner
    from training import stopping

    started = time.time()
    hypermodel = OneShotHyperModel(
        config.train, arrays, config.search_space(), config.objective, config.train_argv,
        report=train_report.report,
    )
    path = os.path.normpath(config.out)
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
    # Until best.json is written, a signal outside a trial says what a rerun does (after it: the same).
    with stopping.between_runs("between trials; run the same command to resume the search "
                               "(finished trials are kept)"):
        try:
            tuner.search(verbose="auto")
        except TrialStopped as stopped:
            raise Interrupted(str(stopped), status=143) from None
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
    # Paper §4.1: the final run keeps each EMA, and SGD's early-stopped weights, at the epochs this trial
    # chose on the validation split; early stopping is not tuned again on the test set.
    trial_dir = os.path.join(path, f"trial_{best['trial_id']}")
    if os.path.isfile(os.path.join(trial_dir, "summary.json")):
        final_argv += ["--stop-epochs-from", trial_dir]
    best["command"] = "python -m app.train " + shlex.join(final_argv + ["--full-train"])
    best["trials"] = {"completed": completed, "failed": failed, "other": other}
    note = ema_below_sgd_note(best, trial_dir)
    if note:
        best["note"] = note
    best["wall_time_seconds"] = round(time.time() - started, 1)
    if config.objective == "ema":  # first: best.json marks the search done (app.reproduce reads both)
        _write_best_final_sgd(oracle, path, config.train_argv)
    atomic_write_text(os.path.join(path, BEST_FILE), json.dumps(best, indent=2) + "\n")
    where = f"epoch {best['epoch']}"
    if best["decay"] is not None:
        where += f", EMA decay {best['decay']:g}"
    if best.get("note"):
        print(best["note"], flush=True)
    print(
        f"\nBest learning rate: {best['lr']:g} ({best['objective_metric']} "
        f"{best['objective']:.4f} at {where}; {completed} trials completed, {failed} failed)\n"
        f"Final run:\n  {best['command']}\n"
        f"Details: {os.path.join(path, BEST_FILE)}",
        flush=True,
    )
    return best


def _write_best_final_sgd(oracle, path, train_argv):
    """best_sgd_final.json: the lr SGD's last-epoch validation accuracy picks, from the same trials.

    The analysis plan tunes the lr for SGD as well as for the EMA (docs/analysis-plan.md,
    Comparators); reading the trials' histories costs no training.
    """
    from tuning.hypermodel import hyperparameter_flags
    from tuning.tuner import best_final_sgd

    best = best_final_sgd(oracle, path)
    if best is None:
        return
    best["command"] = "python -m app.train " + shlex.join(
        list(train_argv) + hyperparameter_flags(best["hyperparameters"]) + ["--full-train"])
    atomic_write_text(os.path.join(path, BEST_SGD_FILE), json.dumps(best, indent=2) + "\n")
    print(f"SGD's last-epoch validation accuracy (the same trials) picks lr {best['lr']:g} "
          f"({best['objective']:.4f}): {os.path.join(path, BEST_SGD_FILE)}", flush=True)


def ema_below_sgd_note(best, trial_dir):
    """A note when the EMA objective's winner scores below its own trial's SGD model.

    Then the search ranked learning rates by averages that had not caught up with
    training (too few updates, or still in the decay warm-up): app.train says as much
    for a run; a search says it here. None otherwise.
    """
    import csv

    if best["objective_name"] != "ema":
        return None
    try:
        with open(os.path.join(trial_dir, "history.csv"), encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("val_accuracy")]
        epoch, sgd = max(enumerate((float(row["val_accuracy"]) for row in rows), 1), key=lambda item: item[1])
    except (OSError, ValueError):
        return None
    if best["objective"] >= sgd:
        return None
    return (f"note: the chosen trial's best EMA ({best['objective']:.4f}) scores below its SGD model "
            f"({sgd:.4f} at epoch {epoch}): the learning rates were ranked by averages that had not caught up "
            "with training; lengthen the trials (--epochs, --limit-train) or rank by SGD (--objective sgd)")


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
    from app.train import exit_fast_on_interrupt

    exit_fast_on_interrupt(main)
