"""Every public callback's state through a checkpoint round trip (training/checkpoint.py).

One tiny training, three ways: 3 epochs straight; 2 epochs, a checkpoint
(model, optimizer and every callback's `get_state()`), then fresh objects
restored from the file that train epoch 3; and the straight run's final
checkpoint restored into a fit with no epoch left (a resumed run that had
trained them all, whose fixed EMA selection was its last epoch). The resumed
callbacks must end where the straight ones did, and the state read back from
the file must be the state that was saved. Every stateful callback speaks the
one protocol of callbacks/state.py (a flat mapping of NumPy arrays in and
out, restored at the next train begin), and the states of the previous
checkpoint format still resume.

TensorFlow by default; also runs under KERAS_BACKEND=jax (NumPy data only).
"""

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks import (  # noqa: E402
    SWA, BatchNormRecompute, MultiEMA, PowerFunctionEMA, PredictionStability,
)
from training import checkpoint  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 3)).astype("float32")
Y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype("int32")
VALIDATION = (RNG.normal(size=(10, 3)).astype("float32"), RNG.integers(0, 2, 10).astype("int32"))
EPOCHS, BATCH = 3, 8  # 3 steps per epoch
NAMES = ("MultiEMA", "MultiEMA, select_epochs", "SWA", "PowerFunctionEMA", "PredictionStability",
         "BatchNormRecompute")
STATEFUL = [name for name in NAMES if name != "BatchNormRecompute"]


def build_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization(momentum=0.9)(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.ReLU()(hidden)))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def build_callbacks():
    ema = MultiEMA(decays=(0.5, 0.9), every_steps=2, validation_data=VALIDATION)
    last = EPOCHS - 1  # the selection fixed at the run's last epoch (0-based)
    fixed = MultiEMA(decays=(0.9,), every_steps=1, validation_data=VALIDATION,
                     select_epochs={0.9: {"accuracy": last, "loss": last}})
    return dict(zip(NAMES, (
        ema, fixed,
        SWA(1, train_data=(X, Y), validation_data=VALIDATION, batch_size=BATCH),
        PowerFunctionEMA(sigma_rels=(0.05,)),
        PredictionStability(VALIDATION, ema=ema),
        BatchNormRecompute(ema, (X, Y), VALIDATION, batch_size=BATCH),
    )))


def fit(model, callbacks, initial_epoch, epochs):
    model.fit(X, Y, batch_size=BATCH, initial_epoch=initial_epoch, epochs=epochs, shuffle=False, verbose=0,
              callbacks=list(callbacks.values()))


def states(callbacks):
    return {name: callback.get_state() for name, callback in callbacks.items() if hasattr(callback, "get_state")}


def resume(path, initial_epoch):
    """Fresh model and callbacks restored from the checkpoint in `path`, fitted to the end."""
    _, contents = checkpoint.read(os.path.join(path, checkpoint.LAST))
    model, callbacks = build_model(), build_callbacks()
    checkpoint.restore(model, contents)
    for name, state in contents["states"].items():
        callbacks[name].set_state(state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, callbacks, initial_epoch, EPOCHS)
    return callbacks, contents["states"], [str(w.message) for w in caught if "MultiEMA" in str(w.message)]


class LastEMA(keras.callbacks.Callback):
    """The weights of the fixed-selection EMA at the last epoch's end, through `swapped_in`."""

    def __init__(self, ema):
        super().__init__()
        self.ema = ema

    def on_epoch_end(self, epoch, logs=None):
        with self.ema.swapped_in(0.9):
            self.weights = [np.array(keras.ops.convert_to_numpy(w)) for w in self.model.weights]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    straight = build_callbacks()
    straight["last"] = LastEMA(straight["MultiEMA, select_epochs"])
    model = build_model()
    fit(model, straight, 0, EPOCHS)
    finished = str(tmp_path_factory.mktemp("finished"))
    checkpoint.save(finished, model, states(straight), {"epoch": EPOCHS})

    first = build_callbacks()
    model = build_model()
    # A fit that ends before the fixed epoch says so (the resumed one then selects it).
    with pytest.warns(UserWarning, match=r"fixes epoch 2 \(0-based\).*the fit ended after epoch 1"):
        fit(model, first, 0, 2)
    interrupted = str(tmp_path_factory.mktemp("interrupted"))
    saved = states(first)
    checkpoint.save(interrupted, model, saved, {"epoch": 2})
    return {"straight": straight, "saved": saved,
            "resumed": resume(interrupted, 2), "nothing left": resume(finished, EPOCHS)}


def assert_same(got, want, path="state"):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for index, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}/{index}")
    elif want is None or isinstance(want, (bool, str)):
        assert got == want, path
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=path)


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_callback_ends_where_the_uninterrupted_one_does(runs, name):
    straight = runs["straight"][name]
    for how in ("resumed", "nothing left"):
        callbacks, _, multi_ema_warnings = runs[how]
        resumed = callbacks[name]
        if hasattr(straight, "get_state"):
            assert_same(resumed.get_state(), straight.get_state())
        if hasattr(straight, "summary"):
            assert resumed.summary() == straight.summary(), how
        assert multi_ema_warnings == [], how  # the selection at the last epoch was made and kept


@pytest.mark.parametrize("name", STATEFUL)
def test_the_state_read_from_the_checkpoint_is_the_state_saved(runs, name):
    _, read_back, _ = runs["resumed"]
    assert_same(read_back[name], runs["saved"][name])


@pytest.mark.parametrize("name", STATEFUL)
def test_every_state_is_a_flat_mapping_of_numpy_arrays_kept_until_the_next_train_begin(runs, name):
    """The protocol: `get_state()` is `{str: np.ndarray}`, and `set_state` on a fresh callback
    hands back that very state until a fit begins (then it is that fit's start)."""
    saved = runs["saved"][name]
    assert saved and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in saved.items()), saved
    fresh = build_callbacks()[name]
    fresh.set_state(saved)
    assert_same(fresh.get_state(), saved)


# The previous checkpoint format: SWA's state nested ({"average": [arrays], ...}, Python
# scalars), PowerFunctionEMA's sigma_rels under "decays" beside fixed EMA settings.
OLD_FORMAT = {
    "SWA": lambda state: {
        "average": [state[f"average/{k}"] for k in range(sum(key.startswith("average/") for key in state))],
        "count": int(state["count"]), "start_included": bool(state["start_included"])},
    "PowerFunctionEMA": lambda state: {
        **{key: value for key, value in state.items() if key != "sigma_rels"},
        "decays": state["sigma_rels"], "every_steps": 1, "warmup": "none", "bn_mode": "eman", "batch_scale": 1.0},
}


@pytest.mark.parametrize("name", sorted(OLD_FORMAT))
def test_a_state_of_the_previous_checkpoint_format_resumes(runs, name, tmp_path):
    old = OLD_FORMAT[name](runs["saved"][name])
    checkpoint.save(str(tmp_path), build_model(), {name: old}, {"epoch": 2})
    _, contents = checkpoint.read(os.path.join(str(tmp_path), checkpoint.LAST))
    fresh = build_callbacks()[name]
    fresh.set_state(contents["states"][name])
    assert_same(fresh.get_state(), runs["saved"][name])


def test_the_fixed_selection_at_the_last_epoch_is_that_epochs_ema(runs):
    """The EMA selected at the last epoch is the one after that epoch (recorded by `LastEMA`)."""
    fixed = runs["straight"]["MultiEMA, select_epochs"]
    for criterion in ("accuracy", "loss"):
        assert_same(fixed.selected_weights(0.9, criterion), runs["straight"]["last"].weights)
