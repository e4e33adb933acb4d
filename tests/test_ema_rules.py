"""MultiEMA's arguments, decay warm-up, selection rules, identical averages,
the accuracy metric, the BatchNorm statistics a swap restores, the public API.

TensorFlow by default; JAX with `KERAS_BACKEND=jax`.
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

import callbacks  # noqa: E402
from callbacks.ema import DEFAULT_DECAYS, MultiEMA  # noqa: E402
from callbacks.warmup import warmup_release_step, warmup_released_after  # noqa: E402
from tests.ema_setup import (  # noqa: E402,F401  (fixtures: eman_run, copy_run, updates_run)
    BATCH_SIZE, DECAYS, EMA_VALIDATION, EPOCHS, EVERY_STEPS, FIT_VALIDATION, NUM_CLASSES, NUM_FEATURES,
    STEPS_PER_EPOCH, TRAIN, AfterEMA, Recorder, averaged_mask, build_model, copy_run, eman_run,
    expected_ema_weights, make_data, numpy_evaluation, train, updates_run, warmed_decay,
)


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
        ({"accuracy_metric": 1}, "Invalid value for argument `accuracy_metric`. Received: accuracy_metric=1. "
                                 "Expected a metric name or None."),
        # fit batches its own validation data: the batch size would be ignored.
        ({"validation_batch_size": 64}, "Invalid value for argument `validation_batch_size`. Received: "
                                        "validation_batch_size=64. Expected None when validation_data is None"),
        ({"evaluate_every_epoch": False}, "Invalid value for argument `evaluate_every_epoch`. Received: "
                                          "evaluate_every_epoch=False. Expected True when select_epochs is None"),
        ({"evaluate_every_epoch": 0}, "Received: evaluate_every_epoch=0. Expected True or False."),
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
    ema.averages.step = 1
    decay, rest = ema.averages.decay_factors()
    np.testing.assert_array_equal(
        rest, np.float32(1.0 - np.array([0.998, 0.9999]))
    )
    # Within float32 rounding of the exact 1 - a (the form 1 - float32(a) is off by 1.3e-5 / 1.7e-4).
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
        # summary() speaks select_epochs' convention (0-based, as Keras's epoch).
        assert summary["best_val_accuracy"]["epoch"] == fixed[decay]["accuracy"]
        assert summary["lowest_val_loss"]["epoch"] == fixed[decay]["loss"]
        assert summary["lowest_val_loss"]["val_loss"] == pytest.approx(
            run.after.logs[1][f"ema_{decay:g}_val_loss"]
        )
    # The free run selects by its own metrics: some of its epochs differ.
    free = {
        (d, c): eman_run.ema.summary()[f"{d:g}"][k]["epoch"]
        for d in DECAYS
        for c, k in (("accuracy", "best_val_accuracy"), ("loss", "lowest_val_loss"))
    }
    assert any(free[(d, c)] != fixed[d][c] for d, c in free)


def test_a_validation_runs_summary_fed_to_select_epochs_keeps_the_same_emas(tmp_path, eman_run):
    """Paper §4.1's protocol through the public API: `summary()`'s epochs go
    into `select_epochs` as they are (one convention), and the second run of
    the same trajectory keeps bitwise the EMAs the first one selected."""
    keys = {"accuracy": "best_val_accuracy", "loss": "lowest_val_loss"}
    summary = eman_run.ema.summary()
    fixed = {d: {c: summary[f"{d:g}"][k]["epoch"] for c, k in keys.items()} for d in DECAYS}
    run = train(tmp_path, select_epochs=fixed)
    for decay in DECAYS:
        for criterion in keys:
            for got, want in zip(run.ema.selected_weights(decay, criterion),
                                 eman_run.ema.selected_weights(decay, criterion)):
                np.testing.assert_array_equal(got, want)
    assert run.ema.summary() == summary


def test_a_selected_epoch_the_fit_never_reaches_is_warned_about_not_skipped(tmp_path):
    from callbacks.batch_norm import BatchNormRecompute

    fixed = {0.9: {"accuracy": 1, "loss": EPOCHS}}  # epoch EPOCHS (0-based) is one past the last
    ema = MultiEMA(decays=(0.9,), every_steps=1, validation_data=EMA_VALIDATION, select_epochs=fixed)
    bn = BatchNormRecompute(ema, TRAIN, EMA_VALIDATION, batch_size=BATCH_SIZE)
    expected = rf"epoch {EPOCHS} \(0-based\) for decay 0.9 \(loss\)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model().fit(*TRAIN, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0, callbacks=[ema, bn])
    messages = [str(w.message) for w in caught]
    assert any(re.search(f"^MultiEMA: .*{expected}.*ended after epoch {EPOCHS - 1}", m) for m in messages)
    assert any(re.search(rf"^BatchNormRecompute: .*0.9 \(loss\) fixed at epoch {EPOCHS}", m) for m in messages)
    assert ema.missing_selections() == [(0.9, "loss", EPOCHS)]
    assert ema.summary()["0.9"]["best_val_accuracy"]["epoch"] == 1
    assert set(bn.summary()["0.9"]) == {"best_val_accuracy"}
    with pytest.warns(UserWarning, match=expected + ".*save_selected writes no file"):
        paths = ema.save_selected(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["ema_0.9_acc.weights.h5"]


@pytest.mark.parametrize("nan_at", [(0,), (0, 2), (3,), (1, 2, 3)])
def test_an_epoch_scored_nan_is_never_selected(nan_at):
    """`x > nan` and `x < nan` are false: a NaN kept once (the first epoch's)
    would stay selected for ever. The selection is NumPy's nanargmax/nanargmin."""
    from callbacks.ema_selection import EpochSelection

    rng = np.random.default_rng(len(nan_at))
    losses, accuracies = rng.uniform(0.5, 2.0, 5), rng.uniform(0.1, 0.9, 5)
    losses[list(nan_at)] = accuracies[list(nan_at)] = np.nan
    selection = EpochSelection((0.9,))
    for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies)):
        selection.offer(0, epoch, loss, accuracy, lambda epoch=epoch: [np.full(2, epoch, "float32")])
    assert selection.summary(0, "accuracy")["epoch"] == int(np.nanargmax(accuracies))
    assert selection.summary(0, "loss")["epoch"] == int(np.nanargmin(losses))
    assert selection.get(0, "loss")["weights"][0][0] == np.nanargmin(losses)


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


def _statistics(model):
    layer = model.get_layer("bn")
    return [keras.ops.convert_to_numpy(v).copy() for v in (layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize("bn_mode", ["copy", "eman"])
def test_a_recompute_inside_swapped_in_never_touches_the_trained_statistics(bn_mode):
    """The usage `recompute_batch_norm`'s docstring shows: with `copy` the EMA
    uses the trained model's own statistics, so the swap must restore them."""
    from callbacks import recompute_batch_norm

    model = build_model()
    ema = MultiEMA(decays=(0.9,), every_steps=1, bn_mode=bn_mode, validation_data=EMA_VALIDATION)
    model.fit(*TRAIN, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[ema])
    trained, statistics = model.get_weights(), _statistics(model)
    with ema.swapped_in(0.9):
        recompute_batch_norm(model, TRAIN[0], batch_size=BATCH_SIZE)
        recomputed = _statistics(model)
    # The recompute did change them inside the block (else this test could not fail) ...
    assert not np.allclose(recomputed[0], statistics[0])
    # ... and the trained model has its own back, bitwise, with every other weight.
    for got, want in zip(_statistics(model), statistics):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(model.get_weights(), trained):
        np.testing.assert_array_equal(got, want)


def _model_with_metric(name):
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name=name)])
    return model


def test_an_accuracy_metric_under_another_name_fails_loudly():
    ema = MultiEMA(decays=(0.9,), every_steps=1, validation_data=EMA_VALIDATION)
    with pytest.raises(ValueError, match=re.escape("accuracy_metric='accuracy', but evaluate() returns ['acc', 'loss']")):
        _model_with_metric("acc").fit(*TRAIN, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[ema])


def test_the_accuracy_selection_uses_the_named_metric():
    logs = {}
    for metric in ("accuracy", "acc"):
        ema = MultiEMA(decays=(0.9, 0.968), every_steps=1, validation_data=EMA_VALIDATION, accuracy_metric=metric)
        history = _model_with_metric(metric).fit(*TRAIN, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0,
                                                 callbacks=[ema])
        logs[metric] = (history.history, ema.summary())
    (named, named_summary), (renamed, renamed_summary) = logs["accuracy"], logs["acc"]
    for decay in ("0.9", "0.968"):
        # Same seeds, same training: the same numbers under either name ...
        np.testing.assert_array_equal(renamed[f"ema_{decay}_val_acc"], named[f"ema_{decay}_val_accuracy"])
        assert renamed_summary[decay] == named_summary[decay]
        # ... and the selection is the logged curve's best epoch.
        curve = np.array(renamed[f"ema_{decay}_val_acc"])
        assert renamed_summary[decay]["best_val_accuracy"]["epoch"] == int(np.argmax(curve))
    np.testing.assert_array_equal(renamed["ema_best_val_accuracy"], named["ema_best_val_accuracy"])


def test_selecting_by_the_loss_only():
    ema = MultiEMA(decays=(0.9,), every_steps=1, validation_data=EMA_VALIDATION, accuracy_metric=None)
    history = _model_with_metric("acc").fit(*TRAIN, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0,
                                            callbacks=[ema])
    entry = ema.summary()["0.9"]
    assert entry["best_val_accuracy"] is None and "ema_best_val_accuracy" not in history.history
    assert entry["lowest_val_loss"]["epoch"] == int(np.argmin(history.history["ema_0.9_val_loss"]))


def test_the_public_api_imports_from_the_package_and_its_helpers_without_keras():
    import subprocess
    import sys

    import callbacks

    assert callbacks.MultiEMA is MultiEMA
    for name in callbacks.__all__:
        assert getattr(callbacks, name).__name__ == name
    code = ("import sys; import callbacks.warmup, callbacks.defaults, callbacks.ema_selection; "
            "assert 'keras' not in sys.modules, sorted(m for m in sys.modules if 'keras' in m)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_batch_scaling_follows_the_rule_in_closed_form():
    """Busbridge et al. (2023): a at batch B_ref acts as a^s at batch s * B_ref; the warm-up
    counts reference steps, (t_ref + 1) = s (t + 1)."""
    from callbacks.warmup import decays_at

    for scale in (0.5, 2.0, 4.0):
        for step in (1, 7, 100, 5000):
            reference = min(0.99, (scale * step) / (scale * step + 9))
            assert decays_at((0.99,), "steps", step, 1, batch_scale=scale)[0] == pytest.approx(reference**scale)
        assert decays_at((0.99,), "none", 3, 1, batch_scale=scale)[0] == pytest.approx(0.99**scale)
        # The release step is the first whose decay is the full a^s (brute force).
        released = warmup_released_after(0.99, 1, "steps", batch_scale=scale)
        full = [s for s in range(1, 2000) if decays_at((0.99,), "steps", s, 1, batch_scale=scale)[0]
                >= 0.99**scale * (1 - 1e-12)]
        assert released == full[0]
    assert decays_at((0.99,), "steps", 10, 1, batch_scale=1.0)[0] == min(0.99, 10 / 19)


def test_a_batch_scaled_multi_ema_matches_its_rederivation():
    model = build_model()
    ema = MultiEMA(decays=(0.9, 0.99), every_steps=EVERY_STEPS, validation_data=EMA_VALIDATION, batch_scale=2.0)
    recorder = Recorder()
    model.fit(*TRAIN, batch_size=BATCH_SIZE, epochs=2, shuffle=False, verbose=0, callbacks=[recorder, ema])
    state = ema.get_state()
    mask = averaged_mask(model, "eman")
    averages = [state[f"average/{i}"] for i in range(sum(k.startswith("average/") for k in state))]
    for index, decay in enumerate((0.9, 0.99)):
        average = [w.astype("float64") for w in recorder.steps[0]]
        for step in range(EVERY_STEPS, 2 * STEPS_PER_EPOCH + 1, EVERY_STEPS):
            a = min(decay, 2 * step / (2 * step + 9)) ** 2
            average = [a * m + (1 - a) * w for m, w in zip(average, recorder.steps[step])]
        want = [m for m, averaged in zip(average, mask) if averaged]
        for got, reference in zip(averages, want):
            np.testing.assert_allclose(got[index], reference, rtol=1e-5, atol=1e-6)
    assert ema.summary()["0.99"]["effective_per_step_decay"] == pytest.approx(0.99 ** (2 / EVERY_STEPS))
    with pytest.raises(ValueError, match="batch_scale"):
        MultiEMA(batch_scale=0)


@pytest.mark.parametrize("make, argument", [
    (lambda: MultiEMA(validation_data=EMA_VALIDATION, validation_batch_size=True), "validation_batch_size"),
    (lambda: callbacks.PredictionStability(EMA_VALIDATION, batch_size=True), "batch_size"),
    (lambda: callbacks.BatchNormRecompute(MultiEMA(), TRAIN, EMA_VALIDATION, batch_size=True),
     "batch_size"),
    (lambda: callbacks.SWA(1, train_data=TRAIN, batch_size=True), "batch_size"),
    (lambda: callbacks.DivergenceGuard(weights_every_steps=True), "weights_every_steps"),
], ids=["MultiEMA", "PredictionStability", "BatchNormRecompute", "SWA", "DivergenceGuard"])
def test_a_bool_is_refused_where_an_integer_is_expected(make, argument):
    """`True` is no count (it was taken as 1): refused, the message echoing it as Keras's do."""
    with pytest.raises(ValueError, match=re.escape(f"Invalid value for argument `{argument}`. Received: "
                                                   f"{argument}=True. Expected")):
        make()
