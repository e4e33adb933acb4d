"""Tests of callbacks/ema.py: every number is compared with a NumPy
re-derivation from a recorded weight trajectory or an independent evaluation.

TensorFlow by default; JAX with `KERAS_BACKEND=jax python -m pytest
tests/test_ema.py` (NumPy data only, TensorFlow is never imported then).
"""

import copy
import csv
import json
import os
import re
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks.ema import DEFAULT_DECAYS, MultiEMA, warmup_release_step, warmup_released_after  # noqa: E402

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


@pytest.mark.parametrize(
    "mode, warmup", [("eman", "steps"), ("copy", "none"), ("eman", "updates")]
)
def test_averages_match_numpy_rederivation(
    mode, warmup, eman_run, copy_run, updates_run
):
    run = {"steps": eman_run, "none": copy_run, "updates": updates_run}[warmup]
    trajectory = run.recorder.steps
    assert len(trajectory) == EPOCHS * STEPS_PER_EPOCH + 1
    mask = averaged_mask(run.model, mode)
    for epoch, ema_weights in enumerate(run.after.ema_weights):
        steps = (epoch + 1) * STEPS_PER_EPOCH
        for decay in DECAYS:
            expected = expected_ema_weights(
                trajectory, decay, warmup, mask, steps
            )
            for got, want, averaged in zip(ema_weights[decay], expected, mask):
                if averaged:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
                else:  # used as trained: exact
                    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["eman", "copy"])
def test_batch_norm_statistics(mode, eman_run, copy_run):
    run = eman_run if mode == "eman" else copy_run
    names = [v.path for v in run.model.weights]
    stats = [i for i, n in enumerate(names) if "moving_" in n]
    assert len(stats) == 2
    final = run.recorder.steps[-1]
    ema = run.after.ema_weights[-1][DECAYS[-1]]
    if mode == "copy":  # the trained model's current statistics
        for i in stats:
            np.testing.assert_array_equal(ema[i], final[i])
        return
    # EMAN: an EMA, same decay and warm-up, of the recorded moving statistics.
    a_values = [
        warmed_decay(DECAYS[-1], "steps", (k + 1) * EVERY_STEPS, k)
        for k in range(5)
    ]
    for i in stats:
        average = run.recorder.steps[0][i].astype("float64")
        for t, a in enumerate(a_values):
            moving = run.recorder.steps[(t + 1) * EVERY_STEPS][i]
            average = a * average + (1 - a) * moving
        np.testing.assert_allclose(ema[i], average, rtol=1e-6)
        assert not np.allclose(ema[i], final[i])


def test_only_trainable_and_batch_norm_variables_are_averaged(
    eman_run, copy_run
):
    for run, mode in ((eman_run, "eman"), (copy_run, "copy")):
        state = run.ema.get_state()
        averages = [v for k, v in state.items() if k.startswith("average/")]
        mask = averaged_mask(run.model, mode)
        averaged = [w for w, keep in zip(run.model.weights, mask) if keep]
        assert [a.shape for a in averages] == [
            (len(DECAYS),) + tuple(w.shape) for w in averaged
        ]
        assert all(a.dtype == np.float32 for a in averages)
        assert state["num_updates"] == EPOCHS * STEPS_PER_EPOCH // EVERY_STEPS


def test_logged_metrics_equal_an_independent_evaluation(eman_run, copy_run):
    for run in (eman_run, copy_run):
        for logs, ema_weights in zip(run.after.logs, run.after.ema_weights):
            accuracies = []
            for decay in DECAYS:
                loss, accuracy = numpy_evaluation(
                    ema_weights[decay], EMA_VALIDATION
                )
                np.testing.assert_allclose(
                    logs[f"ema_{decay:g}_val_loss"], loss, rtol=1e-5
                )
                assert logs[f"ema_{decay:g}_val_accuracy"] == pytest.approx(
                    accuracy
                )
                accuracies.append(accuracy)
            assert logs["ema_best_val_accuracy"] == pytest.approx(
                max(accuracies)
            )


def test_callbacks_after_ema_see_its_metrics(eman_run):
    history = eman_run.history
    assert len(history["ema_0.968_val_loss"]) == EPOCHS
    with open(eman_run.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("ema_0.15_val_accuracy", "ema_0.968_val_loss"):
        assert [float(r[key]) for r in rows] == pytest.approx(history[key])
    best = max(history["ema_best_val_accuracy"])
    assert eman_run.early_stopping.best == pytest.approx(best)


def test_trained_weights_are_bitwise_restored(eman_run):
    run = eman_run
    for before, after in zip(run.recorder.epoch_ends, run.after.weights):
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
    # The averaging never perturbs training: the same fit without MultiEMA.
    baseline = build_model()
    baseline.fit(
        *TRAIN,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        validation_data=FIT_VALIDATION,
        shuffle=False,
        verbose=0,
    )
    for b, a in zip(baseline.get_weights(), run.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_swapped_in_restores_on_exception(eman_run):
    model, ema = eman_run.model, eman_run.ema
    before = model.get_weights()
    with pytest.raises(RuntimeError, match="inside"):
        with ema.swapped_in(0.968):
            inside = model.get_weights()
            raise RuntimeError("inside")
    assert not all(np.array_equal(a, b) for a, b in zip(inside, before))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


# A weights file holds the trained model's optimizer variables too; the fresh
# model that loads it has none yet.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_selection_and_saved_weights(eman_run, tmp_path):
    run = eman_run
    summary = run.ema.summary()
    json.dumps(summary)
    for decay in DECAYS:
        key = f"{decay:g}"
        accuracies = run.history[f"ema_{key}_val_accuracy"]
        losses = run.history[f"ema_{key}_val_loss"]
        for criterion, epoch, name in (
            ("accuracy", int(np.argmax(accuracies)), "best_val_accuracy"),
            ("loss", int(np.argmin(losses)), "lowest_val_loss"),
        ):
            assert summary[key][name] == {
                "epoch": epoch + 1,
                "val_loss": pytest.approx(losses[epoch]),
                "val_accuracy": pytest.approx(accuracies[epoch]),
            }
            selected = run.ema.selected_weights(decay, criterion)
            for got, want in zip(selected, run.after.ema_weights[epoch][decay]):
                np.testing.assert_array_equal(got, want)
        assert summary[key]["effective_per_step_decay"] == pytest.approx(
            decay ** (1 / EVERY_STEPS)
        )
    before = run.model.get_weights()
    paths = run.ema.save_selected(str(tmp_path))
    assert len(paths) == 2 * len(DECAYS)
    for a, b in zip(run.model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    for decay in DECAYS:
        for criterion, suffix in (("accuracy", "acc"), ("loss", "loss")):
            fresh = build_model(seed=7)
            path = tmp_path / f"ema_{decay:g}_{suffix}.weights.h5"
            fresh.load_weights(str(path))
            selected = run.ema.selected_weights(decay, criterion)
            for got, want in zip(fresh.get_weights(), selected):
                np.testing.assert_array_equal(got, want)


def test_fit_validation_data_and_validation_freq():
    model = build_model()
    ema = MultiEMA(decays=(0.5,), every_steps=2)
    model.fit(
        *TRAIN,
        batch_size=BATCH_SIZE,
        epochs=2,
        validation_data=EMA_VALIDATION,
        validation_freq=2,
        shuffle=False,
        verbose=0,
        callbacks=[ema],
    )
    history = model.history.history
    assert len(history["ema_0.5_val_loss"]) == 1  # only where fit validated
    with ema.swapped_in(0.5):
        loss, accuracy = numpy_evaluation(model.get_weights(), EMA_VALIDATION)
    np.testing.assert_allclose(history["ema_0.5_val_loss"][0], loss, rtol=1e-5)
    assert history["ema_0.5_val_accuracy"][0] == pytest.approx(accuracy)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.data needs TensorFlow"
)
def test_dataset_validation_data():
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(EMA_VALIDATION).batch(4)
    model = build_model()
    ema = MultiEMA(decays=(0.5,), every_steps=2, validation_data=dataset)
    history = model.fit(
        *TRAIN, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[ema]
    ).history
    with ema.swapped_in(0.5):
        loss, accuracy = numpy_evaluation(model.get_weights(), EMA_VALIDATION)
    np.testing.assert_allclose(history["ema_0.5_val_loss"][0], loss, rtol=1e-5)
    assert history["ema_0.5_val_accuracy"][0] == pytest.approx(accuracy)


def test_steps_per_execution():
    # Executions of 2 steps end at steps 2, 4, 5: with every_steps=3 the one
    # update samples the weights after step 4 (the execution crossing 3).
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=2,
    )
    ema = MultiEMA(decays=(0.5,), every_steps=3, validation_data=EMA_VALIDATION)
    recorder = Recorder()
    model.fit(
        *TRAIN,
        batch_size=BATCH_SIZE,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, ema],
    )
    assert len(recorder.steps) == 4  # x0 and 3 executions
    state = ema.get_state()
    assert (state["step"], state["num_updates"]) == (STEPS_PER_EPOCH, 1)
    mask = averaged_mask(model, "eman")
    a = min(0.5, (3 + 1) / (3 + 10))  # x_4 enters at t = 3 (paper Eq. (1))
    with ema.swapped_in(0.5):
        got = model.get_weights()
    for g, x0, x, last, keep in zip(
        got, recorder.steps[0], recorder.steps[2], recorder.steps[3], mask
    ):
        want = a * x0.astype("float64") + (1 - a) * x if keep else last
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-7)


def test_deep_copy_shares_data_and_starts_fresh():
    ema = MultiEMA(decays=(0.9,), every_steps=4, validation_data=EMA_VALIDATION)
    copied = copy.deepcopy(ema)
    assert (copied.decays, copied.every_steps) == (ema.decays, ema.every_steps)
    assert copied.validation_data is ema.validation_data


def test_resumed_run_continues_exactly(tmp_path):
    kwargs = dict(
        decays=(0.3, 0.9), every_steps=3, validation_data=EMA_VALIDATION
    )
    fit_kwargs = dict(batch_size=20, shuffle=False, verbose=0)  # 2 steps/epoch

    model = build_model()
    uninterrupted = MultiEMA(**kwargs)
    model.fit(*TRAIN, epochs=4, callbacks=[uninterrupted], **fit_kwargs)

    model = build_model()
    first = MultiEMA(**kwargs)
    model.fit(*TRAIN, epochs=2, callbacks=[first], **fit_kwargs)
    np.savez(tmp_path / "ema.npz", **first.get_state())
    resumed = MultiEMA(**kwargs)
    resumed.set_state(dict(np.load(tmp_path / "ema.npz")))
    model.fit(
        *TRAIN, initial_epoch=2, epochs=4, callbacks=[resumed], **fit_kwargs
    )

    want, got = uninterrupted.get_state(), resumed.get_state()
    assert sorted(got) == sorted(want)
    assert got["step"] == 8 and got["num_updates"] == 2
    for key in want:
        if isinstance(want[key], np.ndarray) and want[key].dtype.kind == "f":
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
        else:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.summary() == uninterrupted.summary()

    # The restored state applied once: the next fit starts afresh.
    model.fit(*TRAIN, epochs=1, callbacks=[resumed], **fit_kwargs)
    assert resumed.get_state()["step"] == 2


def test_averages_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model()
        ema = MultiEMA(
            decays=(0.5,), every_steps=1, validation_data=EMA_VALIDATION
        )
        model.fit(
            *TRAIN, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[ema]
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    state = ema.get_state()
    averages = [v for k, v in state.items() if k.startswith("average/")]
    assert averages and all(a.dtype == np.float32 for a in averages)
    dtypes = [v.dtype for v in model.weights]
    with ema.swapped_in(0.5):
        assert [v.dtype for v in model.weights] == dtypes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"decays": (1.2,)},
            "Invalid value for argument `decays`. Received: decays=(1.2,). "
            "Expected values in (0, 1).",
        ),
        ({"decays": (0.0, 0.5)}, "Expected values in (0, 1)."),
        ({"decays": ()}, "Received: decays=(). Expected at least one decay."),
        ({"decays": (0.9, 0.9)}, "Expected distinct values"),
        ({"decays": 0.9}, "Expected a sequence of floats."),
        (
            {"every_steps": 0},
            "Invalid value for argument `every_steps`. Received: "
            "every_steps=0. Expected an integer >= 1.",
        ),
        ({"every_steps": 2.5}, "every_steps=2.5. Expected an integer >= 1."),
        (
            {"bn_mode": "recompute"},
            "Invalid value for argument `bn_mode`. Received: "
            "bn_mode='recompute'. Expected one of ('eman', 'copy').",
        ),
        ({"validation_data": (1,)}, "Expected (x, y) or (x, y, sample_weight)"),
        ({"validation_data": np.zeros(3)}, "Received: ndarray. Expected"),
    ],
)
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MultiEMA(**kwargs)


def test_public_api_errors():
    ema = MultiEMA(decays=(0.9, 0.99), every_steps=4)
    assert ema.effective_decays == pytest.approx((0.9**0.25, 0.99**0.25))
    with pytest.raises(RuntimeError, match="before it is trained"):
        with ema.swapped_in(0.9):
            pass
    with pytest.raises(ValueError, match=re.escape("Unknown decay 0.5")):
        ema.selected_weights(0.5, "loss")
    with pytest.raises(ValueError, match="argument `criterion`"):
        ema.selected_weights(0.9, "recall")
    state = {"decays": np.array([0.9, 0.99]), "every_steps": 16, "warmup": True}
    state["bn_mode"] = "eman"
    with pytest.raises(ValueError, match="every_steps=16, but this MultiEMA"):
        ema.set_state(state)


def test_warmup_release_step_matches_brute_force():
    for decay in (0.5, 0.968, 0.984, 0.992, 0.996, 0.998):
        t = 0
        while (t + 1) / (t + 10) < decay:
            t += 1
        assert warmup_release_step(decay) == t
    assert [warmup_release_step(d) for d in DEFAULT_DECAYS] == [
        272, 553, 1115, 2240, 4490  # paper §4.1 protocol, in optimizer steps
    ]


def test_warmup_counts_steps_or_updates():
    steps = MultiEMA(decays=(0.99,), every_steps=16)
    updates = MultiEMA(decays=(0.99,), every_steps=16, warmup="updates")
    off = MultiEMA(decays=(0.99,), every_steps=16, warmup=False)
    # Update after step 32: t = 31 in steps, t = 1 in updates.
    assert steps.decays_at(32)[0] == pytest.approx(32 / 41)
    assert updates.decays_at(32)[0] == pytest.approx(2 / 11)
    assert off.decays_at(32)[0] == 0.99
    assert MultiEMA(warmup=True).warmup == "steps"


def test_one_minus_decay_is_formed_before_rounding():
    ema = MultiEMA(decays=(0.998, 0.9999), every_steps=1, warmup="none")
    ema._step = 1
    decay, rest = ema._decay_factors()
    np.testing.assert_array_equal(
        rest, np.float32(1.0 - np.array([0.998, 0.9999]))
    )
    # The old form, 1 - float32(a), is off by 1.3e-5 / 1.7e-4 relative.
    old = 1.0 - np.float32([0.998, 0.9999]).astype("float64")
    assert np.all(np.abs(old / (1 - np.array([0.998, 0.9999])) - 1) > 1e-5)
    np.testing.assert_allclose(rest / (1 - np.array([0.998, 0.9999])), 1, rtol=1e-7)


def test_fixed_select_epochs_keep_the_ema_of_those_epochs(tmp_path, eman_run):
    """Paper §4.1: the final run keeps each EMA at the epoch chosen on the
    validation run, whatever its own evaluation split says."""
    fixed = {d: {"accuracy": 0, "loss": 1} for d in DECAYS}
    run = train(tmp_path, select_epochs=fixed)
    for decay in DECAYS:
        for got, want in zip(  # the same trajectory as the free run
            run.after.ema_weights[-1][decay], eman_run.after.ema_weights[-1][decay]
        ):
            np.testing.assert_array_equal(got, want)
        for criterion, epoch in fixed[decay].items():
            got = run.ema.selected_weights(decay, criterion)
            for g, want in zip(got, run.after.ema_weights[epoch][decay]):
                np.testing.assert_array_equal(g, want)
        summary = run.ema.summary()[f"{decay:g}"]
        assert summary["best_val_accuracy"]["epoch"] == 1
        assert summary["lowest_val_loss"]["epoch"] == 2
        assert summary["lowest_val_loss"]["val_loss"] == pytest.approx(
            run.after.logs[1][f"ema_{decay:g}_val_loss"]
        )
    # The free run selects by its own metrics: some of its epochs differ.
    free = {
        (d, c): eman_run.ema.summary()[f"{d:g}"][k]["epoch"]
        for d in DECAYS
        for c, k in (("accuracy", "best_val_accuracy"), ("loss", "lowest_val_loss"))
    }
    assert any(free[(d, c)] - 1 != fixed[d][c] for d, c in free)


def test_select_epochs_validation():
    with pytest.raises(ValueError, match="one entry per decay"):
        MultiEMA(decays=(0.9, 0.99), select_epochs={0.9: {"loss": 1}})
    with pytest.raises(ValueError, match="criteria from"):
        MultiEMA(decays=(0.9,), select_epochs={0.9: {"recall": 1}})


def test_identical_averages_are_evaluated_once_with_the_same_results(tmp_path):
    """Under the warm-up, decays above (t+1)/(t+10) hold the same average: one
    evaluation serves them all, with exactly the numbers separate ones give."""
    decays = (0.15, 0.3, 0.968, 0.99)  # 0.968 and 0.99 stay warming up all run
    runs = {}
    for share in (True, False):
        model = build_model()
        ema = MultiEMA(decays=decays, every_steps=EVERY_STEPS, validation_data=EMA_VALIDATION)
        ema._share_identical = share
        calls = []
        evaluate = ema._evaluate
        ema._evaluate = lambda: calls.append(1) or evaluate()
        after = AfterEMA(ema)
        model.fit(*TRAIN, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[ema, after])
        runs[share] = (ema, after, len(calls))
    shared, separate = runs[True], runs[False]
    assert separate[2] == EPOCHS * len(decays)
    # Groups per epoch, from the factors: steps 3, 6, 9, 12, 15 give warm-up
    # values 3/12, 6/15, 9/18, ...: 0.15 leaves at once, 0.3 at step 6.
    warm = [(s) / (s + 9) for s in range(3, EPOCHS * STEPS_PER_EPOCH + 1, 3)]
    assert min(warm) > 0.15 and warm[0] < 0.3 < warm[1] and max(warm) < 0.968
    assert shared[0].identical_groups() == [[0], [1], [2, 3]]
    assert shared[2] < separate[2]
    for got, want in zip(shared[1].logs, separate[1].logs):
        assert got == want  # the same numbers, bitwise
    for decay in decays:
        for criterion in ("accuracy", "loss"):
            for g, w in zip(shared[0].selected_weights(decay, criterion),
                            separate[0].selected_weights(decay, criterion)):
                np.testing.assert_array_equal(g, w)
    summary = shared[0].summary()
    assert summary["0.968"]["identical_to"] == ["0.99"] and summary["0.15"]["identical_to"] == []


def test_warmup_released_after_is_the_first_step_using_the_full_decay():
    for warmup, every in (("steps", 1), ("updates", 16)):
        ema = MultiEMA(decays=(0.968,), every_steps=every, warmup=warmup)
        step = warmup_released_after(0.968, every, warmup)
        assert step % every == 0  # an update happens there
        assert ema.decays_at(step)[0] == 0.968
        assert ema.decays_at(step - every)[0] < 0.968
    assert warmup_released_after(0.968, 16, "none") == 0
