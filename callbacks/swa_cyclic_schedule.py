"""The SWA paper's cyclic learning rate (Izmailov et al. 2018, §3.1)."""

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
