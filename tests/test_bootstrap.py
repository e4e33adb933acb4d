"""EMABootstrap (paper App. C) and DivergenceGuard, against recorded weights.

TensorFlow by default; also runs under KERAS_BACKEND=jax (NumPy data only).
"""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks.bootstrap import EMABootstrap  # noqa: E402
from callbacks.divergence import DivergenceGuard, TrainingDiverged  # noqa: E402
from callbacks.ema import MultiEMA  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.integers(0, 3, size=(32,)).astype("int32")


def build_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization(momentum=0.9)(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.ReLU()(hidden)))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class Recorder(keras.callbacks.Callback):
    """Weights at every epoch end, as the callbacks placed before it leave them."""

    def __init__(self, ema=None):
        super().__init__()
        self.ema = ema
        self.trained, self.averaged = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.trained.append([np.array(keras.ops.convert_to_numpy(w)) for w in self.model.weights])
        if self.ema is not None:
            with self.ema.swapped_in(0.9):
                self.averaged.append(
                    [np.array(keras.ops.convert_to_numpy(w)) for w in self.model.weights]
                )


def test_bootstrap_copies_the_ema_into_the_model_every_k_epochs():
    model = build_model()
    ema = MultiEMA(decays=(0.5, 0.9), every_steps=1, validation_data=(X, Y))
    before = Recorder(ema)  # sees the epoch before the copy
    after = Recorder()  # sees what the next epoch starts from
    model.fit(X, Y, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=[ema, before, EMABootstrap(ema, every_epochs=2), after])
    for epoch in range(4):
        expected = before.averaged[epoch] if (epoch + 1) % 2 == 0 else before.trained[epoch]
        for got, want in zip(after.trained[epoch], expected):
            np.testing.assert_array_equal(got, want)
    # Odd epochs: no copy, and the EMA differed from the trained weights.
    assert not all(np.array_equal(a, b) for a, b in zip(before.averaged[0], before.trained[0]))


def test_bootstrap_validates_its_arguments():
    ema = MultiEMA(decays=(0.9,))
    with pytest.raises(ValueError, match=r"every_epochs=0\. Expected an integer >= 1"):
        EMABootstrap(ema, every_epochs=0)
    with pytest.raises(ValueError, match=r"decay=0\.5\. Expected one of \(0\.9,\)"):
        EMABootstrap(ema, every_epochs=1, decay=0.5)


def test_divergence_guard_raises_before_the_averages_see_a_nan_step():
    model = build_model()
    ema = MultiEMA(decays=(0.9,), every_steps=1, validation_data=(X, Y))
    x = X.copy()
    x[16:24] = np.nan  # the third batch of the first epoch
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1, step 3: the training loss is nan"):
        model.fit(x, Y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[DivergenceGuard(weights_every_steps=1), ema])
    state = ema.get_state()
    assert state["num_updates"] == 2  # steps 1 and 2 only
    averages = [value for key, value in state.items() if key.startswith("average/")]
    assert averages and all(np.isfinite(value).all() for value in averages)


def test_divergence_guard_checks_the_weights_where_the_averages_update_with_steps_per_execution():
    """steps_per_execution=3: the hooks see steps 3, 6, 8; with a period of 4 the weights are
    checked after the executions that reach steps 4 and 8 (MultiEMA's update rule), so a
    statistic poisoned at step 6 (the training loss stays finite) stops the fit there."""
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=3,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))

    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:  # the execution of steps 4-6
                self.model  # JAX: sync the weights first
                norm.moving_mean.assign(np.full(norm.moving_mean.shape, np.nan, "float32"))

    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1, step 6: a weight is not finite"):
        model.fit(X, Y, batch_size=4, epochs=1, shuffle=False, verbose=0,
                  callbacks=[Poison(), DivergenceGuard(weights_every_steps=4)])


@pytest.mark.parametrize("value", [0, True, 2.0])
def test_divergence_guard_refuses_a_period_that_is_not_a_count(value):
    with pytest.raises(ValueError, match=re.escape(
            f"Invalid value for argument `weights_every_steps`. Received: weights_every_steps={value!r}. "
            "Expected an integer >= 1.")):
        DivergenceGuard(weights_every_steps=value)
