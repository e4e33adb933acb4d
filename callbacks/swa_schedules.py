"""A conventional learning-rate schedule, then the SWA learning rate (SWA paper §4.1)."""

import keras
from keras import ops

from callbacks import arguments
from callbacks.swa_cyclic_schedule import cyclic_rate


@keras.saving.register_keras_serializable(package="weight_averaging")
class SWASchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A conventional schedule until `start_step`, then the SWA learning rate.

    From `start_step` (0-based optimizer step) on the rate is `swa_lr`, or,
    with `cycle_steps`, the §3.1 cyclic rate from `alpha_1 =
    base_schedule(start_step)` down to `alpha_2 = swa_lr`, cycles counted from
    `start_step` (so they end with the epochs where `SWA` captures when
    `cycle_steps = cycle_epochs * steps_per_epoch` and `start_step =
    start_epoch * steps_per_epoch`).

    Example:

    ```python
    # SWA paper §4.1: conventional training for 75% of the budget.
    schedule = SWASchedule(base, start_step=int(0.75 * epochs) * steps, swa_lr=0.05)
    ```

    Args:
        base_schedule: a `LearningRateSchedule` or a float.
        start_step: first optimizer step of the SWA phase.
        swa_lr: the constant SWA learning rate (`alpha_2` when cyclic).
        cycle_steps: cycle length in optimizer steps for a cyclic rate.
            Defaults to `None` (constant `swa_lr`).
    """

    def __init__(self, base_schedule, start_step, swa_lr, cycle_steps=None):
        if not (callable(base_schedule) or isinstance(base_schedule, (int, float))):
            raise ValueError(
                "Invalid value for argument `base_schedule`. Received: "
                f"base_schedule={base_schedule!r}. Expected a LearningRateSchedule "
                "or a float."
            )
        arguments.checked_int("start_step", start_step, minimum=0)
        arguments.checked_rates(swa_lr, swa_lr, name="swa_lr")
        if cycle_steps is not None:
            arguments.checked_int("cycle_steps", cycle_steps, minimum=1)
        self.base_schedule = base_schedule
        self.start_step = start_step
        self.swa_lr = float(swa_lr)
        self.cycle_steps = cycle_steps

    def __call__(self, step):
        step = ops.cast(step, "int32")
        base = self._base(step)
        if self.cycle_steps is None:
            swa = ops.full_like(base, self.swa_lr)
        else:
            alpha_1 = self._base(ops.convert_to_tensor(self.start_step, "int32"))
            swa = cyclic_rate(step - self.start_step, alpha_1, self.swa_lr, self.cycle_steps)
        return ops.where(step < self.start_step, base, swa)

    def _base(self, step):
        if callable(self.base_schedule):
            return ops.cast(self.base_schedule(step), "float32")
        return ops.full((), self.base_schedule, "float32")

    def get_config(self):
        base = self.base_schedule
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {
            "base_schedule": base,
            "start_step": self.start_step,
            "swa_lr": self.swa_lr,
            "cycle_steps": self.cycle_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["base_schedule"], dict):
            config["base_schedule"] = keras.optimizers.schedules.deserialize(
                config["base_schedule"]
            )
        return cls(**config)


def swa_schedule(base_schedule, start_step, swa_lr, cycle_steps=None):
    """`SWASchedule(...)`: `base_schedule` until `start_step`, then `swa_lr`
    (constant, or cyclic from the base rate at `start_step` with `cycle_steps`)."""
    return SWASchedule(base_schedule, start_step, swa_lr, cycle_steps=cycle_steps)
