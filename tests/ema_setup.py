"""What the MultiEMA tests share: tiny data and model, recorders, a training
run, and the NumPy re-derivation of an EMA from a recorded weight trajectory.
"""

import os
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks.ema import MultiEMA  # noqa: E402

NUM_FEATURES = 4
NUM_CLASSES = 3
BATCH_SIZE = 8
STEPS_PER_EPOCH = 5
EPOCHS = 3
EVERY_STEPS = 3
DECAYS = (0.15, 0.3, 0.968)  # 0.15 < the warm-up value from t=1 on


def make_data(seed, size):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, NUM_FEATURES)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(size,)).astype("int32")
    return x, y


TRAIN = make_data(0, BATCH_SIZE * STEPS_PER_EPOCH)
FIT_VALIDATION = make_data(1, 12)
EMA_VALIDATION = make_data(2, 10)  # not fit's: evaluate(x, y) must read it


def build_model(seed=0):
    """Dense -> BatchNorm -> Dropout -> Dense, after a frozen Dense whose
    non-trainable float weights must never be averaged."""
    keras.utils.set_random_seed(seed)
    frozen = keras.layers.Dense(NUM_FEATURES, name="frozen")
    frozen.trainable = False
    inputs = keras.Input((NUM_FEATURES,))
    h = frozen(inputs)
    h = keras.layers.Dense(8, name="hidden")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")(
        h
    )
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.2, seed=1)(h)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class Recorder(keras.callbacks.Callback):
    """Placed before MultiEMA: the weights after every step and epoch."""

    def on_train_begin(self, logs=None):
        self.steps = [self.model.get_weights()]
        self.epoch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(self.model.get_weights())


class AfterEMA(keras.callbacks.Callback):
    """Placed after MultiEMA: the logs it sees, the trained weights, and each
    EMA's weights (through the public `swapped_in`)."""

    def __init__(self, ema):
        super().__init__()
        self.ema = ema
        self.logs, self.weights, self.ema_weights = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.weights.append(self.model.get_weights())
        ema_weights = {}
        for decay in self.ema.decays:
            with self.ema.swapped_in(decay) as model:
                ema_weights[decay] = model.get_weights()
        self.ema_weights.append(ema_weights)


def train(tmp_path, epochs=EPOCHS, **ema_kwargs):
    model = build_model()
    ema = MultiEMA(
        decays=DECAYS,
        every_steps=EVERY_STEPS,
        validation_data=EMA_VALIDATION,
        **ema_kwargs,
    )
    recorder, after = Recorder(), AfterEMA(ema)
    csv_path = str(tmp_path / "log.csv")
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="ema_best_val_accuracy", mode="max", patience=100
    )
    history = model.fit(
        *TRAIN,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=FIT_VALIDATION,
        shuffle=False,
        verbose=0,
        callbacks=[
            recorder,
            ema,
            after,
            keras.callbacks.CSVLogger(csv_path),
            early_stopping,
        ],
    )
    return types.SimpleNamespace(
        model=model,
        ema=ema,
        recorder=recorder,
        after=after,
        history=history.history,
        csv_path=csv_path,
        early_stopping=early_stopping,
    )


@pytest.fixture(scope="module")
def eman_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("eman"))


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("copy"), bn_mode="copy", warmup="none")


@pytest.fixture(scope="module")
def updates_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("updates"), warmup="updates")


def averaged_mask(model, bn_mode):
    """Per entry of `model.weights`: averaged by the paper's rule or not."""
    averaged = {id(v) for v in model.trainable_weights}
    if bn_mode == "eman":
        bn = model.get_layer("bn")
        averaged |= {id(bn.moving_mean), id(bn.moving_variance)}
    return [id(v) in averaged for v in model.weights]


def warmed_decay(decay, warmup, step, update_index):
    """Paper §4.1: min(α, (t+1)/(t+10)), t = the SGD iterate's index (step - 1)."""
    t = {"steps": step - 1, "updates": update_index}.get(warmup)
    return decay if t is None else min(decay, (t + 1) / (t + 10))


def expected_ema_weights(trajectory, decay, warmup, mask, steps):
    """NumPy re-derivation of an EMA after `steps` steps (float64)."""
    average = [w.astype("float64") for w in trajectory[0]]  # x0_EMA = x0
    update_index = 0
    for step in range(1, steps + 1):
        if step % EVERY_STEPS:
            continue
        a = warmed_decay(decay, warmup, step, update_index)
        weights = trajectory[step]
        average = [a * m + (1 - a) * w for m, w in zip(average, weights)]
        update_index += 1
    current = trajectory[steps]
    return [m if keep else w for m, w, keep in zip(average, current, mask)]


def numpy_evaluation(weights, data):
    """Loss and accuracy of `weights` in a separately built model."""
    model = build_model(seed=123)
    model.set_weights(weights)
    x, y = data
    probabilities = model.predict(x, verbose=0).astype("float64")
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1 - 1e-7)
    loss = -np.mean(np.log(picked))
    accuracy = np.mean(np.argmax(probabilities, axis=1) == y)
    return loss, accuracy
