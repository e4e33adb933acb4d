"""`OneShotTuner`: KerasTuner's `Tuner`, giving each trial its directory.

And `best_trial_result`, which reads the search's result from KerasTuner's
own trial records (the oracle's), so that it works the same in one process,
after a resume, and on the chief of a distributed search.
"""

import re

import keras_tuner

from tuning.hypermodel import OBJECTIVES

_EMA_ACCURACY = re.compile(r"^ema_(?P<decay>[0-9.e+-]+)_val_accuracy$")
COMPLETED = keras_tuner.engine.trial.TrialStatus.COMPLETED
FAILED = keras_tuner.engine.trial.TrialStatus.FAILED
_FAILED_TRIAL_ERROR = f"{keras_tuner.errors.FailedTrialError.__module__}.FailedTrialError"


class OneShotTuner(keras_tuner.Tuner):
    """A `keras_tuner.Tuner` that passes `trial_dir` to `HyperModel.fit`.

    The trial directory is KerasTuner's own (`<directory>/<project_name>/
    trial_<id>/`, beside its trial.json and checkpoint), so everything about a
    trial is in one place. Use with `OneShotHyperModel`, with any oracle.
    A trial failed by `FailedTrialError` (a diverged learning rate) keeps its
    one-line reason as its message in trial.json, not a traceback.
    `trial_ids_run` lists the trials this process ran.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trial_ids_run = []

    def run_trial(self, trial, *args, **kwargs):
        self.trial_ids_run.append(trial.trial_id)
        kwargs["trial_dir"] = self.get_trial_dir(trial.trial_id)
        return super().run_trial(trial, *args, **kwargs)

    def on_trial_end(self, trial):
        if trial.status == FAILED and trial.message:
            last = _last_line(trial.message)
            if last.startswith(_FAILED_TRIAL_ERROR):
                trial.message = last[len(_FAILED_TRIAL_ERROR) :].lstrip(": ")
        super().on_trial_end(trial)


class NoCompletedTrial(Exception):
    """Every trial of the search failed."""


def trial_counts(oracle):
    """(completed, failed, other) numbers of trials."""
    statuses = [trial.status for trial in oracle.trials.values()]
    completed = statuses.count(COMPLETED)
    failed = statuses.count(FAILED)
    return completed, failed, len(statuses) - completed - failed


def best_trial_result(oracle, objective):
    """The best completed trial: a dict for best.json (without the command).

    Keys: `trial_id`, `hyperparameters` (`{name: value}`), `lr`, `objective`
    (KerasTuner's score: the best epoch's value of `OBJECTIVES[objective]`),
    `objective_name`, `objective_metric`, `epoch` (1-based) and `decay` (the
    EMA that scored it; None for "sgd").

    Raises:
        NoCompletedTrial: with the failed trials' last message lines.
    """
    completed = [trial for trial in oracle.trials.values() if trial.status == COMPLETED]
    if not completed:
        reasons = sorted(
            {_last_line(trial.message) for trial in oracle.trials.values() if trial.message}
        )
        raise NoCompletedTrial("; ".join(reasons) or "no trial ran")
    best = oracle.get_best_trials(1)[0]
    values = dict(best.hyperparameters.values)
    return {
        "trial_id": best.trial_id,
        "hyperparameters": values,
        "lr": values["lr"],
        "objective": float(best.score),
        "objective_name": objective,
        "objective_metric": OBJECTIVES[objective],
        "epoch": int(best.best_step) + 1,
        "decay": _decay_of(best) if objective == "ema" else None,
    }


def best_final_sgd(oracle, path):
    """The completed trial whose SGD model scores best on validation at its last epoch.

    The analysis plan's second lr objective (docs/analysis-plan.md, Comparators):
    read from the same trials as the EMA objective, from each trial's
    history.csv (`trial_<id>/history.csv`, column `val_accuracy`). Returns the
    dict `best_trial_result` does, with `objective_name` "sgd-final"; None when
    no completed trial wrote a history.
    """
    import csv
    import os

    scored = []
    for trial in oracle.trials.values():
        if trial.status != COMPLETED:
            continue
        try:
            with open(os.path.join(path, f"trial_{trial.trial_id}", "history.csv"), encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            scored.append((float(rows[-1]["val_accuracy"]), len(rows), trial))
        except (OSError, IndexError, KeyError, ValueError):
            continue
    if not scored:
        return None
    # Ties go to the smaller lr (the order of the grid is not the order of the trials).
    accuracy, epochs, trial = max(scored, key=lambda item: (item[0], -item[2].hyperparameters.values["lr"]))
    values = dict(trial.hyperparameters.values)
    return {"trial_id": trial.trial_id, "hyperparameters": values, "lr": values["lr"], "objective": accuracy,
            "objective_name": "sgd-final", "objective_metric": "val_accuracy at the last epoch",
            "epoch": epochs, "decay": None}


def _decay_of(trial):
    # The best epoch's logs are the trial's metrics; the EMA whose accuracy is
    # the maximum over decays scored it (the smallest decay among ties, as
    # `objective_of`).
    accuracies = {
        float(match["decay"]): trial.metrics.get_last_value(name)
        for name in trial.metrics.metrics
        if (match := _EMA_ACCURACY.match(name))
    }
    best = max(accuracies.values())
    return min(decay for decay, accuracy in accuracies.items() if accuracy == best)


def _last_line(message):
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
