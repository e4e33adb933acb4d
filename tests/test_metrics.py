"""evaluation.metrics against brute-force loops, closed forms and hand-made predictions."""

import math

import numpy as np
import pytest

from evaluation import metrics


def _brute_force_ece(probabilities, labels, num_bins):
    """Equal-mass ECE, written as a plain loop over the confidence-sorted samples."""
    samples = []
    for row, label in zip(probabilities.tolist(), labels.tolist()):
        confidence = max(row)
        predicted = row.index(confidence)  # first maximum on ties
        samples.append((confidence, 1.0 if predicted == label else 0.0))
    samples = sorted(samples, key=lambda sample: sample[0])  # stable
    count = len(samples)
    total, start = 0.0, 0
    for bin_index in range(num_bins):
        size = count // num_bins + (1 if bin_index < count % num_bins else 0)
        members = samples[start : start + size]
        start += size
        if not members:
            continue
        mean_confidence = sum(c for c, _ in members) / size
        mean_correct = sum(k for _, k in members) / size
        total += size / count * abs(mean_correct - mean_confidence)
    assert start == count
    return total


def _random_probabilities(rng, count, classes, ties=False):
    logits = rng.normal(scale=2.0, size=(count, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:
        probabilities = np.round(probabilities, 1)  # many equal confidences
    return probabilities, rng.integers(0, classes, size=count)


@pytest.mark.parametrize("count", [1037, 1000, 50, 7])
def test_ece_matches_brute_force_loop(count):
    rng = np.random.default_rng(count)
    probabilities, labels = _random_probabilities(rng, count, classes=10)
    expected = _brute_force_ece(probabilities, labels, 100)
    assert metrics.expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-12)


def test_ece_with_tied_confidences_matches_brute_force_loop():
    rng = np.random.default_rng(1)
    probabilities, labels = _random_probabilities(rng, 555, classes=4, ties=True)
    expected = _brute_force_ece(probabilities, labels, 100)
    assert metrics.expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-12)


def test_ece_with_one_bin_is_accuracy_minus_mean_confidence():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])  # 3 of 4 correct; mean confidence 0.75
    assert metrics.expected_calibration_error(probabilities, labels, num_bins=1) == pytest.approx(0.0)
    labels = np.array([0, 1, 0, 0])  # 1 of 4 correct
    assert metrics.expected_calibration_error(probabilities, labels, num_bins=1) == pytest.approx(0.5)


def test_accuracy_and_nll_closed_forms():
    logits = np.array([[0.0, math.log(3.0)], [2.0, 2.0 + math.log(1.0 / 3.0)]])
    labels = np.array([1, 1])  # p(label) = 3/4 and 1/4
    assert metrics.accuracy(logits, labels) == 0.5
    assert metrics.negative_log_likelihood(logits, labels) == pytest.approx(
        (math.log(4 / 3) + math.log(4)) / 2
    )
    # Large logits must not overflow.
    assert metrics.negative_log_likelihood([[1000.0, 0.0]], [0]) == pytest.approx(0.0, abs=1e-12)


def test_temperature_scaling_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    true_temperature = 2.5
    logits = rng.normal(scale=4.0, size=(20000, 10))
    probabilities = metrics.softmax(logits / true_temperature)
    uniform = rng.random(len(logits))
    labels = np.minimum((probabilities.cumsum(axis=1) < uniform[:, None]).sum(axis=1), 9)
    fitted = metrics.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # It is a minimum of the NLL: nearby temperatures do no better.
    best = metrics.temperature_scaled_nll(logits, labels, fitted)
    for other in (fitted * 0.98, fitted * 1.02, 1.0):
        assert best <= metrics.temperature_scaled_nll(logits, labels, other)
    # Scaling by the true temperature calibrates: the ECE drops.
    result = metrics.calibration(logits, labels, logits, labels)
    assert result["temperature"] == fitted
    assert result["ece_temperature_scaled"] < result["ece"]


def test_temperature_at_a_bound_when_separable():
    logits = np.array([[3.0, 0.0], [0.0, 3.0]])
    assert metrics.fit_temperature(logits, [0, 1], bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=1e-5)


def test_jensen_shannon_closed_forms():
    assert metrics.jensen_shannon_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.log(2))
    # p = (1, 0), q = (½, ½): m = (¾, ¼); JS = ½ ln(4/3) + ½·½ ln(4/3) = ¾ ln(4/3).
    assert metrics.jensen_shannon_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(0.75 * math.log(4 / 3))
    # The mean over samples.
    p = [[1.0, 0.0], [0.3, 0.7]]
    q = [[0.0, 1.0], [0.3, 0.7]]
    assert metrics.jensen_shannon_divergence(p, q) == pytest.approx(math.log(2) / 2)


def test_jensen_shannon_is_finite_for_a_subnormal_probability():
    """A confident model's softmax reaches the smallest subnormal (5e-324), half of which rounds to 0: the
    mixture m = (p + q) / 2 was 0 where p > 0, and the divergence infinite. p = (1 - t, t), q = (1, 0) with
    t -> 0: JS = ½ t ln 2 + O(t²) (the ½ KL(q‖m) half is O(t)·t), i.e. 0 to double precision."""
    tiny = np.nextafter(0.0, 1.0)
    assert (tiny + 0.0) / 2.0 == 0.0  # the rounding the old form hit
    assert metrics.jensen_shannon_divergence([1.0, tiny], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-300)
    assert metrics.jensen_shannon_divergence(metrics.softmax([[0.0, -750.0]]), [[1.0, 0.0]]) == 0.0
    # And the closed form where t is small but resolvable.
    t = 1e-9
    assert metrics.jensen_shannon_divergence([1.0 - t, t], [1.0, 0.0]) == pytest.approx(0.5 * t * math.log(2), rel=1e-6)


def test_jensen_shannon_properties_on_random_distributions():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5) * 0.3, size=200)
    q = rng.dirichlet(np.ones(5) * 0.3, size=200)
    assert metrics.jensen_shannon_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    forward = metrics.jensen_shannon_divergence(p, q)
    assert forward == pytest.approx(metrics.jensen_shannon_divergence(q, p), rel=1e-12)
    assert 0.0 < forward <= math.log(2)


def test_churn_and_pairwise_mean_on_hand_made_predictions():
    a = np.array([0, 1, 2, 0])
    b = np.array([0, 1, 1, 0])
    c = np.array([1, 1, 2, 2])
    assert metrics.churn(a, b) == 0.25
    # Probabilities are reduced to their top-1 class.
    assert metrics.churn(np.eye(3)[a], np.eye(3)[c] * 0.9 + 0.01) == 0.5
    assert metrics.pairwise_mean(metrics.churn, [a, b, c]) == pytest.approx((0.25 + 0.5 + 0.75) / 3)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.pairwise_mean(metrics.churn, [a])


def test_prediction_stability_on_hand_made_correctness():
    epochs = [
        np.array([True, True, False, False]),
        np.array([True, False, False, True]),
        np.array([True, False, False, True]),
    ]
    assert metrics.prediction_stability(epochs[0], epochs[1]) == 0.5
    np.testing.assert_allclose(metrics.prediction_stability_over_epochs(epochs), [0.5, 1.0])
    correct = metrics.correctness(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
    np.testing.assert_array_equal(correct, [True, False])


def test_relative_weight_distance_on_hand_made_weights():
    sgd = [np.array([3.0, 0.0]), np.array([[4.0]])]  # norm 5
    ema = [np.array([3.0, 1.0]), np.array([[4.0]])]  # differs by 1
    assert metrics.relative_weight_distance(ema, sgd) == pytest.approx(0.2)
    assert metrics.relative_weight_distance(sgd, sgd) == 0.0
    with pytest.raises(ValueError, match="differs in shape"):
        metrics.relative_weight_distance([np.zeros(3), np.zeros((1, 1))], sgd)


def test_calibrated_ece_is_the_binomial_mean_absolute_deviation():
    """One confidence p for every sample, two classes: each of the B equal-mass bins holds m samples whose
    correctness is Binomial(m, p)/m under calibrated labels, so E[ECE] = E|Bin(m, p)/m - p| exactly."""
    from math import comb

    p, m, bins = 0.7, 20, 5
    probabilities = np.tile([p, 1 - p], (m * bins, 1))
    expected = sum(comb(m, k) * p ** k * (1 - p) ** (m - k) * abs(k / m - p) for k in range(m + 1))
    value = metrics.calibrated_ece(probabilities, np.random.default_rng(0), draws=4000, num_bins=bins)
    # 4,000 draws of a mean over 5 bins: standard error about 0.06 / sqrt(20,000) < 5e-4.
    assert value == pytest.approx(expected, abs=2e-3)


def test_temperature_checks_score_the_half_not_fitted_and_remove_the_bins_floor():
    """Table 5's secondaries (docs/analysis-plan.md): logits over-confident by a known factor 2.5, labels
    drawn from the true probabilities. After scaling, the test NLL is the true model's (to sampling noise)
    and the excess ECE is about 0; the test-half entry fits T on the first half only and scores the second."""
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=4.0, size=(8000, 10))
    probabilities = metrics.softmax(logits / 2.5)
    labels = np.minimum((probabilities.cumsum(axis=1) < rng.random(len(logits))[:, None]).sum(axis=1), 9)
    holdout_logits = rng.normal(scale=4.0, size=(8000, 10))
    holdout_probabilities = metrics.softmax(holdout_logits / 2.5)
    holdout_labels = np.minimum(
        (holdout_probabilities.cumsum(axis=1) < rng.random(8000)[:, None]).sum(axis=1), 9)
    checks = metrics.temperature_checks(logits, labels, metrics.fit_temperature(holdout_logits, holdout_labels),
                                        draws=50)
    true_nll = -np.mean(np.log(probabilities[np.arange(8000), labels]))
    assert checks["loss_temperature_scaled"] == pytest.approx(true_nll, abs=0.01)
    assert abs(checks["ece_temperature_scaled_excess"]) < 0.01  # a floor of ~2.5 % (80 per bin) removed
    half = checks["test_half"]
    temperature = metrics.fit_temperature(logits[:4000], labels[:4000])
    assert half["temperature"] == temperature
    scaled = logits[4000:] / temperature
    scaled -= scaled.max(1, keepdims=True)
    log_probabilities = scaled - np.log(np.exp(scaled).sum(1, keepdims=True))
    assert half["loss"] == pytest.approx(-np.mean(log_probabilities[np.arange(4000), labels[4000:]]), rel=1e-9)
    assert half["ece"] == pytest.approx(
        metrics.expected_calibration_error(np.exp(log_probabilities), labels[4000:]), abs=1e-9)
    assert 0 < half["ece"] - half["ece_excess"] < 0.06  # the floor of 100 bins of 40
    assert abs(half["ece_excess"]) < 0.015
    # Without a hold-out only the test half is measured.
    alone = metrics.temperature_checks(logits, labels, draws=5)
    assert alone["loss_temperature_scaled"] is None and alone["ece_temperature_scaled_excess"] is None
    assert alone["test_half"]["temperature"] == temperature
