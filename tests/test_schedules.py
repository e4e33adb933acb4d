"""Learning-rate schedules against their closed forms, written independently."""

import math

import keras
import numpy as np
import pytest

from training.schedules import TrainingSchedule

STEPS_PER_EPOCH = 10
EPOCHS = 20


def closed_form(name, step, lr=0.1, warmup_epochs=0):
    total = STEPS_PER_EPOCH * EPOCHS
    warmup = STEPS_PER_EPOCH * warmup_epochs
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min((step - warmup) / (total - warmup), 1.0)
    epoch = step // STEPS_PER_EPOCH
    if name == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * t))
    if name == "linear":
        return lr * (1 - t)
    if name == "constant":
        return lr
    if name == "multistep":  # He et al.: /10 at epochs 90 and 135 of 180
        return lr * (0.1 ** ((epoch >= EPOCHS * 90 / 180) + (epoch >= EPOCHS * 135 / 180)))
    if name == "step":  # Adda et al.: x0.97 every 2 epochs
        return lr * 0.97 ** ((step - warmup) // (2 * STEPS_PER_EPOCH))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "multistep", "step"])
@pytest.mark.parametrize("warmup_epochs", [0, 5])
def test_schedule_matches_closed_form(name, warmup_epochs):
    schedule = TrainingSchedule(name, 0.1, STEPS_PER_EPOCH, EPOCHS, warmup_epochs=warmup_epochs)
    steps = np.arange(0, STEPS_PER_EPOCH * EPOCHS + 1)
    got = [float(keras.ops.convert_to_numpy(schedule(int(s)))) for s in steps]
    want = [closed_form(name, int(s), warmup_epochs=warmup_epochs) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_cosine_warmup_peaks_then_reaches_zero():
    schedule = TrainingSchedule("cosine", 0.4, STEPS_PER_EPOCH, EPOCHS, warmup_epochs=5)
    values = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(STEPS_PER_EPOCH * EPOCHS)]
    assert values[0] == pytest.approx(0.4 / 50)
    assert max(values) == pytest.approx(0.4)
    assert values[-1] < 1e-4


def test_serializes():
    schedule = TrainingSchedule("step", 0.1, STEPS_PER_EPOCH, EPOCHS, warmup_epochs=1)
    clone = TrainingSchedule.from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    # The clone is the same function of the step, checked against the closed form.
    for step in range(0, STEPS_PER_EPOCH * EPOCHS, 3):
        got = float(keras.ops.convert_to_numpy(clone(step)))
        assert got == float(keras.ops.convert_to_numpy(schedule(step)))
        assert got == pytest.approx(closed_form("step", step, lr=0.1, warmup_epochs=1), rel=1e-5, abs=1e-7)
