"""TensorBoard HParams summaries of a search, written without TensorFlow.

Layout (`tensorboard --logdir <tuner dir>`, then the HPARAMS tab): the tuner
directory itself holds the experiment (the searched hyperparameters with their
domains, and the metrics); each trial's `trial_<id>/tensorboard/` run holds
the trial's hyperparameter values (a session) next to its epoch curves, and,
once it finished, the scalars `tuning/objective`, `tuning/best_epoch` (and
`tuning/best_decay` for the EMA objective). A failed trial has no objective.
"""

from tensorboard.plugins.hparams import summary_v2 as hparams_summary

from training.tensorboard_logging import ScalarWriter

OBJECTIVE_TAG = "tuning/objective"
BEST_EPOCH_TAG = "tuning/best_epoch"
BEST_DECAY_TAG = "tuning/best_decay"


def experiment_summary(hyperparameters, objective_metric):
    """The experiment's `Summary` proto.

    Args:
        hyperparameters: the search space, a `keras_tuner.HyperParameters`.
        objective_metric: the epoch-log key maximized, named in the dashboard.
    """
    hparams = [hparams_summary.HParam(hp.name, _domain(hp)) for hp in hyperparameters.space]
    metrics = [
        hparams_summary.Metric(
            OBJECTIVE_TAG,
            display_name=f"objective (max over epochs of {objective_metric})",
        ),
        hparams_summary.Metric(BEST_EPOCH_TAG, display_name="epoch of the objective"),
    ]
    if objective_metric.startswith("ema_"):
        metrics.append(hparams_summary.Metric(BEST_DECAY_TAG, display_name="EMA decay of the objective"))
    return hparams_summary.hparams_config_pb(hparams, metrics)


def write_experiment(logdir, hyperparameters, objective_metric):
    writer = ScalarWriter(logdir)
    writer.summary(experiment_summary(hyperparameters, objective_metric))
    writer.close()


def write_session(logdir, values, trial_id):
    """Records one trial's hyperparameter values (`{name: value}`)."""
    writer = ScalarWriter(logdir)
    writer.summary(hparams_summary.hparams_pb(dict(values), trial_id=trial_id))
    writer.close()


def write_result(logdir, objective, epoch, decay=None):
    """Records a finished trial's objective, its 1-based epoch and EMA decay."""
    scalars = {OBJECTIVE_TAG: objective, BEST_EPOCH_TAG: epoch}
    if decay is not None:
        scalars[BEST_DECAY_TAG] = decay
    writer = ScalarWriter(logdir)
    writer.scalars(scalars, step=epoch)
    writer.close()


def _domain(hp):
    if hasattr(hp, "values"):  # Choice, Boolean
        return hparams_summary.Discrete(list(hp.values))
    if hasattr(hp, "min_value"):
        if isinstance(hp.min_value, int) and isinstance(hp.max_value, int):
            return hparams_summary.IntInterval(hp.min_value, hp.max_value)
        return hparams_summary.RealInterval(float(hp.min_value), float(hp.max_value))
    return None  # Fixed: no domain
