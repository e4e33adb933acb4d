"""The EMA decay warm-up min(α, (t+1)/(t+10)) (paper §4.1) and what it implies.

`t` counts, by `warmup` mode: the optimizer steps (`"steps"`: paper Eq. (1)
indexes SGD iterates, as ema-pytorch and timm count), the EMA updates
(`"updates"`, one per `every_steps`: this project's behaviour before it
followed the paper), or nothing (`"none"`: no warm-up, Adda et al.). While a
decay is above (t+1)/(t+10) the warm-up holds it back, so all such decays
apply the same factor and hold the same average (`regroup`). Plain NumPy:
the update itself is compiled in callbacks/ema.py.
"""

import numpy as np

from callbacks.arguments import invalid

WARMUP_MODES = ("steps", "updates", "none")


def checked_warmup(warmup):
    """A `WARMUP_MODES` value; `True` means `"steps"`, `False`/`None` `"none"`."""
    if warmup is True:
        return "steps"
    if warmup is False or warmup is None:
        return "none"
    if warmup not in WARMUP_MODES:
        raise invalid("warmup", warmup, f"one of {WARMUP_MODES} (or a bool)")
    return warmup


def decays_at(decays, warmup, step, every_steps, num_updates=None, batch_scale=1.0):
    """The decays `a_t` (float64) of an update made after optimizer step `step`.

    `step` counts optimizer steps from 1; `num_updates` (the updates made
    before this one) matters only with `warmup="updates"` and defaults to
    `step // every_steps - 1`.

    `batch_scale` = B / B_ref applies the EMA scaling rule of Busbridge et al.
    (2023, "How to Scale Your EMA"): decays given for the reference batch
    B_ref act as `a ** (B / B_ref)` at batch B, and the warm-up counts `t` in
    reference-batch steps, `t_ref + 1 = (t + 1) * B / B_ref` (the same number
    of examples seen), so the scaled average follows the reference one.
    """
    decays = np.asarray(decays, dtype="float64")
    if warmup == "none":
        return decays**batch_scale
    if warmup == "steps":
        t = step - 1  # the iterate's index t, paper Eq. (1)
    else:
        t = step // every_steps - 1 if num_updates is None else num_updates
    t = (t + 1) * batch_scale - 1  # in reference-batch steps
    # decay warm-up min(α, (t+1)/(t+10)), paper §4.1
    return np.minimum(decays, (t + 1) / (t + 10)) ** batch_scale


def warmup_release_step(decay):
    """The first optimizer step index `t` at which `(t+1)/(t+10) >= decay`.

    From there on the warm-up no longer holds `decay` back (`warmup="steps"`):
    0.968 -> 272, 0.984 -> 553, 0.992 -> 1115, 0.996 -> 2240, 0.998 -> 4490.
    """
    # Exact in rationals: t >= (10a - 1) / (1 - a); a small tolerance absorbs
    # the binary representation of a decimal decay.
    return max(0, int(np.ceil((10.0 * decay - 1.0) / (1.0 - decay) - 1e-9)))


def warmup_released_after(decay, every_steps=1, warmup="steps", batch_scale=1.0):
    """The optimizer step (counted from 1) from which the warm-up no longer
    holds `decay` back: 0 without warm-up; with `warmup="updates"` a whole
    number of update periods of `every_steps`; with `batch_scale` the warm-up
    counts reference-batch steps (`decays_at`)."""
    warmup = checked_warmup(warmup)
    if warmup == "none":
        return 0
    # t_ref + 1 = (t + 1) * batch_scale must reach the reference release index + 1.
    released = int(np.ceil((warmup_release_step(decay) + 1) / batch_scale - 1e-9))
    return released if warmup == "steps" else released * every_steps


def regroup(labels, factors):
    """Labels of the averages that are still bitwise equal after one update.

    `labels[i]` names the average decay `i` held before the update and
    `factors[i]` the factor it received: averages stay identical exactly
    while they receive identical factors.
    """
    keys = list(zip(labels, factors))
    return [sorted(set(keys)).index(key) for key in keys]
