"""The oracles of `python -m app.tune`: grid (resumable), random, Bayesian.

`GridOracle` replaces KerasTuner 1.4.8's `GridSearchOracle`, whose walk over
the grid lives in attributes that `oracle.json` does not keep
(`_ordered_ids`, `_populate_next`): a search resumed with `overwrite=False`
stops after the trials already finished, and one resumed after a trial was
interrupted dies with a `KeyError` (keras-team/keras-tuner#1055; reproduced
here in tests/test_tune.py). `GridOracle` derives the next grid point from
the trials themselves, which KerasTuner does reload, so resuming needs no
state of its own.
"""

import itertools

import keras_tuner

ORACLES = ("grid", "random", "bayesian")


class GridOracle(keras_tuner.Oracle):
    """Tries every combination of the `hp.Choice` values once, in order.

    The order is the product of the values in the order they were declared
    (the last hyperparameter varies fastest). A combination is skipped if any
    trial of this search, finished, failed or running, already has it; an
    interrupted trial is rerun by KerasTuner's own retry queue. When no
    combination is left the oracle stops.

    Example:

    ```python
    oracle = GridOracle(objective=keras_tuner.Objective("score", "max"))
    tuner = keras_tuner.Tuner(oracle=oracle, hypermodel=hypermodel,
                              directory="runs", project_name="grid")
    ```

    Args:
        **kwargs: the arguments of `keras_tuner.Oracle`.
    """

    def populate_space(self, trial_id):
        space = self.get_space().space
        for hp in space:
            if not hasattr(hp, "values"):
                raise ValueError(
                    f"GridOracle needs discrete hyperparameters (hp.Choice); "
                    f"{hp.name!r} is a {type(hp).__name__}."
                )
        tried = [trial.hyperparameters.values for trial in self.trials.values()]
        names = [hp.name for hp in space]
        for combination in itertools.product(*(hp.values for hp in space)):
            values = dict(zip(names, combination))
            if values not in tried:
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": values}
        return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}


def build_oracle(name, objective, max_trials, seed):
    """The oracle `name` (one of `ORACLES`), maximizing the metric `objective`.

    A diverging learning rate is an expected outcome of a learning-rate
    search, not a broken search: failed trials never stop it
    (`max_consecutive_failed_trials=None`; KerasTuner's default stops after 3).
    """
    if name not in ORACLES:
        raise ValueError(f"Unknown oracle {name!r}; choose from {', '.join(ORACLES)}")
    arguments = dict(
        objective=keras_tuner.Objective(objective, direction="max"),
        max_trials=max_trials,
        max_consecutive_failed_trials=None,
    )
    if name == "grid":
        return GridOracle(**arguments)
    # KerasTuner reads seed 0 as "no seed" (`seed or random.randint(...)`).
    arguments["seed"] = seed + 1
    if name == "random":
        return keras_tuner.oracles.RandomSearchOracle(**arguments)
    return keras_tuner.oracles.BayesianOptimizationOracle(**arguments)
