"""Learning-rate schedules, evaluated per optimizer step.

- `cosine`: linear warm-up for `warmup_epochs`, then cosine annealing to 0
  (Morales-Brotons et al. §4.1: 5 warm-up epochs).
- `constant`, `multistep` (/10 at 50 % and 75 % of the budget: He et al.'s
  epochs 90 and 135 of 180), `step` (x0.97 every 2 epochs), `linear` (to 0):
  the five schedules of Adda et al. (App. A); they use no warm-up by default.

Every schedule is one `LearningRateSchedule` written with `keras.ops`, so the
same object runs inside the compiled train step on every backend and is
saved with the optimizer.
"""

import math

import keras
from keras import ops

from training.config import whole_if_integral

MULTISTEP_MILESTONES = (0.5, 0.75)  # fractions of the budget, Adda et al. App. A
MULTISTEP_FACTOR = 0.1
STEP_FACTOR = 0.97  # Adda et al. App. A: x0.97 every 2 epochs
STEP_EVERY_EPOCHS = 2


@keras.saving.register_keras_serializable(package="weight_averaging")
class TrainingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at optimizer step `step` (0-based) for a named schedule.

    Args:
        name: one of "cosine", "constant", "multistep", "step", "linear".
        initial_lr: peak learning rate (after warm-up).
        steps_per_epoch: optimizer steps per epoch.
        epochs: the training budget in epochs.
        warmup_epochs: linear warm-up length in epochs, possibly fractional
            (`warmup_steps` = its steps, rounded); step `s < warmup_steps`
            gets `initial_lr * (s + 1) / warmup_steps`. Defaults to 0.
    """

    def __init__(self, name, initial_lr, steps_per_epoch, epochs, warmup_epochs=0):
        self.name = name
        self.initial_lr = float(initial_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = whole_if_integral(warmup_epochs)

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self):
        return round(self.steps_per_epoch * self.warmup_epochs)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        after = ops.maximum(step - warmup, 0.0)
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.minimum(after / span, 1.0)
        if self.name == "cosine":
            value = 0.5 * self.initial_lr * (1.0 + ops.cos(math.pi * progress))
        elif self.name == "linear":
            value = self.initial_lr * (1.0 - progress)
        elif self.name == "multistep":
            value = ops.convert_to_tensor(self.initial_lr, "float32")
            for milestone in MULTISTEP_MILESTONES:
                boundary = float(round(milestone * self.epochs) * self.steps_per_epoch)
                value = ops.where(step >= boundary, value * MULTISTEP_FACTOR, value)
        elif self.name == "step":
            period = float(STEP_EVERY_EPOCHS * self.steps_per_epoch)
            value = self.initial_lr * ops.power(STEP_FACTOR, ops.floor(after / period))
        elif self.name == "constant":
            value = ops.convert_to_tensor(self.initial_lr, "float32") + 0.0 * step
        else:
            raise ValueError(f"Unknown schedule {self.name!r}")
        if self.warmup_steps:
            ramp = self.initial_lr * (step + 1.0) / warmup
            value = ops.where(step < warmup, ramp, value)
        return value

    def get_config(self):
        return {
            "name": self.name,
            "initial_lr": self.initial_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
        }
