"""`SWA` and the SWA learning-rate schedules against independent computations:
the NumPy mean of recorded weights, NumPy BatchNorm statistics, a separately
built model for evaluation, the SWA paper's closed-form cyclic rate (§3.1).

Backend-neutral: runs under TensorFlow and with KERAS_BACKEND=jax (NumPy data).
"""

import functools
import math
import os
import re

import keras
import numpy as np
import pytest

from callbacks.compiled import compile_pure
from callbacks import SWA, SWACyclicSchedule, SWASchedule, swa_schedule

EPSILON = 1e-5
BATCH = 8  # 24 examples: 3 optimizer steps per epoch
BN_BATCH = 5  # recomputation batches of 5, 5, 5, 5, 4


def build_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, name="dense_1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPSILON, name="bn_1")(h)
    h = keras.layers.ReLU()(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    return keras.Model(inputs, outputs)


def compile_model(model, learning_rate=0.1):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def make_data(n, seed):
    rng = np.random.RandomState(seed)
    x = (rng.randn(n, 3) * [1.0, 2.0, 0.5] + [1.0, -2.0, 3.0]).astype("float32")
    y = (x[:, 0] + 0.3 * x[:, 1] > 0.4).astype("int32")
    return x, y


X, Y = make_data(24, seed=1)
X_VAL, Y_VAL = make_data(10, seed=2)


def state_average(state):
    """The average's arrays in a flat `SWA.get_state()` (`average/0`, `average/1`, ...)."""
    return [state[f"average/{k}"] for k in range(sum(key.startswith("average/") for key in state))]


def numpy_weights(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def paths(model):
    return ["/".join(w.path.split("/")[-2:]) for w in model.weights]


def with_exact_statistics(model, weights):
    """`weights` with bn_1's statistics computed in NumPy over X in training
    batches of BN_BATCH (the BN is the first layer after a Dense: exact)."""
    names = paths(model)
    kernel = weights[names.index("dense_1/kernel")].astype(np.float64)
    bias = weights[names.index("dense_1/bias")].astype(np.float64)
    z = X.astype(np.float64) @ kernel + bias
    weights = list(weights)
    weights[names.index("bn_1/moving_mean")] = z.mean(0).astype("float32")
    weights[names.index("bn_1/moving_variance")] = z.var(0).astype("float32")
    return weights


@functools.cache
def evaluation_model():
    return compile_model(build_model(seed=7))


def evaluate_separately(weights):
    """A separately built model: the same architecture, another instance."""
    model = evaluation_model()
    model.set_weights(weights)
    return model.evaluate(X_VAL, Y_VAL, batch_size=BATCH, verbose=0, return_dict=True)


class Recorder(keras.callbacks.Callback):
    """Records the weights at every epoch begin/end; placed after `SWA` with a
    `reference` recorder placed before it, asserts `SWA` restored them."""

    def __init__(self, reference=None):
        super().__init__()
        self.reference = reference
        self.begin, self.end = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = numpy_weights(self.model)
        self._check(self.begin, epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = numpy_weights(self.model)
        self._check(self.end, epoch)

    def on_train_end(self, logs=None):
        self.final = numpy_weights(self.model)

    def _check(self, records, epoch):
        if self.reference is not None:
            reference = getattr(self.reference, "begin" if records is self.begin else "end")
            for old, new in zip(reference[epoch], records[epoch]):
                np.testing.assert_array_equal(old, new)


def train(swa, epochs, model=None, initial_epoch=0, learning_rate=0.1, callbacks_after=()):
    model = model or compile_model(build_model(), learning_rate)
    before, after = Recorder(), None
    after = Recorder(reference=before)
    history = model.fit(
        X, Y, batch_size=BATCH, epochs=epochs, initial_epoch=initial_epoch,
        shuffle=False, verbose=0, callbacks=[before, swa, after, *callbacks_after],
    )
    assert set(after.end) == set(before.end)  # restoration checked every epoch
    for old, new in zip(before.final, numpy_weights(model)):  # and on train end
        np.testing.assert_array_equal(old, new)
    return model, before, history


def assert_average(got, captured):
    want = np.mean(np.stack([np.asarray(c, np.float64) for c in captured]), axis=0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize(
    "start_epoch, cycle_epochs, epochs, include_start, captures",
    [
        # Algorithm 1 (the default): the weights at the start of epoch
        # `start_epoch`, then those at each epoch's (cycle's) end.
        (2, 1, 5, None, [("begin", 2), ("end", 2), ("end", 3), ("end", 4)]),
        (1, 2, 6, True, [("begin", 1), ("end", 2), ("end", 4)]),
        # include_start=False: the captures only (PyTorch's swa_utils).
        (2, 1, 6, False, [("end", 2), ("end", 3), ("end", 4), ("end", 5)]),
        (1, 2, 7, False, [("end", 2), ("end", 4), ("end", 6)]),
    ],
)
def test_average_is_mean_of_captured_weights(start_epoch, cycle_epochs, epochs, include_start, captures):
    options = {} if include_start is None else {"include_start": include_start}
    swa = SWA(
        start_epoch, cycle_epochs=cycle_epochs, train_data=(X, Y), validation_data=(X_VAL, Y_VAL),
        batch_size=BN_BATCH, **options,
    )
    schedule = swa_schedule(0.1, start_epoch * 3, swa_lr=0.02, cycle_steps=3 * cycle_epochs)
    model, record, history = train(swa, epochs, learning_rate=schedule)
    state = swa.get_state()
    assert state["count"] == len(captures) == swa.summary()["models_averaged"]
    assert state["start_included"] == swa.summary()["start_included"] == (captures[0][0] == "begin")
    captured = [getattr(record, where)[epoch] for where, epoch in captures]
    for k, got in enumerate(state_average(state)):
        assert_average(got, [weights[k] for weights in captured])
    # Per-epoch logs from the first capture on: the running average (BN
    # statistics averaged too) evaluated by a separate model.
    first = captures[0][1]
    logged = history.history["swa_val_loss"]
    assert len(logged) == epochs and np.isnan(logged[:first]).all()  # NaN before the first capture
    for index, epoch in enumerate(range(first, epochs), start=first):
        so_far = [getattr(record, w)[e] for w, e in captures if e <= epoch]
        mean = [np.mean([np.asarray(c[k], np.float64) for c in so_far], axis=0).astype("float32")
                for k in range(len(so_far[0]))]
        want = evaluate_separately(mean)
        assert logged[index] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
        assert history.history["swa_val_accuracy"][index] == pytest.approx(want["accuracy"], abs=1e-6)


def test_a_csv_logger_gets_the_swa_columns_when_the_average_starts_late(tmp_path):
    """Keras's CSVLogger fixes its columns at the first epoch: SWA's keys are in every
    epoch's logs (NaN before the first capture), its rows are the logged values."""
    import csv

    path = str(tmp_path / "log.csv")
    swa = SWA(2, train_data=(X, Y), validation_data=(X_VAL, Y_VAL), batch_size=BN_BATCH)
    model = compile_model(build_model())
    history = model.fit(X, Y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
                        callbacks=[swa, keras.callbacks.CSVLogger(path)])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for name in ("swa_val_loss", "swa_val_accuracy"):
        column = np.array([float(row[name]) for row in rows])
        assert np.isnan(column[:2]).all()
        np.testing.assert_allclose(column[2:], history.history[name][2:], rtol=1e-6)
    # After epoch 2 the average is the start of epoch 2 and the end of epoch 2: a separate evaluation.
    assert not np.isnan(column[2:]).any()


def test_final_model_has_exact_batch_norm_statistics_and_is_saved(tmp_path):
    swa = SWA(1, train_data=(X, Y), validation_data=(X_VAL, Y_VAL), batch_size=BN_BATCH)
    model, record, _ = train(swa, 4)
    captured = [record.begin[1], record.end[1], record.end[2], record.end[3]]  # the start, then 3 epochs
    average = [np.mean([weights[k] for weights in captured], axis=0, dtype=np.float64).astype("float32")
               for k in range(len(model.weights))]
    want = with_exact_statistics(model, average)
    with swa.swapped_in():
        for got, expected in zip(numpy_weights(model), want):
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
        in_model = numpy_weights(model)
    for old, new in zip(record.final, numpy_weights(model)):
        np.testing.assert_array_equal(old, new)
    metrics = evaluate_separately(want)
    summary = swa.summary()
    # One epoch convention in and out (0-based, as Keras's epoch): the argument comes back as it went in.
    assert summary["start_epoch"] == swa.start_epoch == 1
    assert summary["models_averaged"] == 4 and summary["start_included"]
    assert summary["val_loss"] == pytest.approx(metrics["loss"], rel=1e-5, abs=1e-6)
    assert summary["val_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    path = swa.save(str(tmp_path / "weights"))  # creates the directory
    assert path.endswith("swa.weights.h5")
    for old, new in zip(record.final, numpy_weights(model)):
        np.testing.assert_array_equal(old, new)
    loaded = build_model(seed=5)
    loaded.load_weights(path)
    for got, expected in zip(numpy_weights(loaded), in_model):
        np.testing.assert_array_equal(got, expected)


class SaveAverageAt(keras.callbacks.Callback):
    """Calls `swa.save_average` at the end of epoch `epoch` (after `SWA` captured it)."""

    def __init__(self, swa, epoch, path):
        super().__init__()
        self.swa, self.epoch, self.path = swa, epoch, path

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.metrics = self.swa.save_average(self.path)


def test_save_average_mid_fit_is_the_mean_so_far_with_exact_batch_norm(tmp_path):
    # SWA paper Table 1's "1 budget" from a longer SWA phase: the average at epoch 2's end.
    swa = SWA(1, train_data=(X, Y), validation_data=(X_VAL, Y_VAL), batch_size=BN_BATCH)
    path = str(tmp_path / "swa_budget.weights.h5")
    saver = SaveAverageAt(swa, 2, path)
    model = compile_model(build_model())
    before = Recorder()
    model.fit(X, Y, batch_size=BATCH, epochs=5, shuffle=False, verbose=0, callbacks=[before, swa, saver])
    captured = [before.begin[1], before.end[1], before.end[2]]  # the start, epochs 1 and 2 (0-based)
    average = [np.mean([weights[k] for weights in captured], axis=0, dtype=np.float64).astype("float32")
               for k in range(len(model.weights))]
    want = with_exact_statistics(model, average)
    loaded = build_model(seed=5)
    loaded.load_weights(path)
    for got, expected in zip(numpy_weights(loaded), want):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    metrics = evaluate_separately(want)
    assert saver.metrics["val_loss"] == pytest.approx(metrics["loss"], rel=1e-5, abs=1e-6)
    assert swa.summary()["models_averaged"] == 5  # the phase went on: start + epochs 1-4
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]  # the temporary was renamed
    with pytest.raises(ValueError, match="at least one captured model"):
        SWA(3).save_average(path)


def test_save_average_refuses_a_path_without_the_weights_suffix_before_writing(tmp_path):
    """Keras loads only `*.weights.h5`; the temporary file is derived from the suffix:
    any other path is refused at once, and nothing is written anywhere."""
    (tmp_path / "run").mkdir()
    path = str(tmp_path / "run" / "avg.h5")
    swa = SWA(0, train_data=(X, Y), batch_size=BN_BATCH, include_start=False)
    message = re.escape(f"Invalid value for argument `path`. Received: path={path!r}. Expected a file name "
                        "ending in '.weights.h5'.")
    with pytest.raises(ValueError, match=message):
        train(swa, 2, callbacks_after=[SaveAverageAt(swa, 0, path)])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["run"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".partial-")]


def test_bn_every_epoch_logs_use_exact_statistics():
    swa = SWA(0, train_data=(X, Y), validation_data=(X_VAL, Y_VAL), batch_size=BN_BATCH,
              bn_every_epoch=True)
    model, record, history = train(swa, 2)
    for epoch in (0, 1):
        captured = [record.begin[0]] + [record.end[e] for e in range(epoch + 1)]  # the start, then epochs
        mean = [np.mean([weights[k] for weights in captured], axis=0, dtype=np.float64)
                .astype("float32") for k in range(len(model.weights))]
        want = evaluate_separately(with_exact_statistics(model, mean))
        assert history.history["swa_val_loss"][epoch] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)


def test_resume_with_state_continues_the_average():
    model = compile_model(build_model())
    first = SWA(1, train_data=(X, Y), batch_size=BN_BATCH)
    _, record_1, _ = train(first, 3, model=model)
    state = first.get_state()
    assert state["count"] == 3 and state["start_included"]
    second = SWA(1, train_data=(X, Y), batch_size=BN_BATCH)
    second.set_state(state)
    _, record_2, _ = train(second, 5, model=model, initial_epoch=3)
    captured = [record_1.begin[1], record_1.end[1], record_1.end[2], record_2.end[3], record_2.end[4]]
    assert second.count == 5 and second.summary()["start_included"]  # the start taken once
    for k, got in enumerate(state_average(second.get_state())):
        assert_average(got, [weights[k] for weights in captured])
    # Re-use without set_state starts afresh (state reset in on_train_begin).
    train(second, 2, model=model)
    assert second.count == 2  # the start of epoch 1 and its end


def test_a_fit_resumed_at_the_start_epoch_takes_the_start_once():
    """As the app's SWA branch: a fit from `initial_epoch=start_epoch`, killed
    after one epoch, resumed from its state (a state without `start_included`,
    as written before it existed, means the start was not taken)."""
    model = compile_model(build_model())
    model.fit(X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)  # the conventional phase
    first = SWA(2, train_data=(X, Y), batch_size=BN_BATCH)
    _, record_1, _ = train(first, 3, model=model, initial_epoch=2)
    second = SWA(2, train_data=(X, Y), batch_size=BN_BATCH)
    second.set_state(first.get_state())
    _, record_2, _ = train(second, 4, model=model, initial_epoch=3)
    captured = [record_1.begin[2], record_1.end[2], record_2.end[3]]
    assert second.count == 3 and second.start_included
    for k, got in enumerate(state_average(second.get_state())):
        assert_average(got, [weights[k] for weights in captured])
    old = {key: value for key, value in first.get_state().items() if key != "start_included"}
    second.set_state(old)
    assert not second.start_included and second.count == 2


def test_no_capture_before_start_and_errors(tmp_path):
    swa = SWA(5, train_data=(X, Y), validation_data=(X_VAL, Y_VAL), batch_size=BN_BATCH)
    with pytest.warns(UserWarning, match=r"start_epoch=5 \(0-based\) was never reached .* after epoch 1\."):
        _, _, history = train(swa, 2)
    assert swa.count == 0 and np.isnan(history.history["swa_val_loss"]).all()
    with pytest.raises(ValueError, match="No SWA model"):
        swa.save(str(tmp_path / "unused"))
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match="train_data"):
        train(SWA(0), 1)
    for kwargs, name in [
        ({"start_epoch": -1}, "start_epoch"),
        ({"start_epoch": 0, "cycle_epochs": 0}, "cycle_epochs"),
        ({"start_epoch": 0, "bn_every_epoch": True}, "train_data"),
        ({"start_epoch": 0, "train_data": X}, "batch_size"),
        ({"start_epoch": 0, "train_data": (X, Y), "batch_size": 4, "steps": 0}, "steps"),
    ]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            SWA(**kwargs)


def test_arguments_that_would_be_ignored_are_refused():
    """`steps` limits the recomputation over `train_data`; `batch_size` batches array data:
    without either kind of data they would do nothing."""
    batches = [X[:8], X[8:16], X[16:]]  # an iterable of batches, used as it is
    with pytest.raises(ValueError, match=re.escape(
            "Invalid value for argument `steps`. Received: steps=3. Expected None when train_data is None.")):
        SWA(0, steps=3)
    with pytest.raises(ValueError, match=re.escape(
            "Received: batch_size=4. Expected None when the data are datasets")):
        SWA(0, train_data=batches, batch_size=4)
    SWA(0, train_data=batches, validation_data=(X_VAL, Y_VAL), batch_size=4)  # the validation tuple uses it


# --- schedules -----------------------------------------------------------------


def paper_cyclic(i, alpha_1, alpha_2, c):
    """SWA paper §3.1, iteration i counted from 1."""
    t = (math.fmod(i - 1, c) + 1) / c
    return (1 - t) * alpha_1 + t * alpha_2


def values(schedule, steps):
    compiled = compile_pure(lambda step: schedule(step))  # traceable in a graph
    return [float(keras.ops.convert_to_numpy(compiled(np.int32(s)))) for s in steps]


def test_cyclic_schedule_matches_paper_formula():
    schedule = SWACyclicSchedule(0.05, 0.001, cycle_steps=4)
    steps = list(range(13))
    want = [paper_cyclic(s + 1, 0.05, 0.001, 4) for s in steps]
    np.testing.assert_allclose(values(schedule, steps), want, rtol=1e-6)
    # the minimum alpha_2 at the last step of each cycle, then the jump back
    assert values(schedule, [3, 7, 11]) == [np.float32(0.001)] * 3  # exactly
    np.testing.assert_allclose(values(schedule, [0, 4]), [0.75 * 0.05 + 0.25 * 0.001] * 2, rtol=1e-6)
    np.testing.assert_allclose(values(SWACyclicSchedule(0.01, 0.01, 5), [0, 3, 9]), [0.01] * 3, rtol=1e-6)


def test_swa_schedule_constant_and_cyclic():
    base = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
    steps = list(range(0, 40))
    base_values = values(base, steps)
    constant = swa_schedule(base, start_step=30, swa_lr=0.01)
    want = [base_values[s] if s < 30 else 0.01 for s in steps]
    np.testing.assert_allclose(values(constant, steps), want, rtol=1e-6)
    cyclic = swa_schedule(base, start_step=30, swa_lr=0.001, cycle_steps=3)
    alpha_1 = base_values[30]
    want = [base_values[s] if s < 30 else paper_cyclic(s - 30 + 1, alpha_1, 0.001, 3) for s in steps]
    np.testing.assert_allclose(values(cyclic, steps), want, rtol=1e-6)
    np.testing.assert_allclose(values(swa_schedule(0.2, 2, 0.05), [0, 1, 2, 9]), [0.2, 0.2, 0.05, 0.05])


def test_schedules_serialize():
    base = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
    for schedule in (
        SWACyclicSchedule(0.05, 0.001, 6),
        SWASchedule(base, 30, 0.01, cycle_steps=4),
        SWASchedule(0.1, 30, 0.01),
    ):
        clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
        assert type(clone) is type(schedule)
        np.testing.assert_allclose(values(clone, range(45)), values(schedule, range(45)), rtol=1e-7)
    optimizer = keras.optimizers.SGD(learning_rate=SWASchedule(base, 30, 0.01))
    restored = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert restored.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: SWACyclicSchedule(0.001, 0.05, 3), "alpha_1"),
        (lambda: SWACyclicSchedule(0.05, 0.0, 3), "alpha_1"),
        (lambda: SWACyclicSchedule(0.05, 0.001, 0), "cycle_steps"),
        (lambda: swa_schedule("cosine", 3, 0.01), "base_schedule"),
        (lambda: swa_schedule(0.1, -1, 0.01), "start_step"),
        (lambda: swa_schedule(0.1, 3, -0.01), "swa_lr"),
        (lambda: swa_schedule(0.1, 3, 0.01, cycle_steps=0), "cycle_steps"),
    ],
)
def test_schedule_arguments_are_validated(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()
