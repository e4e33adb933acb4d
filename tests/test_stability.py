"""`PredictionStability` against NumPy recomputation from predictions and weights recorded independently."""

import copy

import keras
import numpy as np
import pytest

from callbacks.ema import MultiEMA
from callbacks.stability import PredictionStability

DECAYS = (0.5, 0.9)
EPOCHS = 3
rng = np.random.default_rng(0)
X_TRAIN = rng.normal(size=(96, 5)).astype("float32")
Y_TRAIN = rng.integers(0, 3, size=96).astype("int32")
X_VAL = rng.normal(size=(40, 5)).astype("float32")
Y_VAL = rng.integers(0, 3, size=40).astype("int32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


class Recorder(keras.callbacks.Callback):
    """Placed after PredictionStability: the logs it wrote, and predictions/weights of every model."""

    def __init__(self, ema):
        super().__init__()
        self.ema, self.logs, self.correct, self.weights = ema, [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        model = self.model
        correct = {"sgd": np.argmax(model.predict(X_VAL, verbose=0), 1) == Y_VAL}
        weights = {"sgd": [np.array(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]}
        for decay in DECAYS:
            with self.ema.swapped_in(decay):
                correct[decay] = np.argmax(model.predict(X_VAL, verbose=0), 1) == Y_VAL
                weights[decay] = [np.array(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]
        self.correct.append(correct)
        self.weights.append(weights)


def _fit(model, callbacks, epochs, initial_epoch=0):
    model.fit(X_TRAIN, Y_TRAIN, batch_size=16, epochs=epochs, initial_epoch=initial_epoch,
              shuffle=False, verbose=0, callbacks=callbacks)


class _Batches(keras.utils.PyDataset):
    """The validation data as a dataset of 5 batches."""

    def __len__(self):
        return 5

    def __getitem__(self, index):
        return X_VAL[index * 8:(index + 1) * 8], Y_VAL[index * 8:(index + 1) * 8]


def _logs_copy(into):
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: into.append(dict(logs)))


@pytest.fixture(scope="module")
def recorded():
    """One fit measured twice, from arrays and from a dataset; the second's logs reach the Recorder."""
    model = _model()
    ema = MultiEMA(decays=DECAYS, every_steps=1, validation_data=(X_VAL, Y_VAL))
    from_arrays = []
    recorder = Recorder(ema)
    callbacks = [ema, PredictionStability((X_VAL, Y_VAL), ema=ema, batch_size=8), _logs_copy(from_arrays),
                 PredictionStability(_Batches(), ema=ema), recorder]
    _fit(model, callbacks, EPOCHS)
    return model, from_arrays, recorder


def test_logs_equal_numpy_recomputation(recorded):
    _, _, recorder = recorded
    first = recorder.logs[0]
    assert np.isnan(first["prediction_stability"])
    assert all(np.isnan(first[f"ema_{d:g}_prediction_stability"]) for d in DECAYS)
    for epoch in range(1, EPOCHS):
        logs, before, now = recorder.logs[epoch], recorder.correct[epoch - 1], recorder.correct[epoch]
        assert logs["prediction_stability"] == np.mean(before["sgd"] == now["sgd"])
        for decay in DECAYS:
            assert logs[f"ema_{decay:g}_prediction_stability"] == np.mean(before[decay] == now[decay])
    values = [logs["prediction_stability"] for logs in recorder.logs[1:]]
    assert min(values) < 1.0  # predictions did move: the comparison is not vacuous
    for logs, weights in zip(recorder.logs, recorder.weights):
        sgd = np.concatenate([w.ravel() for w in weights["sgd"]]).astype(np.float64)
        for decay in DECAYS:
            ema = np.concatenate([w.ravel() for w in weights[decay]]).astype(np.float64)
            expected = np.linalg.norm(ema - sgd) / np.linalg.norm(sgd)
            assert expected > 0
            assert logs[f"ema_{decay:g}_weight_distance"] == pytest.approx(expected, rel=1e-5)


def test_dataset_validation_data_gives_the_same_logs(recorded):
    _, from_arrays, recorder = recorded
    keys = [k for k in from_arrays[1] if "stability" in k or "distance" in k]
    assert len(keys) == 5
    for arrays_logs, dataset_logs in zip(from_arrays[1:], recorder.logs[1:]):
        for key in keys:
            assert dataset_logs[key] == pytest.approx(arrays_logs[key], rel=1e-6)


def test_training_is_untouched_by_the_callback(recorded):
    measured, _, _ = recorded
    model = _model()
    _fit(model, [MultiEMA(decays=DECAYS, every_steps=1, validation_data=(X_VAL, Y_VAL))], EPOCHS)
    for a, b in zip(measured.weights, model.weights):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_state_carries_the_previous_epoch_across_a_resume():
    model = _model()
    ema = MultiEMA(decays=DECAYS, every_steps=1, validation_data=(X_VAL, Y_VAL))
    stability = PredictionStability((X_VAL, Y_VAL), ema=ema)
    recorder = Recorder(ema)
    _fit(model, [ema, stability, recorder], epochs=1)
    state, ema_state = stability.get_state(), ema.get_state()
    assert set(state) == {"sgd", "ema_0.5", "ema_0.9"} and state["sgd"].dtype == bool
    np.testing.assert_array_equal(state["sgd"], recorder.correct[-1]["sgd"])
    resumed_ema = MultiEMA(decays=DECAYS, every_steps=1, validation_data=(X_VAL, Y_VAL))
    resumed_ema.set_state(ema_state)
    resumed = PredictionStability((X_VAL, Y_VAL), ema=resumed_ema)
    resumed.set_state(state)
    assert set(resumed.get_state()) == set(state)  # before the fit: the restored state
    recorder_after = Recorder(resumed_ema)
    _fit(model, [resumed_ema, resumed, recorder_after], epochs=2, initial_epoch=1)
    expected = np.mean(recorder.correct[-1]["sgd"] == recorder_after.correct[0]["sgd"])
    assert recorder_after.logs[0]["prediction_stability"] == expected
    # A later fit without a restored state starts afresh (train begin resets).
    again = Recorder(resumed_ema)
    _fit(model, [resumed_ema, resumed, again], epochs=3, initial_epoch=2)
    assert np.isnan(again.logs[0]["prediction_stability"])


def test_without_ema_only_sgd_is_logged():
    model = _model()
    recorder, correct = [], []
    predictions = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: correct.append(
        np.argmax(model.predict(X_VAL, verbose=0), 1) == Y_VAL))
    _fit(model, [PredictionStability((X_VAL, Y_VAL)), _logs_copy(recorder), predictions], 2)
    assert [k for k in recorder[1] if "stability" in k or "distance" in k] == ["prediction_stability"]
    assert recorder[1]["prediction_stability"] == np.mean(correct[0] == correct[1])


def test_deepcopy_keeps_the_pairing_with_the_copied_ema():
    ema = MultiEMA(decays=DECAYS)
    stability = PredictionStability((X_VAL, Y_VAL), ema=ema, batch_size=4)
    ema_copy, stability_copy = copy.deepcopy([ema, stability])
    assert stability_copy.ema is ema_copy and ema_copy is not ema
    assert stability_copy.validation_data is stability.validation_data and stability_copy.batch_size == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(validation_data=(X_VAL, Y_VAL), ema="ema"), "argument `ema`"),
        (dict(validation_data=(X_VAL, Y_VAL), batch_size=0), "argument `batch_size`"),
        (dict(validation_data=(X_VAL,)), "argument `validation_data`"),
        (dict(validation_data=None), "argument `validation_data`"),
        (dict(validation_data=(X_VAL, np.eye(3)[Y_VAL])), "class labels"),
        # The fractions count every example once: sample weights would be ignored.
        (dict(validation_data=(X_VAL, Y_VAL, np.ones(len(Y_VAL)))), r"Received an \(x, y, sample_weight\) tuple"),
    ],
)
def test_invalid_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PredictionStability(**kwargs)
