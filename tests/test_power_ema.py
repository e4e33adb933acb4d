"""PowerFunctionEMA and post-hoc reconstruction (issue 13) against NumPy.

- The averages equal a float64 NumPy re-run of the recursion
  x <- β_t x + (1 - β_t) θ_t, β_t = (1 - 1/t)^(γ+1), over the recorded
  trajectory, and the closed-form profile (s^(γ+1) - (s-1)^(γ+1)) / t^(γ+1).
- Reconstructions from the snapshots of a third power function (σ_rel 0.07,
  between the tracked 0.05 and 0.10) and of the paper's EMA (tracked directly
  by MultiEMA in the same fit) are close to the directly tracked averages; the
  relative weight errors are printed (pytest -s) and bounded.
- The reconstruction's coefficients sum to 1 (EDM2 App. C.3): they equal a
  direct solve of the constrained problem's KKT system, a constant trajectory
  comes back exactly, and on the recorded trajectory the constrained weights
  are no further from the tracked ones than the unconstrained least squares'.
- The state resumes exactly; a fresh fit refuses old snapshots; float16
  snapshots cost a measured extra error.
"""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks import power_profiles, power_snapshots  # noqa: E402
from callbacks.ema import MultiEMA  # noqa: E402
from callbacks.power_ema import PowerFunctionEMA  # noqa: E402
from evaluation import posthoc  # noqa: E402

BATCH, STEPS_PER_EPOCH, EPOCHS, EVERY = 16, 25, 8, 10  # 200 steps, a snapshot every 10


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS_PER_EPOCH, 6)).astype("float32")
    y = (x[:, 0] + 0.5 * rng.normal(size=len(x)) > 0).astype("int32") + (x[:, 1] > 1).astype("int32")
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(12)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Trajectory(keras.callbacks.Callback):
    """θ_0 (train begin) and θ_t after every step: all of model.weights, float64."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_begin(self, logs=None):
        if not self.weights:
            self.weights.append([w.astype("float64") for w in self.model.get_weights()])

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([w.astype("float64") for w in self.model.get_weights()])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("snapshots"))
    directory16 = str(tmp_path_factory.mktemp("snapshots16"))
    model, (x, y), trajectory = _model(), _data(), _Trajectory()
    tracked = PowerFunctionEMA(sigma_rels=(0.05, 0.10), snapshot_every_steps=EVERY, directory=directory)
    half = PowerFunctionEMA(sigma_rels=(0.05, 0.10), snapshot_every_steps=EVERY, directory=directory16,
                            snapshot_dtype="float16")
    between = PowerFunctionEMA(sigma_rels=(0.07,), directory=None)
    ema = MultiEMA(decays=(0.95, 0.98), every_steps=2, warmup="steps", validation_data=(x[:32], y[:32]),
                   accuracy_metric=None)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[trajectory, tracked, half, between, ema])
    return model, trajectory.weights, tracked, between, ema, directory, directory16


def _numpy_power_ema(trajectory, gamma, indices):
    average = [trajectory[0][i] for i in indices]
    for t in range(1, len(trajectory)):
        beta = (1.0 - 1.0 / t) ** (gamma + 1.0)
        average = [beta * a + (1.0 - beta) * trajectory[t][i] for a, i in zip(average, indices)]
    return average


def _averages(callback, index):
    return [np.asarray(keras.ops.convert_to_numpy(a))[index] for a in callback.averages.averages]


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    # EDM2 §3: σ_rel 0.05 and 0.10 correspond to γ ≈ 16.97 and 6.94.
    assert power_profiles.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert power_profiles.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert power_profiles.gamma_to_sigma_rel(power_profiles.sigma_rel_to_gamma(sigma)) == pytest.approx(sigma)


def test_profiles_are_the_recursions_unrolled():
    rng = np.random.default_rng(1)
    thetas = rng.normal(size=(41, 3))
    gamma = 6.94
    x = thetas[0]
    for t in range(1, 41):
        beta = (1 - 1 / t) ** (gamma + 1)
        x = beta * x + (1 - beta) * thetas[t]
    np.testing.assert_allclose(power_profiles.power_profile(gamma, 40) @ thetas, x, rtol=1e-12)
    # The paper's EMA with T = 3 and the warm-up min(α, (t+1)/(t+10)) in optimizer steps.
    x = thetas[0]
    for step in range(3, 41, 3):
        a = min(0.9, step / (step + 9))  # t = step - 1
        x = a * x + (1 - a) * thetas[step]
    np.testing.assert_allclose(power_profiles.ema_profile(0.9, 40, every_steps=3) @ thetas, x, rtol=1e-12)


SNAPSHOT_PROFILES = [power_profiles.power_profile(gamma, step)
                     for step in range(10, 201, 10) for gamma in (16.97, 6.94)]
TARGETS = [  # (profile, resolution): inside the snapshots' reach, and far outside it (EMA 0.5)
    (power_profiles.power_profile(power_profiles.sigma_rel_to_gamma(0.07), 200), 1),
    (power_profiles.ema_profile(0.95, 200, every_steps=2), 2),
    (power_profiles.ema_profile(0.98, 150, every_steps=2), 2),
    (power_profiles.ema_profile(0.5, 200, every_steps=2), 2),
]


@pytest.mark.parametrize("target, resolution", TARGETS, ids=["power-0.07", "ema-0.95", "ema-0.98-150", "ema-0.5"])
def test_the_coefficients_sum_to_one_and_a_constant_trajectory_comes_back_exactly(target, resolution):
    reconstruction = power_profiles.reconstruct(SNAPSHOT_PROFILES, target, resolution)
    assert reconstruction.coefficients.sum() == pytest.approx(1.0, abs=1e-12)
    # θ_t = c for every t: each snapshot is (Σ_s p_i[s]) c = c, and so must the combination be.
    constant = np.random.default_rng(2).normal(size=(len(target), 5))  # 5 values, the same every step
    constant[:] = constant[0]
    rebuilt = sum(x * (SNAPSHOT_PROFILES[i] @ constant[:len(SNAPSHOT_PROFILES[i])])
                  for x, i in zip(reconstruction.coefficients, reconstruction.snapshots))
    np.testing.assert_allclose(rebuilt, constant[0], rtol=1e-12, atol=0)


def test_the_constrained_solution_is_the_kkt_systems():
    # Random averaging profiles of different lengths; the minimizer of ||P^T x - b|| with Σ x = 1
    # solves [[P P^T, 1], [1^T, 0]] [x; λ] = [P b; 1] (Lagrange), here by a direct dense solve.
    rng = np.random.default_rng(3)
    for resolution in (1, 3):
        profiles = [rng.random(length) for length in (12, 20, 25, 31, 40, 40)]
        profiles = [p / p.sum() for p in profiles]
        target = rng.random(41)
        target /= target.sum()
        reconstruction = power_profiles.reconstruct(profiles, target, resolution)
        basis = _block_sums([np.pad(p, (0, 41 - len(p))) for p in profiles], resolution)
        b = _block_sums(target, resolution)[0]
        count = len(profiles)
        kkt = np.block([[basis @ basis.T, np.ones((count, 1))], [np.ones((1, count)), np.zeros((1, 1))]])
        want = np.linalg.solve(kkt, np.append(basis @ b, 1.0))[:count]
        np.testing.assert_allclose(reconstruction.coefficients, want, rtol=1e-9, atol=1e-12)
        residual = np.linalg.norm(basis.T @ want - b) / np.linalg.norm(b)
        assert reconstruction.residual == pytest.approx(residual, rel=1e-9)
        # Not the unconstrained optimum: that one sums to something else and fits better.
        free = np.linalg.lstsq(basis.T, b, rcond=None)[0]
        assert abs(free.sum() - 1) > 1e-3 and np.linalg.norm(basis.T @ free - b) < np.linalg.norm(basis.T @ want - b)


def test_a_constant_trajectory_is_rebuilt_from_float32_snapshots(tmp_path):
    # Learning rate 0 and no BatchNorm: every θ_t is θ_0, so any average of them is θ_0.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(True))
    initial = model.get_weights()
    x, y = _data()
    directory = str(tmp_path / "snapshots")
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[PowerFunctionEMA(sigma_rels=(0.05, 0.10), snapshot_every_steps=EVERY, directory=directory)])
    snapshots = posthoc.snapshots_of(directory)
    config = {"ema_every_steps": 2, "ema_warmup": "steps"}
    for kind, value in (("power", 0.07), ("ema", 0.95), ("ema", 0.98)):
        target = posthoc.plan_one(snapshots, kind, value, EPOCHS, STEPS_PER_EPOCH, config)
        error = posthoc.relative_distance(posthoc.combine(target), initial)
        # float32 rounding of the snapshots, grown at most by Σ |x|.
        assert error < 1e-7 * target.reconstruction.amplification, (kind, value, error)


def test_averages_equal_a_numpy_rederivation(trained):
    model, trajectory, tracked, between, _, directory, _ = trained
    indices = tracked.averages.weight_indices
    assert len(trajectory) == EPOCHS * STEPS_PER_EPOCH + 1
    for index, gamma in enumerate(tracked.gammas):
        want = _numpy_power_ema(trajectory, gamma, indices)
        closed = [sum(p * trajectory[s][i] for s, p in enumerate(power_profiles.power_profile(gamma, 200)))
                  for i in indices]
        for got, w, c in zip(_averages(tracked, index), want, closed):
            np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)
            np.testing.assert_allclose(w, c, rtol=1e-9, atol=1e-12)
    # Averaged: the trainable weights and the BatchNorm statistics, nothing else.
    names = [model.weights[i].path for i in indices]
    assert len(names) == 8 and sum(n.endswith(("moving_mean", "moving_variance")) for n in names) == 2
    # Snapshot files: one every EVERY steps, each equal to the recursion stopped there.
    snapshots = power_snapshots.list_snapshots(directory)
    assert [step for step, _ in snapshots] == list(range(EVERY, 201, EVERY))
    step, path = snapshots[6]
    for index, gamma in enumerate(tracked.gammas):
        want = _numpy_power_ema(trajectory[:step + 1], gamma, indices)
        for got, w in zip(power_snapshots.read_averages(path, index), want):
            np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)


def _reconstruction_error(directory, kind, value, step, tracked_average, config):
    snapshots = posthoc.snapshots_of(directory)
    target = posthoc.plan_one(snapshots, kind, value, step // STEPS_PER_EPOCH, STEPS_PER_EPOCH, config)
    rebuilt = posthoc.combine(target)
    return posthoc.relative_distance(rebuilt, tracked_average), target.reconstruction


def _block_sums(profiles, resolution):
    """Sums over blocks of `resolution` steps counted back from the last step (NumPy, rows)."""
    profiles = np.atleast_2d(profiles)[:, ::-1]
    padded = np.pad(profiles, ((0, 0), (0, -profiles.shape[1] % resolution)))
    return padded.reshape(len(padded), -1, resolution).sum(-1)


def _unconstrained_error(directory, kind, value, step, tracked_average, config):
    """The same reconstruction by plain least squares (coefficients free to sum to anything)."""
    snapshots = [s for s in posthoc.snapshots_of(directory) if s.step <= step]
    resolution = config["ema_every_steps"] if kind == "ema" else 1
    basis = _block_sums([power_profiles.power_profile(s.gamma, s.step, step + 1) for s in snapshots], resolution)
    target = _block_sums(posthoc.target_profile(kind, value, step, config), resolution)[0]
    coefficients = np.linalg.lstsq(basis.T, target, rcond=None)[0]
    rebuilt = [sum(c * a for c, a in zip(coefficients, arrays)) for arrays in zip(
        *(power_snapshots.read_averages(s.path, s.index) for s in snapshots))]
    return posthoc.relative_distance(rebuilt, tracked_average), coefficients.sum()


def test_a_third_power_function_and_the_papers_ema_are_rebuilt_from_snapshots(trained):
    _, _, _, between, ema, directory, directory16 = trained
    config = {"ema_every_steps": 2, "ema_warmup": "steps"}
    cases = [("power", 0.07, _averages(between, 0)), ("ema", 0.95, _averages(ema, 0)),
             ("ema", 0.98, _averages(ema, 1))]
    for kind, value, tracked_average in cases:
        error, reconstruction = _reconstruction_error(directory, kind, value, 200, tracked_average, config)
        error16, _ = _reconstruction_error(directory16, kind, value, 200, tracked_average, config)
        free_error, free_sum = _unconstrained_error(directory, kind, value, 200, tracked_average, config)
        print(f"{kind} {value}: profile residual {reconstruction.residual:.2e}, relative weight error "
              f"{error:.2e} (float16 snapshots {error16:.2e}; unconstrained least squares {free_error:.2e}, "
              f"its sum x {free_sum:.6f}), sum |x| {reconstruction.amplification:.2f}")
        assert reconstruction.residual < 0.05
        assert error < 0.01 and error16 < 0.01
        # The weight error follows from the profile error: far below the tracked weights' own scale.
        assert error < 2 * reconstruction.residual + 1e-4
        assert reconstruction.coefficients.sum() == pytest.approx(1.0, abs=1e-12)
        assert error <= free_error
    # The power EMA of σ_rel 0.05 at a snapshot step is that snapshot: residual 0, error float32 rounding.
    tracked = posthoc.snapshots_of(directory)
    error, reconstruction = _reconstruction_error(directory, "power", 0.05, 200,
                                                  power_snapshots.read_averages(tracked[-2].path, 0), config)
    assert reconstruction.residual < 1e-6 and error < 1e-6


def test_a_profile_narrower_than_the_snapshot_spacing_is_refused(trained):
    directory = trained[5]
    snapshots = posthoc.snapshots_of(directory)
    config = {"ema_every_steps": 2, "ema_warmup": "steps"}
    target = posthoc.plan_one(snapshots, "ema", 0.5, 8, STEPS_PER_EPOCH, config)
    assert target.reconstruction.residual > 0.1  # a window of ~2 updates (4 steps), snapshots 10 steps apart
    from utils.errors import UsageError

    with pytest.raises(UsageError, match=r"EMA 0.5 at epoch 8: .* residual of 0\.\d+ \(> --max-residual 0.05"):
        posthoc.plan(snapshots, config, STEPS_PER_EPOCH, (0.5,), (), [8], 0.05)
    with pytest.raises(UsageError, match=r"--epochs 9: the run's snapshots end at step 200 \(epoch 8\)"):
        posthoc.plan(snapshots, config, STEPS_PER_EPOCH, (0.95,), (), [9], 0.05)


def test_resumed_state_continues_exactly_and_rewrites_the_same_snapshots(tmp_path):
    x, y = _data()
    straight = PowerFunctionEMA(snapshot_every_steps=EVERY, directory=str(tmp_path / "a"))
    _model().fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0, callbacks=[straight])
    first = PowerFunctionEMA(snapshot_every_steps=EVERY, directory=str(tmp_path / "b"))
    model = _model()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[first])
    state = first.get_state()
    resumed = PowerFunctionEMA(snapshot_every_steps=EVERY, directory=str(tmp_path / "b"))
    resumed.set_state(state)
    model.fit(x, y, batch_size=BATCH, initial_epoch=2, epochs=4, shuffle=False, verbose=0, callbacks=[resumed])
    for got, want in zip(_averages(resumed, slice(None)), _averages(straight, slice(None))):
        np.testing.assert_array_equal(got, want)
    a, b = power_snapshots.list_snapshots(str(tmp_path / "a")), power_snapshots.list_snapshots(str(tmp_path / "b"))
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(EVERY, 101, EVERY))
    for (_, pa), (_, pb) in zip(a, b):
        for index in (0, 1):
            for u, v in zip(power_snapshots.read_averages(pa, index), power_snapshots.read_averages(pb, index)):
                np.testing.assert_array_equal(u, v)
    # A fresh fit into a directory that holds another training's snapshots is refused.
    fresh = PowerFunctionEMA(snapshot_every_steps=EVERY, directory=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="already holds PowerFunctionEMA snapshots"):
        _model().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[fresh])
    with pytest.raises(ValueError, match="saved with sigma_rels="):
        PowerFunctionEMA(sigma_rels=(0.05,)).set_state(state)


def test_the_last_steps_are_snapshotted_at_the_end_of_training(tmp_path):
    """15 steps, a snapshot every 4: 4, 8, 12 and the end, 15 (app.posthoc needs the last epoch)."""
    x, y = (a[:5 * BATCH] for a in _data())
    trajectory = _Trajectory()
    tracked = PowerFunctionEMA(sigma_rels=(0.05, 0.10), snapshot_every_steps=4, directory=str(tmp_path))
    _model().fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[trajectory, tracked])
    snapshots = power_snapshots.list_snapshots(str(tmp_path))
    assert [step for step, _ in snapshots] == [4, 8, 12, 15]
    indices = tracked.averages.weight_indices
    for index, gamma in enumerate(tracked.gammas):
        want = _numpy_power_ema(trajectory.weights, gamma, indices)
        for got, w in zip(power_snapshots.read_averages(snapshots[-1][1], index), want):
            np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma_rels": (0.05, 0.05)}, "sigma_rels"),
    ({"sigma_rels": (0.3,)}, "sigma_rels"),
    ({"snapshot_every_steps": 0}, "snapshot_every_steps"),
    ({"snapshot_dtype": "bfloat16"}, "snapshot_dtype"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{message}`"):
        PowerFunctionEMA(**kwargs)


@pytest.mark.parametrize("kwargs", [{"snapshot_every_steps": 100}, {"snapshot_dtype": "float16"}])
def test_a_snapshot_setting_without_a_directory_is_refused(kwargs):
    """Without a directory no snapshot is written: the setting would be ignored."""
    (name, value), = kwargs.items()
    with pytest.raises(ValueError, match=re.escape(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected None when directory is None")):
        PowerFunctionEMA(**kwargs)
    assert PowerFunctionEMA(directory="unused", **kwargs).get_config()[name] == value


def test_the_fused_update_is_traced_once(trained):
    update = trained[2].averages._update
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a TensorFlow tf.function's tracing count")
    assert update.experimental_get_tracing_count() == 1  # 200 calls, one trace


def test_swapped_in_holds_the_average_and_restores_the_weights(trained):
    model, _, tracked, *_ = trained
    before = model.get_weights()
    with tracked.swapped_in(0.10):
        inside = [model.get_weights()[i] for i in tracked.averages.weight_indices]
    for got, want in zip(inside, _averages(tracked, 1)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
