"""SGD's own early stopping (training/sgd_selection.py) against the weights recorded at every epoch end."""

import numpy as np
import pytest

import keras

from training.sgd_selection import KeepSGDEpoch


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights, self.val_accuracy = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([np.array(w) for w in self.model.get_weights()])
        self.val_accuracy.append(logs["val_accuracy"])


def _fit(callbacks, epochs=8):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype("float32")
    y = (x[:, 0] + 0.5 * rng.standard_normal(96) > 0).astype("int32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:64], y[:64], validation_data=(x[64:], y[64:]), epochs=epochs, batch_size=16, verbose=0,
              callbacks=callbacks)
    return model


def _saved(model, path):
    model.load_weights(path)
    return model.get_weights()


def test_keeps_the_first_epoch_of_best_validation_accuracy(tmp_path):
    path = str(tmp_path / "sgd_early.weights.h5")
    recorder = _Recorder()
    model = _fit([KeepSGDEpoch(path), recorder])
    best = int(np.argmax(recorder.val_accuracy))  # the first of equal values
    assert best != len(recorder.val_accuracy) - 1  # else the kept weights would be the final ones
    for saved, expected in zip(_saved(model, path), recorder.weights[best]):
        np.testing.assert_array_equal(saved, expected)
    assert not list(tmp_path.glob(".partial-*"))  # written through a temporary file, renamed


def test_keeps_a_fixed_epoch(tmp_path):
    path = str(tmp_path / "sgd_early.weights.h5")
    recorder = _Recorder()
    model = _fit([KeepSGDEpoch(path, epoch=2), recorder])
    for saved, expected in zip(_saved(model, path), recorder.weights[2]):
        np.testing.assert_array_equal(saved, expected)


def test_creates_a_weights_folder_that_is_gone(tmp_path):
    # A parked run directory committed to git comes back without its empty weights/ (seen on a resumed run).
    path = tmp_path / "weights" / "sgd_early.weights.h5"
    recorder = _Recorder()
    model = _fit([KeepSGDEpoch(str(path), epoch=2), recorder])
    for saved, expected in zip(_saved(model, str(path)), recorder.weights[2]):
        np.testing.assert_array_equal(saved, expected)


def test_a_resumed_run_does_not_replace_a_better_earlier_epoch(tmp_path):
    path = tmp_path / "sgd_early.weights.h5"
    _fit([KeepSGDEpoch(str(path), best_so_far=1.1)])  # no epoch can beat an accuracy above 1
    assert not path.exists()


def test_the_file_must_be_a_weights_file():
    with pytest.raises(ValueError, match=r"Received: path='best.h5'"):
        KeepSGDEpoch("best.h5")
