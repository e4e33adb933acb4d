"""`OneShotHyperModel`: the paper's one-shot tuning (§3.1) as a KerasTuner HyperModel.

Morales-Brotons et al. (§3.1, "Hyperparameters tuning") tune EMA training
with one run per initial learning rate: a cosine schedule sweeps the rate
down while 5 EMAs (decays 0.968 ... 0.998) are evaluated on the 20 %
validation split after every epoch, and early stopping picks the best epoch,
so the decay and the final learning rate (the strength of the implicit
regularization) are tuned on the go. What remains to search is the initial
learning rate. A trial here is that one run: the objective is the best
validation accuracy of any EMA at any epoch, the maximum over epochs of
`ema_best_val_accuracy`. Evidence: tests/test_tune.py reads each trial's own
history.csv back and re-derives the objective, its epoch and decay.
"""

import dataclasses
import math
import os
import shutil

import keras
import keras_tuner
import numpy as np

from callbacks import variables
from callbacks.divergence import TrainingDiverged
from callbacks.ema_selection import weights_file_name
from data import pipeline
from training import checkpoint, recipe, stopping
from training import run_dir as run_directory
from training import trainer
from training.history import ROW_NAMES, EpochTimer, RunLogger
from tuning import hparams_logging

# --objective -> the epoch-log key whose maximum over epochs is the objective.
OBJECTIVES = {"ema": "ema_best_val_accuracy", "sgd": "val_accuracy"}
# Hyperparameter -> the app.train flag that sets it.
TRAIN_FLAGS = {"lr": "--lr", "weight_decay": "--weight-decay", "batch_size": "--batch-size"}
SAMPLINGS = ("grid", "log-uniform")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a search varies; everything else comes from the `TrainConfig`.

    `sampling="grid"`: `hp.Choice` over the given values. `"log-uniform"`:
    `hp.Float(..., sampling="log")` between the smallest and the largest value
    (random and Bayesian search). Batch sizes are always a `hp.Choice`.
    An empty tuple leaves that setting as the `TrainConfig` has it.
    """

    lrs: tuple
    weight_decays: tuple = ()
    batch_sizes: tuple = ()
    sampling: str = "grid"


class TrialStopped(keras_tuner.errors.FatalError):
    """SIGTERM stopped a trial; the message says where and what a rerun resumes from.

    A `FatalError`: KerasTuner records any other exception of a trial as a failed
    or invalid trial and goes on with the next one.
    """


class OneShotHyperModel(keras_tuner.HyperModel):
    """One trial = one `app.train` run on the 80/20 split, scored by early stopping.

    `build(hp)` declares the search space, seeds Keras with the config's seed
    (every trial starts from the same initial weights), sets its precision
    policy and returns the model compiled as `app.train` compiles it. `fit(hp, model)` builds the trial's
    tf.data pipelines (its batch size may be searched; the data order is a
    function of the seed and the epoch only, so the same in every trial, in
    any order or process), trains with the `MultiEMA` callback and the other
    callbacks of an `app.train` run (training/recipe.py `fit_callbacks`), and
    returns the `History`: KerasTuner takes the objective as the best epoch of
    `OBJECTIVES[objective]`. A diverging trial (a NaN or infinite training
    loss or weight: `DivergenceGuard`, before any average sees it) raises
    `keras_tuner.errors.FailedTrialError`: KerasTuner records it as failed and
    the search goes on. With a truthy `verbose` (KerasTuner's
    `search(verbose=...)`) a trial prints one line per epoch as `app.train`
    does (a live status line on a terminal only), never Keras's progress bar,
    and reports `"trial_started"` to `report` (app.tune prints the note on
    decays the warm-up never releases).

    With `trial_dir` (passed by `OneShotTuner`) the trial also writes an
    `app.train` run directory there: config.json, command.txt (the
    `app.train` command of this trial), history.csv, summary.json (with the
    `"objective"`), tensorboard/ (with HParams), and the EMA that achieved the
    objective as weights/ema_<d>_acc.weights.h5; while it runs, checkpoint/
    (its last epoch end, deleted when the trial finishes).

    Example:

    ```python
    hypermodel = OneShotHyperModel(config, data.load_arrays(config), SearchSpace(lrs=(0.05, 0.1, 0.2)))
    tuner = OneShotTuner(oracle=build_oracle("grid", OBJECTIVES["ema"], 3, seed=0),
                         hypermodel=hypermodel, directory="tuning-runs", project_name="c10")
    tuner.search()
    ```

    Args:
        config: the `TrainConfig` of every trial, but for what `space` varies.
            Must not be `full_train`: trials are scored on the validation split.
        arrays: the run's data, `data.loading.load_arrays(config)`.
        space: a `SearchSpace`.
        objective: `"ema"` (the paper's) or `"sgd"` (best `val_accuracy` of
            the trained model). Defaults to `"ema"`.
        train_argv: the `app.train` flags of `config`, for command.txt. Defaults to ().
        report: None, or a callable `report("trial_started", config=, steps_per_epoch=)`
            called as each trial starts. Defaults to None.
    """

    def __init__(self, config, arrays, space, objective="ema", train_argv=(), report=None):
        super().__init__(name="one_shot")
        if config.full_train or arrays.evaluation_split != "validation":
            raise ValueError(
                "Invalid value for argument `config`: full_train=True. Trials must be "
                "scored on the validation split, never on the test set."
            )
        if objective not in OBJECTIVES:
            raise ValueError(
                f"Invalid value for argument `objective`. Received: objective={objective!r}. "
                f"Expected one of {tuple(OBJECTIVES)}."
            )
        if objective == "ema" and not config.ema_decays:
            raise ValueError("The `ema` objective needs `config.ema_decays`.")
        if space.sampling not in SAMPLINGS:
            raise ValueError(
                f"Invalid value for argument `space`. Received: sampling={space.sampling!r}. "
                f"Expected one of {SAMPLINGS}."
            )
        self.config = config
        self.arrays = arrays
        self.space = space
        self.objective = objective
        self.train_argv = tuple(train_argv)
        self.report = report

    def trial_config(self, hp):
        """Declares the search space in `hp`; returns the trial's `TrainConfig`."""
        changes = {"lr": _declare_positive(hp, "lr", self.space.lrs, self.space.sampling)}
        if self.space.weight_decays:
            changes["weight_decay"] = _declare_positive(
                hp, "weight_decay", self.space.weight_decays, self.space.sampling
            )
        if self.space.batch_sizes:
            changes["batch_size"] = hp.Choice("batch_size", list(self.space.batch_sizes))
        return dataclasses.replace(self.config, **changes)

    def build(self, hp):
        config = self.trial_config(hp)
        keras.utils.set_random_seed(config.seed)
        keras.mixed_precision.set_global_policy(config.precision)
        if config.deterministic:
            recipe.enable_determinism()
        steps_per_epoch = math.ceil(len(self.arrays.train_labels) / config.batch_size)
        schedule = recipe.build_schedule(config, steps_per_epoch)
        return recipe.build_model(config, self.arrays, schedule)

    def fit(self, hp, model, *args, trial_dir=None, callbacks=None, verbose="auto", **kwargs):
        if args:
            raise ValueError(
                "OneShotHyperModel builds each trial's datasets from its `arrays`; "
                "call `search()` without data."
            )
        config = self.trial_config(hp)
        data = pipeline.make_data(self.arrays, batch_size=config.batch_size, seed=config.seed,
                                  eval_batch_size=config.eval_batch_size)
        schedule = recipe.build_schedule(config, data.steps_per_epoch)
        # Only the EMAs: BN recomputation and SWA do not change the trajectory.
        averaging_config = dataclasses.replace(config, bn_recompute="none", swa=False)
        averaging = {name: callback for name, callback in recipe.build_callbacks(averaging_config, data, model).items()
                     if name == "ema"}
        ema = averaging.get("ema")
        # app.train's epoch lines, not Keras's progress bar, which writes carriage returns and colours into logs too.
        timer = EpochTimer(config.batch_size, live=None if verbose else False)
        logger, checkpoint_dir, rows = None, None, []
        if trial_dir is not None:
            # A trial killed mid-way (a session's end) resumes at its last epoch end, as app.train does.
            checkpoint_dir = os.path.join(trial_dir, checkpoint.DIRECTORY)
            resumed = checkpoint.load(checkpoint_dir)
            if resumed is not None:
                checkpoint.restore(model, resumed.contents, averaging)
                rows = resumed.meta["rows"][:resumed.meta["epoch"]]
            logger = self._start_trial_directory(trial_dir, config, hp, schedule, timer, bool(verbose), rows)
        if verbose and self.report is not None:
            self.report("trial_started", config=config, steps_per_epoch=data.steps_per_epoch)
        fit_callbacks = recipe.fit_callbacks(config, averaging, timer, logger,
                                             after_averages=_continued(callbacks or (), rows))
        if checkpoint_dir is not None:
            run_checkpoint = checkpoint.RunCheckpoint(checkpoint_dir, averaging, logger)
            # Last: after SIGTERM the trial stops at the step's end (it resumes at its last epoch end), and
            # Ctrl-C's line (app/signals.py) names the checkpoint a rerun resumes from.
            fit_callbacks += [run_checkpoint, stopping.StopAtStepEnd(run_checkpoint, within_epoch=False)]
            stopping.start(stopping.checkpoint_files(checkpoint_dir), data.steps_per_epoch)
        try:
            # With every epoch done (stopped or killed after the last checkpoint) fit trains nothing, and its
            # train begin gives the callbacks their restored state.
            history = model.fit(
                data.train_from(len(rows)),  # an endless stream, cut into epochs by steps_per_epoch
                steps_per_epoch=data.steps_per_epoch,
                initial_epoch=len(rows),
                epochs=config.epochs,
                validation_data=data.validation,
                shuffle=False,  # the stream is shuffled per epoch, reproducibly (data/pipeline.py)
                # app.train's callbacks (its guard included), KerasTuner's where app.train checks SGD's epoch.
                callbacks=fit_callbacks,
                verbose=0,
                **kwargs,
            )
        except TrainingDiverged as error:  # KerasTuner records the trial as failed; the search goes on
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
            raise keras_tuner.errors.FailedTrialError(f"{error} with lr {config.lr:g}") from None
        except stopping.Stopped:  # SIGTERM: the search ends here, the trial stays RUNNING for the rerun
            raise TrialStopped(stopping.message("terminated")) from None
        finally:
            stopping.end()
        # KerasTuner reads the objective from the whole trial: the epochs before a resume come from the checkpoint.
        history.history = _whole_history(rows, history.history)
        result = objective_of(history.history, self.objective, config.ema_decays)
        if trial_dir is not None:
            self._finish_trial_directory(trial_dir, model, ema, logger.rows, result, hp)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        print(_result_line(result, hp.values), flush=True)
        return history

    def _start_trial_directory(self, trial_dir, config, hp, schedule, timer, verbose, rows):
        if not rows:
            # An interrupted trial without a checkpoint reruns in the same directory: its curves start afresh.
            shutil.rmtree(os.path.join(trial_dir, "tensorboard"), ignore_errors=True)
            argv = list(self.train_argv) + hyperparameter_flags(hp.values)
            run_directory.create(trial_dir, config, argv, extra={"evaluation_split": "validation"})
            hparams_logging.write_session(
                os.path.join(trial_dir, "tensorboard"), hp.values, os.path.basename(trial_dir)
            )
        return RunLogger(trial_dir, schedule, config.epochs, rows=rows, verbose=verbose, timer=timer)

    def _finish_trial_directory(self, trial_dir, model, ema, rows, result, hp):
        summary = {
            "evaluation_split": "validation",
            "epochs_completed": len(rows),
            "hyperparameters": dict(hp.values),
            "objective": result,
            "sgd": trainer.sgd_summary(rows),
        }
        if ema is not None:
            summary["ema"] = trainer.ema_summary(ema)
        run_directory.write_summary(trial_dir, summary)
        if result["decay"] is not None:
            weights = ema.selected_weights(result["decay"], "accuracy")
            path = os.path.join(trial_dir, run_directory.WEIGHTS_DIR,
                                weights_file_name(result["decay"], "accuracy"))
            variables.save_weights(model, weights, path)
        hparams_logging.write_result(
            os.path.join(trial_dir, "tensorboard"), result["value"], result["epoch"], result["decay"]
        )


def _continued(callbacks, rows):
    """The caller's callbacks; KerasTuner's best-epoch saver told the best value of the epochs before a resume
    (its weights file was written then), so that a worse later epoch does not replace it."""
    for callback in callbacks:
        # KerasTuner's SaveBestEpoch (its module is private): the callback keeping `objective` and `best_value`.
        if rows and hasattr(callback, "best_value") and hasattr(callback, "objective"):
            values = [row[callback.objective.name] for row in rows if callback.objective.name in row]
            if values:
                better = max if callback.objective.direction == "max" else min
                callback.best_value = better(values)
    return callbacks


def _whole_history(rows, history):
    """`History.history` of the whole trial: the checkpoint's rows (history.csv's names) before the resumed epochs
    (all of them when no epoch was left to run: `history` is empty)."""
    if not rows:
        return history
    if not history:
        keras_names = {row_name: key for key, row_name in ROW_NAMES.items()}
        return {keras_names.get(name, name): [row[name] for row in rows] for name in rows[0]
                if name not in ("epoch", "lr")}
    return {key: [row[ROW_NAMES.get(key, key)] for row in rows] + list(values) for key, values in history.items()}


def objective_of(history, objective, decays=()):
    """The objective of one trial from its epoch logs (`History.history`).

    Returns a dict: `name` ("ema"/"sgd"), `metric` (the log key), `value`
    (its maximum over epochs), `epoch` (1-based, the first epoch reaching it,
    KerasTuner's choice too), and `decay`: for "ema" the smallest of `decays`
    whose `ema_<d>_val_accuracy` reaches the value at that epoch, else None.
    """
    metric = OBJECTIVES[objective]
    values = np.asarray(history[metric], dtype="float64")
    index = int(np.argmax(values))
    decay = None
    if objective == "ema":
        decay = min(
            d for d in decays if history[f"ema_{d:g}_val_accuracy"][index] == values[index]
        )
    return {
        "name": objective,
        "metric": metric,
        "value": float(values[index]),
        "epoch": index + 1,
        "decay": decay,
    }


def hyperparameter_flags(values):
    """The `app.train` flags that set hyperparameter `values` (`{name: value}`)."""
    flags = []
    for name, value in values.items():
        flags += [TRAIN_FLAGS[name], repr(value)]
    return flags


def _declare_positive(hp, name, values, sampling):
    if sampling == "grid":
        return hp.Choice(name, [float(v) for v in values])
    return hp.Float(name, min_value=float(min(values)), max_value=float(max(values)), sampling="log")


def _result_line(result, values):
    settings = ", ".join(f"{name} {value:g}" for name, value in values.items())
    where = f"epoch {result['epoch']}"
    if result["decay"] is not None:
        where += f", EMA decay {result['decay']:g}"
    return f"trial ({settings}): objective {result['metric']} {result['value']:.4f} at {where}"
