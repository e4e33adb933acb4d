"""MultiEMA's averages, evaluation and saving: every number is compared with a
NumPy re-derivation from a recorded weight trajectory or an independent evaluation.

TensorFlow by default; JAX with `KERAS_BACKEND=jax python -m pytest
tests/test_ema.py` (NumPy data only, TensorFlow is never imported then).
"""

import copy
import csv
import json
import os
import re
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks.ema import DEFAULT_DECAYS, MultiEMA  # noqa: E402
from callbacks.warmup import warmup_release_step, warmup_released_after  # noqa: E402
from tests.ema_setup import (  # noqa: E402,F401  (fixtures: eman_run, copy_run, updates_run)
    BATCH_SIZE, DECAYS, EMA_VALIDATION, EPOCHS, EVERY_STEPS, FIT_VALIDATION, NUM_CLASSES, NUM_FEATURES,
    STEPS_PER_EPOCH, TRAIN, AfterEMA, Recorder, averaged_mask, build_model, copy_run, eman_run,
    expected_ema_weights, make_data, numpy_evaluation, train, updates_run, warmed_decay,
)


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
                "epoch": epoch,  # 0-based, as Keras's epoch and `select_epochs`
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


# Epochs (0-based) fixed per decay; 0.3 and 0.968 hold one average after epoch 0 (warm-up), not after.
ONLY_SELECTED = {0.15: {"accuracy": 0, "loss": 2}, 0.3: {"accuracy": 1, "loss": 1}, 0.968: {"accuracy": 2}}


@pytest.mark.filterwarnings("ignore:Early stopping conditioned on metric")
def test_evaluate_only_the_selected_epochs(eman_run, tmp_path):
    """evaluate_every_epoch=False evaluates each EMA at its fixed epochs alone; the training, the
    averages and the selections are those of the run that evaluates every epoch."""
    run = train(tmp_path, select_epochs=ONLY_SELECTED, evaluate_every_epoch=False)
    for epoch in range(EPOCHS):
        for got, want in zip(run.after.weights[epoch], eman_run.after.weights[epoch]):
            np.testing.assert_array_equal(got, want)
        for decay in DECAYS:
            for got, want in zip(run.after.ema_weights[epoch][decay], eman_run.after.ema_weights[epoch][decay]):
                np.testing.assert_array_equal(got, want)
        logged = {key for key in run.after.logs[epoch] if key.startswith("ema_")}
        fixed = [decay for decay in DECAYS if epoch in ONLY_SELECTED[decay].values()]
        assert logged == {f"ema_{decay:g}_val_{name}" for decay in fixed for name in ("loss", "accuracy")}
        for key in logged:  # no maximum over the few decays evaluated
            assert run.after.logs[epoch][key] == pytest.approx(eman_run.after.logs[epoch][key], rel=1e-6)
    summary = run.ema.summary()
    for decay, fixed in ONLY_SELECTED.items():
        key = f"{decay:g}"
        for criterion, name in (("accuracy", "best_val_accuracy"), ("loss", "lowest_val_loss")):
            if criterion not in fixed:
                assert summary[key][name] is None
                continue
            epoch = fixed[criterion]
            assert summary[key][name] == pytest.approx({
                "epoch": epoch, "val_loss": eman_run.history[f"ema_{key}_val_loss"][epoch],
                "val_accuracy": eman_run.history[f"ema_{key}_val_accuracy"][epoch]}, rel=1e-6)
            for got, want in zip(run.ema.selected_weights(decay, criterion), eman_run.after.ema_weights[epoch][decay]):
                np.testing.assert_array_equal(got, want)
    assert run.ema.get_config()["evaluate_every_epoch"] is False
    assert not run.ema.missing_selections()


def test_an_average_is_the_same_whatever_other_decays_are_kept(eman_run):
    """app.reproduce's final runs keep the largest decay alone: it must be the average it is among others."""
    model = build_model()
    ema = MultiEMA(decays=(0.968,), every_steps=EVERY_STEPS, validation_data=EMA_VALIDATION)
    after = AfterEMA(ema)
    model.fit(*TRAIN, batch_size=BATCH_SIZE, epochs=EPOCHS, validation_data=FIT_VALIDATION, shuffle=False,
              verbose=0, callbacks=[ema, after])
    for epoch in range(EPOCHS):
        for got, want in zip(after.ema_weights[epoch][0.968], eman_run.after.ema_weights[epoch][0.968]):
            np.testing.assert_array_equal(got, want)
        assert after.logs[epoch]["ema_0.968_val_accuracy"] == eman_run.after.logs[epoch]["ema_0.968_val_accuracy"]


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


def test_no_validation_data_warns_but_a_fit_with_no_epoch_left_does_not():
    """A resumed run whose epochs had all been trained fits zero epochs: nothing to evaluate, nothing to warn
    about (app.train resuming inside its SWA branch printed the warning)."""
    fit_kwargs = dict(batch_size=20, shuffle=False, verbose=0)
    model = build_model()
    with pytest.warns(UserWarning, match="MultiEMA evaluated no EMA: pass `validation_data`"):
        model.fit(*TRAIN, epochs=1, callbacks=[MultiEMA(decays=(0.5,))], **fit_kwargs)
    trained = MultiEMA(decays=(0.5,), validation_data=EMA_VALIDATION)
    model.fit(*TRAIN, epochs=2, callbacks=[trained], **fit_kwargs)
    resumed = MultiEMA(decays=(0.5,), validation_data=EMA_VALIDATION)
    resumed.set_state(trained.get_state())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(*TRAIN, initial_epoch=2, epochs=2, callbacks=[resumed], **fit_kwargs)
    assert resumed.summary() == trained.summary()


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_averages_under_mixed_precision_match_a_float32_rederivation(policy):
    """Keras keeps the variables float32 under a mixed policy (mixed_float16 with
    loss scaling); the averages are float32 and follow the same recursion over
    the recorded float32 trajectory."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model()
        ema = MultiEMA(decays=(0.5, 0.9), every_steps=EVERY_STEPS, validation_data=EMA_VALIDATION)
        recorder = Recorder()
        model.fit(*TRAIN, batch_size=BATCH_SIZE, epochs=2, shuffle=False, verbose=0,
                  callbacks=[recorder, ema])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("hidden").compute_dtype == policy.split("_")[1]
    state = ema.get_state()
    averages = [state[f"average/{i}"] for i in range(sum(k.startswith("average/") for k in state))]
    assert averages and all(a.dtype == np.float32 for a in averages)
    mask = averaged_mask(model, "eman")
    steps = 2 * STEPS_PER_EPOCH
    for index, decay in enumerate((0.5, 0.9)):
        expected = expected_ema_weights(recorder.steps, decay, "steps", mask, steps)
        want = [w for w, averaged in zip(expected, mask) if averaged]
        for got, reference in zip(averages, want):
            np.testing.assert_allclose(got[index], reference, rtol=1e-5, atol=1e-6)
    dtypes = [v.dtype for v in model.weights]
    with ema.swapped_in(0.5):
        assert [v.dtype for v in model.weights] == dtypes