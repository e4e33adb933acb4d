"""`recompute_batch_norm` and `BatchNormRecompute` against NumPy re-derivations.

Backend-neutral: runs under TensorFlow and, with KERAS_BACKEND=jax, under JAX
(NumPy data only; TensorFlow is imported only in the tf.data test, on TF).
"""

import contextlib
import functools

import keras
import numpy as np
import pytest

from callbacks.batch_norm import BatchNormRecompute
from callbacks.batch_norm import recompute_batch_norm

from callbacks.ema import MultiEMA

EPSILON = 1e-5
DECAYS = (0.5, 0.9)


def build_model(two_batch_norms=True, dropout=False, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, name="dense_1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPSILON, name="bn_1")(h)
    h = keras.layers.ReLU()(h)
    if dropout:
        h = keras.layers.Dropout(0.5)(h)
    if two_batch_norms:
        h = keras.layers.Dense(5, name="dense_2")(h)
        h = keras.layers.BatchNormalization(momentum=0.99, epsilon=EPSILON, name="bn_2")(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    return keras.Model(inputs, outputs)


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def make_data(n, seed, sort=True):
    rng = np.random.RandomState(seed)
    x = (rng.randn(n, 3) * [1.0, 2.0, 0.5] + [1.0, -2.0, 3.0]).astype("float32")
    if sort:  # batches with very different means: between-batch variance matters
        x = x[np.argsort(x[:, 0])]
    y = (x[:, 0] + 0.3 * x[:, 1] > 0.4).astype("int32")
    return x, y


def numpy_weights(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def by_path(model, weights):
    return {short_path(w): value for w, value in zip(model.weights, weights)}


def short_path(variable):
    return "/".join(variable.path.split("/")[-2:])


def numpy_statistics(model, weights, x, batches):
    """Dataset mean/variance of each BN's inputs, by an independent NumPy forward
    in training mode (each BN normalizes with its batch's biased moments)."""
    w = {k: v.astype(np.float64) for k, v in by_path(model, weights).items()}
    first, second = [], []
    start = 0
    for size in batches:
        z1 = x[start : start + size].astype(np.float64) @ w["dense_1/kernel"] + w["dense_1/bias"]
        start += size
        first.append(z1)
        if "dense_2/kernel" in w:
            normalized = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + EPSILON)
            h = np.maximum(normalized * w["bn_1/gamma"] + w["bn_1/beta"], 0.0)
            second.append(h @ w["dense_2/kernel"] + w["dense_2/bias"])
    stats = {"bn_1": (np.concatenate(first).mean(0), np.concatenate(first).var(0))}
    if second:
        stats["bn_2"] = (np.concatenate(second).mean(0), np.concatenate(second).var(0))
    return stats


def assert_statistics(model, expected):
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer.moving_variance), variance, rtol=1e-5, atol=1e-6
        )


def scramble_statistics(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, np.nan, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 7.0, "float32"))


def assert_same_except_statistics(model, before, after):
    for variable, old, new in zip(model.weights, before, after):
        if "moving_" not in variable.path:
            np.testing.assert_array_equal(old, new, err_msg=variable.path)


# --- recompute_batch_norm ---------------------------------------------------


def test_unequal_batches_match_numpy_dataset_statistics():
    model = build_model()
    x, _ = make_data(10, seed=1)
    scramble_statistics(model)  # reset first, as the reference does (NaN stays out)
    before = numpy_weights(model)
    count = recompute_batch_norm(model, [x[:4], x[4:8], x[8:]])
    assert count == 10
    assert_statistics(model, numpy_statistics(model, before, x, [4, 4, 2]))
    assert_same_except_statistics(model, before, numpy_weights(model))


def test_between_batch_variance_is_counted():
    # Averaging the batch variances (torch's update_bn) would miss the spread
    # of the batch means; these sorted batches make that spread large.
    model = build_model(two_batch_norms=False)
    x, _ = make_data(10, seed=2)
    recompute_batch_norm(model, [x[:4], x[4:8], x[8:]])
    w = by_path(model, numpy_weights(model))
    z = x.astype(np.float64) @ w["dense_1/kernel"] + w["dense_1/bias"]
    mean_of_batch_variances = np.mean([z[:4].var(0), z[4:8].var(0), z[8:].var(0)], axis=0)
    got = keras.ops.convert_to_numpy(model.get_layer("bn_1").moving_variance)
    np.testing.assert_allclose(got, z.var(0), rtol=1e-5)
    assert np.all(got > 1.5 * mean_of_batch_variances)


def test_array_with_batch_size_equals_explicit_batches_and_steps_limit():
    model = build_model()
    x, y = make_data(10, seed=3)
    weights = numpy_weights(model)
    assert recompute_batch_norm(model, (x, y), batch_size=4) == 10
    assert_statistics(model, numpy_statistics(model, weights, x, [4, 4, 2]))
    assert recompute_batch_norm(model, x, batch_size=4, steps=2) == 8
    assert_statistics(model, numpy_statistics(model, weights, x[:8], [4, 4]))
    batches = [(x[:3], y[:3]), (x[3:], y[3:], np.ones(7, "float32"))]
    assert recompute_batch_norm(model, batches) == 10
    assert_statistics(model, numpy_statistics(model, weights, x, [3, 7]))


def test_momentum_and_other_state_untouched_after_training():
    model = compile_model(build_model(dropout=True))
    x, y = make_data(16, seed=4)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    momenta = [model.get_layer(n).momentum for n in ("bn_1", "bn_2")]
    everything = model.weights + model.non_trainable_variables + model.optimizer.variables
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in everything]
    recompute_batch_norm(model, x, batch_size=5)
    after = [np.array(keras.ops.convert_to_numpy(v)) for v in everything]
    statistics = {
        id(variable)
        for name in ("bn_1", "bn_2")
        for variable in (model.get_layer(name).moving_mean, model.get_layer(name).moving_variance)
    }
    changed = {id(v) for v, b, a in zip(everything, before, after) if not np.array_equal(b, a)}
    assert changed == statistics
    assert [model.get_layer(n).momentum for n in ("bn_1", "bn_2")] == momenta == [0.9, 0.99]


def test_convolution_statistics_over_batch_and_space():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((5, 5, 2))
    conv = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, outputs)
    x = np.random.RandomState(5).randn(7, 5, 5, 2).astype("float32") + 1.0
    # Second code path for the BN's inputs: the convolution alone, inference.
    z = keras.ops.convert_to_numpy(keras.Model(inputs, conv)(x)).astype(np.float64)
    recompute_batch_norm(model, [x[:3], x[3:6], x[6:]])
    bn = model.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), z.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), z.var((0, 1, 2)), rtol=1e-5)


def test_frozen_batch_norm_and_model_without_batch_norm_are_left_alone():
    model = build_model()
    model.get_layer("bn_2").trainable = False
    x, _ = make_data(10, seed=6)
    frozen = [np.array(keras.ops.convert_to_numpy(v)) for v in model.get_layer("bn_2").weights]
    recompute_batch_norm(model, [x[:5], x[5:]])
    for old, variable in zip(frozen, model.get_layer("bn_2").weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(variable))

    def never_iterated():
        raise AssertionError("data iterated for a model without BatchNorm")
        yield

    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert recompute_batch_norm(plain, never_iterated()) == 0


def test_tf_data_dataset():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data test runs on the TensorFlow backend")
    import tensorflow as tf

    model = build_model()
    x, y = make_data(10, seed=7)
    weights = numpy_weights(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    assert recompute_batch_norm(model, dataset) == 10
    assert_statistics(model, numpy_statistics(model, weights, x, [4, 4, 2]))


def test_callbacks_given_tf_data_deep_copy_for_keras_tuner():
    """keras-tuner deep-copies the callbacks before each trial: a tf.data dataset
    (a TF graph) cannot be copied, so it is shared; the copies train as the originals."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data test runs on the TensorFlow backend")
    import copy

    import tensorflow as tf

    from callbacks.swa import SWA

    x, y = make_data(16, seed=3, sort=False)
    train, validation = (tf.data.Dataset.from_tensor_slices(d).batch(8) for d in ((x, y), make_data(8, 4)))

    def averaging():
        ema = MultiEMA(decays=DECAYS, every_steps=1, validation_data=validation)
        return [ema, BatchNormRecompute(ema, train, validation), SWA(1, train_data=train, validation_data=validation)]

    originals = averaging()
    copies = copy.deepcopy(originals)
    assert copies[1].ema is copies[0] and copies[0] is not originals[0]
    assert copies[1].train_data is train and copies[2].train_data is train
    results = []
    for callbacks in (originals, copies):
        compile_model(build_model()).fit(train, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        results.append((callbacks[0].summary(), callbacks[1].summary(), callbacks[2].summary()))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": np.zeros((4, 3), "float32")}, "batch_size"),
        ({"data": np.zeros((4, 3), "float32"), "batch_size": 2, "steps": 0}, "steps"),
        ({"data": 3}, "data"),
        ({"data": []}, "no batches"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        recompute_batch_norm(build_model(), **kwargs)


def test_renorm_is_rejected():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(renorm=True)])
    with pytest.raises(ValueError, match="renorm"):
        recompute_batch_norm(model, np.zeros((4, 3), "float32"), batch_size=2)


# --- BatchNormRecompute -------------------------------------------------------


class FakeMultiEMA(keras.callbacks.Callback):
    """The `MultiEMA` API that `BatchNormRecompute` uses, in NumPy."""

    def __init__(self, decays):
        super().__init__()
        self.decays = tuple(decays)

    def on_train_begin(self, logs=None):
        self.averages = {d: numpy_weights(self.model) for d in self.decays}
        self.per_epoch = {d: [] for d in self.decays}

    def on_train_batch_end(self, batch, logs=None):
        current = numpy_weights(self.model)
        for d in self.decays:
            self.averages[d] = [d * a + (1 - d) * w for a, w in zip(self.averages[d], current)]

    def on_epoch_end(self, epoch, logs=None):
        for d in self.decays:
            self.per_epoch[d].append([a.copy() for a in self.averages[d]])

    @contextlib.contextmanager
    def swapped_in(self, decay):
        trained = numpy_weights(self.model)
        self.model.set_weights(self.averages[decay])
        try:
            yield
        finally:
            self.model.set_weights(trained)

    def selected_weights(self, decay, criterion):
        return self.per_epoch[decay][0 if criterion == "accuracy" else -1]

    def missing_selections(self):
        return []

    def summary(self):
        selected = {"epoch": 1, "val_loss": 0.0, "val_accuracy": 0.0}
        return {f"{d:g}": {"best_val_accuracy": selected, "lowest_val_loss": selected} for d in self.decays}


class Recorder(keras.callbacks.Callback):
    """Records the model's and the EMAs' weights; checks another recorder's."""

    def __init__(self, ema, reference=None):
        super().__init__()
        self.ema = ema
        self.reference = reference
        self.model_weights, self.ema_weights = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.model_weights.append(numpy_weights(self.model))
        ema = {}
        for d in self.ema.decays:
            with self.ema.swapped_in(d):
                ema[d] = numpy_weights(self.model)
        self.ema_weights.append(ema)
        if self.reference is not None:  # placed after BatchNormRecompute
            for old, new in zip(self.reference.model_weights[-1], self.model_weights[-1]):
                np.testing.assert_array_equal(old, new)
            for d in self.ema.decays:
                for old, new in zip(self.reference.ema_weights[-1][d], ema[d]):
                    np.testing.assert_array_equal(old, new)

    def on_train_end(self, logs=None):
        self.final_weights = numpy_weights(self.model)


def make_ema(kind, validation_data):
    if kind == "fake":
        return FakeMultiEMA(DECAYS)
    return MultiEMA(decays=DECAYS, every_steps=1, bn_mode=kind, validation_data=validation_data)


@functools.cache
def evaluation_model():
    """A second, separately built model (one per backend run: no retracing)."""
    return compile_model(build_model(two_batch_norms=False, seed=99))


def expected_metrics(weights, x_train, x_val, y_val, batch_size):
    """Independent: NumPy BN statistics for a 1-BN model, a separate model."""
    model = evaluation_model()
    sizes = [min(batch_size, len(x_train) - s) for s in range(0, len(x_train), batch_size)]
    mean, variance = numpy_statistics(model, weights, x_train, sizes)["bn_1"]
    weights = list(weights)
    paths = [short_path(w) for w in model.weights]
    weights[paths.index("bn_1/moving_mean")] = mean.astype("float32")
    weights[paths.index("bn_1/moving_variance")] = variance.astype("float32")
    model.set_weights(weights)
    metrics = model.evaluate(x_val, y_val, batch_size=batch_size, verbose=0, return_dict=True)
    return metrics, weights


@pytest.mark.parametrize("kind", ["fake", "eman", "copy"])
def test_callback_logs_results_and_restores(kind, tmp_path):
    x, y = make_data(24, seed=8, sort=False)
    x_val, y_val = make_data(10, seed=9, sort=False)
    model = compile_model(build_model(two_batch_norms=False))
    ema = make_ema(kind, (x_val, y_val))
    before = Recorder(ema)
    bn = BatchNormRecompute(ema, (x, y), (x_val, y_val), every_epoch=True, batch_size=5)
    after = Recorder(ema, reference=before)
    history = model.fit(
        x, y, batch_size=8, epochs=3, verbose=0,
        validation_data=(x_val, y_val), callbacks=[ema, before, bn, after],
    )
    assert len(after.model_weights) == 3  # restoration checked every epoch
    for epoch in range(3):
        for d in DECAYS:
            want, _ = expected_metrics(before.ema_weights[epoch][d], x, x_val, y_val, 5)
            for name in ("loss", "accuracy"):
                got = history.history[f"ema_{d:g}_bn_val_{name}"][epoch]
                np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6)
    # on_train_end left the trained weights as they were
    for old, new in zip(before.final_weights, numpy_weights(model)):
        np.testing.assert_array_equal(old, new)
    summary = bn.summary()
    assert set(summary) == {f"{d:g}" for d in DECAYS}
    for d in DECAYS:
        for criterion, key in (("accuracy", "best_val_accuracy"), ("loss", "lowest_val_loss")):
            want, weights = expected_metrics(ema.selected_weights(d, criterion), x, x_val, y_val, 5)
            assert summary[f"{d:g}"][key] == pytest.approx(
                {"val_loss": want["loss"], "val_accuracy": want["accuracy"]}, rel=1e-5, abs=1e-6
            )
            path = tmp_path / f"ema_{d:g}_{'acc' if criterion == 'accuracy' else 'loss'}_bn.weights.h5"
            assert str(path) in bn.save(str(tmp_path))
            loaded = build_model(two_batch_norms=False, seed=3)
            loaded.load_weights(str(path))
            for got, expected in zip(numpy_weights(loaded), weights):
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for old, new in zip(before.final_weights, numpy_weights(model)):  # save restored too
        np.testing.assert_array_equal(old, new)


def test_listed_before_the_multi_ema_it_gives_the_same_results():
    """The averages move in on_train_batch_end and are selected in MultiEMA's
    on_epoch_end: a BatchNormRecompute placed before the MultiEMA sees the same EMAs
    each epoch and the same selections at train end as one placed after it."""
    x, y = make_data(24, seed=8, sort=False)
    validation = make_data(10, seed=9, sort=False)
    results = []
    for order in ("after", "before"):
        model = compile_model(build_model(two_batch_norms=False))
        ema = make_ema("eman", validation)
        bn = BatchNormRecompute(ema, (x, y), validation, every_epoch=True, batch_size=5)
        history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                            callbacks=[ema, bn] if order == "after" else [bn, ema])
        results.append((history.history, bn.summary(), ema.summary()))
    (after, after_bn, after_ema), (before, before_bn, before_ema) = results
    assert after == before and after_bn == before_bn and after_ema == before_ema
    assert set(before_bn) == {f"{d:g}" for d in DECAYS} and "ema_0.9_bn_val_loss" in before


def test_callback_validates_eagerly(tmp_path):
    ema = FakeMultiEMA(DECAYS)
    x, y = make_data(8, seed=0)
    with pytest.raises(ValueError, match="`ema`"):
        BatchNormRecompute(object(), (x, y), (x, y), batch_size=4)
    with pytest.raises(ValueError, match="`validation_data`"):
        BatchNormRecompute(ema, (x, y), None, batch_size=4)
    with pytest.raises(ValueError, match="`batch_size`"):
        BatchNormRecompute(ema, (x, y), (x, y))
    with pytest.raises(ValueError, match="`steps`"):
        BatchNormRecompute(ema, (x, y), (x, y), batch_size=4, steps=-1)
    with pytest.raises(ValueError, match="Nothing to save"):
        BatchNormRecompute(ema, (x, y), (x, y), batch_size=4).save(str(tmp_path / "unused"))
    assert not (tmp_path / "unused").exists()
    class Batches:  # a dataset: its batches are used as they are
        def __iter__(self):
            return iter([(x[:4], y[:4]), (x[4:], y[4:])])

    batches = Batches()
    with pytest.raises(ValueError, match=r"batch_size=4\. Expected None when the data are datasets"):
        BatchNormRecompute(ema, batches, batches, batch_size=4)
