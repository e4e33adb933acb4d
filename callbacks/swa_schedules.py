"""SWA's learning rates: the cyclic rate (SWA paper §3.1) and a conventional
schedule followed by the SWA rate (§4.1)."""

import keras
from keras import ops

from callbacks import arguments


@keras.saving.register_keras_serializable(package="weight_averaging")
class SWACyclicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The SWA paper's cyclic learning rate (§3.1).

    `alpha(i) = (1 - t(i)) * alpha_1 + t(i) * alpha_2` with
    `t(i) = (mod(i - 1, c) + 1) / c` for the 1-based iteration `i`; Keras
    passes the 0-based optimizer step, so `i = step + 1`. Within each cycle
    of `c` steps the rate falls linearly to `alpha_2`, reached at the last
    step of the cycle, then jumps back up. `alpha_1 == alpha_2` gives the
    constant SWA learning rate.

    Example:

    ```python
    schedule = SWACyclicSchedule(0.05, 0.001, cycle_steps=3 * steps_per_epoch)
    ```

    Args:
        alpha_1: the largest learning rate (start of a cycle).
        alpha_2: the smallest learning rate (end of a cycle), `<= alpha_1`.
        cycle_steps: the cycle length `c` in optimizer steps.
    """

    def __init__(self, alpha_1, alpha_2, cycle_steps):
        arguments.checked_rates(alpha_1, alpha_2)
        arguments.checked_int("cycle_steps", cycle_steps, minimum=1)
        self.alpha_1 = float(alpha_1)
        self.alpha_2 = float(alpha_2)
        self.cycle_steps = cycle_steps

    def __call__(self, step):
        return cyclic_rate(step, self.alpha_1, self.alpha_2, self.cycle_steps)

    def get_config(self):
        return {"alpha_1": self.alpha_1, "alpha_2": self.alpha_2, "cycle_steps": self.cycle_steps}


def cyclic_rate(step, alpha_1, alpha_2, cycle_steps):
    """alpha(i) for the 0-based `step` (i = step + 1), as a float32 tensor."""
    # SWA paper §3.1 with i = step + 1: t = (mod(i - 1, c) + 1) / c, written
    # as alpha_2 + (1 - t) (alpha_1 - alpha_2) with 1 - t = (c - 1 - mod) / c,
    # which is exactly 0 at a cycle's end (t = c / c can round below 1 in XLA).
    position = ops.mod(ops.cast(step, "int32"), cycle_steps)
    remaining = ops.cast(cycle_steps - 1 - position, "float32") / float(cycle_steps)
    return alpha_2 + remaining * (alpha_1 - alpha_2)


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
