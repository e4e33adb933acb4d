"""The training recipe: a `TrainConfig` -> schedule, compiled model, averaging callbacks.

One place that says how a config becomes the objects `fit` runs with, shared
by `app.train`, the KerasTuner hypermodel (tuning/) and the SWA branch: the
paper's SGD (training/optimizer.py: PyTorch-form Nesterov with coupled L2,
docs/fidelity.md), its schedules (training/schedules.py), and the callbacks
(callbacks/) in the order their logs must be produced.
"""

import os
import sys

import keras

import models
from callbacks.batch_norm import BatchNormRecompute, recomputed_layers
from callbacks.bootstrap import EMABootstrap
from callbacks.divergence import DivergenceGuard
from callbacks.ema import MultiEMA
from callbacks.power_ema import PowerFunctionEMA
from callbacks.stability import PredictionStability
from training import distribution
from training import run_dir
from training.config import ema_batch_scale
from training.optimizer import TorchSGD
from training.schedules import TrainingSchedule


def build_schedule(config, steps_per_epoch):
    return TrainingSchedule(
        config.schedule,
        config.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
    )


def build_model(config, data, schedule):
    model = models.build_model(config.model, data.num_classes, image_size=data.image_size,
                               synchronized_batch_norm=distribution.synchronized_batch_norm(config))
    model.compile(
        optimizer=TorchSGD(
            learning_rate=schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            l2=config.weight_decay,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    # Keras's TensorFlow trainer builds the optimizer inside the first traced
    # train step (without a tf.distribute strategy); creating variables there
    # makes tf.function trace the step twice. Built here, it is traced once:
    # ~2-4 s less per run on 2 CPU cores (measured with a ResNet-20).
    model.optimizer.build(model.trainable_variables)
    return model


def build_callbacks(config, data, model, path=None):
    """The averaging callbacks, in the order their logs must be produced.

    `path`: the run directory, where `--post-hoc-ema` snapshots go (none without it).
    """
    averaging = {}
    if config.ema_decays:
        averaging["ema"] = MultiEMA(
            decays=config.ema_decays,
            every_steps=config.ema_every_steps,
            warmup=config.ema_warmup,
            batch_scale=ema_batch_scale(config),
            bn_mode=config.ema_bn_mode,
            validation_data=data.validation,
            select_epochs=_select_epochs(config),
            evaluate_every_epoch=config.ema_evaluate == "every-epoch",
            verbose=1 if sys.stdout.isatty() else 0,  # live evaluation progress
        )
        if config.bn_recompute != "none" and recomputed_layers(model):
            averaging["bn"] = BatchNormRecompute(
                averaging["ema"],
                train_data=data.train_one_pass,
                validation_data=data.validation,
                every_epoch=config.bn_recompute == "epoch",
                at_end=True,
                verbose=1,  # a line per selected EMA: minutes after the last epoch line otherwise
            )
    if config.post_hoc_ema:
        snapshots = dict(  # no run directory (a tuning trial): no snapshots
            snapshot_every_steps=snapshot_every_steps(config, data.steps_per_epoch),
            directory=os.path.join(path, run_dir.POWER_EMA_DIR),
            snapshot_dtype=config.post_hoc_snapshot_dtype,
        ) if path else {}
        averaging["power_ema"] = PowerFunctionEMA(sigma_rels=config.post_hoc_sigma_rels, **snapshots)
    if config.track_stability:
        averaging["stability"] = PredictionStability(
            validation_data=data.validation, ema=averaging.get("ema")
        )
    return averaging


def fit_callbacks(config, averaging, timer, logger, after_averages=()):
    """The callbacks of one training `fit` (an `app.train` run or a tuning trial), in their order.

    The timer first (it marks where each epoch's evaluation starts), then the
    guard: a diverged step must never reach an average or a checkpoint, so the
    weights are checked on every step an average takes them in (the power EMAs:
    every step). Each average (`build_callbacks`) swaps its averages back out
    before the next callback; `after_averages` see the trained weights, then
    the `logger` (None: none) writes the epoch's row, and the bootstrap copies
    the slowest EMA into the model last.
    """
    guard_every = 1 if "power_ema" in averaging else config.ema_every_steps
    callbacks = [timer, DivergenceGuard(weights_every_steps=guard_every), *averaging.values(), *after_averages]
    callbacks += [logger] if logger is not None else []
    if config.bootstrap_every_epochs:
        callbacks.append(EMABootstrap(averaging["ema"], every_epochs=config.bootstrap_every_epochs))
    return callbacks


def snapshot_every_steps(config, steps_per_epoch):
    """`--post-hoc-snapshot-every-steps`, by default one epoch."""
    return config.post_hoc_snapshot_every_steps or steps_per_epoch


def _select_epochs(config):
    """MultiEMA's fixed selections (0-based epochs) from the config's 1-based ones."""
    if config.ema_select_epochs is None:
        return None
    return {
        float(decay): {criterion: epoch - 1 for criterion, epoch in epochs.items()}
        for decay, epochs in config.ema_select_epochs.items()
    }


def enable_determinism():
    """Deterministic kernels (TensorFlow backend; JAX on CPU is deterministic already)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
