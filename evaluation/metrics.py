"""Metrics on predictions and weights, in NumPy: accuracy, NLL, ECE, temperature scaling, churn, JS.

Backend-neutral on purpose: every function takes array-likes (NumPy arrays, or
anything `np.asarray` accepts, e.g. the output of `model.predict` under any
Keras backend) and returns Python floats or NumPy arrays. Computations are in
float64.

What the papers measure, and where:

- Calibration (Morales-Brotons et al., §4.6, Table 5): ECE with M=100
  equal-mass bins (Nixon et al. 2019), before and after temperature scaling
  (Guo et al. 2017) fitted on the 20 % hold-out.
- Prediction consistency (§4.4, Table 3): churn (fraction of samples whose
  top-1 class differs) and Jensen–Shannon divergence, pairwise over seeds.
- Adda et al. (Fig. 2 and App. B): stability of predictions between consecutive
  epochs (fraction of samples whose correctness did not change) and the
  relative distance ||θ_EMA − θ_SGD|| / ||θ_SGD||.

Example:

    probabilities = softmax(logits)
    accuracy(logits, labels), negative_log_likelihood(logits, labels)
    expected_calibration_error(probabilities, labels)           # M = 100
    calibration(test_logits, test_labels, holdout_logits, holdout_labels)
    pairwise_mean(churn, [probabilities_seed0, probabilities_seed1, probabilities_seed2])
"""

import itertools
import math

import numpy as np

ECE_BINS = 100  # paper §4.6: M = 100 equal-mass bins
# Search range of the temperature; wide enough for any sane network (Guo et al.
# report fitted temperatures between ~1 and ~3).
TEMPERATURE_BOUNDS = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def _as_logits_and_labels(logits, labels, what="logits"):
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"Expected `{what}` of shape (samples, classes). Received shape {logits.shape}.")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"Expected `labels` of shape ({logits.shape[0]},) to match `{what}`. "
            f"Received shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError("Expected integer class indices in `labels`.")
        labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(
            f"Expected `labels` in [0, {logits.shape[1]}). "
            f"Received values in [{labels.min()}, {labels.max()}]."
        )
    return logits, labels


def log_softmax(logits):
    """log softmax over the last axis, stable for large logits."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def softmax(logits):
    """Class probabilities from logits (last axis)."""
    return np.exp(log_softmax(logits))


def top1(predictions):
    """Predicted classes: `predictions` are 1-D class indices, or 2-D logits / probabilities."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 1:
        return predictions.astype(np.int64)
    if predictions.ndim == 2:
        # On exact ties np.argmax takes the first class; the same rule everywhere here.
        return np.argmax(predictions, axis=1)
    raise ValueError(f"Expected class indices (N,) or scores (N, classes). Received shape {predictions.shape}.")


def correctness(predictions, labels):
    """Boolean (N,): whether the top-1 class of each sample equals its label."""
    predicted = top1(predictions)
    labels = np.asarray(labels)
    if labels.shape != predicted.shape:
        raise ValueError(f"`labels` shape {labels.shape} does not match predictions {predicted.shape}.")
    return predicted == labels


def accuracy(predictions, labels):
    """Fraction of samples whose top-1 class (of logits, probabilities or indices) is the label."""
    return float(np.mean(correctness(predictions, labels)))


def negative_log_likelihood(logits, labels):
    """Mean cross-entropy −log softmax(logits)[label], natural log (Keras' sparse CE from logits)."""
    logits, labels = _as_logits_and_labels(logits, labels)
    return float(-np.mean(log_softmax(logits)[np.arange(labels.size), labels]))


def expected_calibration_error(probabilities, labels, num_bins=ECE_BINS):
    """ECE with equal-mass bins (Nixon et al. 2019), as in the paper's §4.6 (M = 100).

    The samples are sorted by confidence (the largest class probability) and the
    sorted order is cut into `num_bins` bins of equal count with
    `np.array_split`: when N is not divisible by M the first N mod M bins hold
    one sample more; when N < M the trailing bins are empty and weigh nothing.
    The sort is stable, so samples of equal confidence keep their input order
    and a run of ties may be split between two neighbouring bins (the binning
    is by rank, not by value). Then

        ECE = Σ_b (n_b / N) · |acc_b − conf_b|,

    acc_b the fraction correct (top-1, first class on exact ties) and conf_b
    the mean confidence in bin b. Returned as a fraction (×100 for the paper's %).

    Args:
        probabilities: (N, classes) class probabilities (e.g. `softmax(logits)`).
        labels: (N,) integer labels.
        num_bins: number of equal-mass bins. Defaults to 100.
    """
    probabilities, labels = _as_logits_and_labels(probabilities, labels, what="probabilities")
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"Invalid value for argument `num_bins`. Received: num_bins={num_bins}. Expected an integer >= 1.")
    if labels.size == 0:
        raise ValueError("Expected at least one sample.")
    confidence = np.max(probabilities, axis=1)
    correct = (np.argmax(probabilities, axis=1) == labels).astype(np.float64)
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for indices in np.array_split(order, int(num_bins)):
        if indices.size:
            gap = abs(np.mean(correct[indices]) - np.mean(confidence[indices]))
            total += indices.size / labels.size * gap
    return float(total)


def calibrated_ece(probabilities, rng, draws=200, num_bins=ECE_BINS):
    """The expected ECE of a model that is calibrated by construction, at these confidences.

    Labels are drawn from the model's own probabilities (`draws` times) and scored
    with `expected_calibration_error`: the floor that finite bins put under any
    model (docs/analysis-plan.md, table5's excess ECE). On 10,000 images and 100
    bins it is about 1.7 % for the small budget's ResNet-20 (docs/results/).
    """
    probabilities = np.asarray(probabilities, np.float64)
    cumulative = np.cumsum(probabilities, axis=1)
    values = []
    for _ in range(draws):
        uniform = rng.random((len(probabilities), 1))
        labels = np.minimum((uniform > cumulative).sum(axis=1), probabilities.shape[1] - 1)
        values.append(expected_calibration_error(probabilities, labels, num_bins))
    return float(np.mean(values))


def temperature_scaled_nll(logits, labels, temperature):
    """Mean NLL of softmax(logits / temperature)."""
    return negative_log_likelihood(np.asarray(logits, dtype=np.float64) / temperature, labels)


def fit_temperature(logits, labels, bounds=TEMPERATURE_BOUNDS, tolerance=1e-6):
    """Temperature scaling (Guo et al. 2017): the T > 0 minimizing the NLL of softmax(logits / T).

    Fit on held-out logits (the paper uses the 20 % validation split, §4.6).
    The NLL is convex in β = 1/T (log-sum-exp of a linear function minus a
    linear term), hence unimodal in log T, so a golden-section search on log T
    over `bounds` finds the global minimum without SciPy. If the minimum lies
    outside `bounds` (e.g. perfectly separable logits, which want T → 0) the
    nearest bound is returned.

    Args:
        logits: (N, classes) held-out logits.
        labels: (N,) held-out labels.
        bounds: (lowest, highest) temperature searched. Defaults to (0.05, 20).
        tolerance: width of the final interval in log T. Defaults to 1e-6.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    lowest, highest = bounds
    if not 0 < lowest < highest:
        raise ValueError(f"Invalid value for argument `bounds`. Received: bounds={bounds}. Expected 0 < low < high.")
    rows = np.arange(labels.size)
    label_logits = logits[rows, labels]

    def nll(log_temperature):
        scaled = logits * math.exp(-log_temperature)
        peak = np.max(scaled, axis=1)
        log_normalizer = peak + np.log(np.sum(np.exp(scaled - peak[:, None]), axis=1))
        return float(np.mean(log_normalizer - label_logits * math.exp(-log_temperature)))

    low, high = math.log(lowest), math.log(highest)
    inner_low = high - _GOLDEN * (high - low)
    inner_high = low + _GOLDEN * (high - low)
    value_low, value_high = nll(inner_low), nll(inner_high)
    while high - low > tolerance:
        if value_low <= value_high:
            high, inner_high, value_high = inner_high, inner_low, value_low
            inner_low = high - _GOLDEN * (high - low)
            value_low = nll(inner_low)
        else:
            low, inner_low, value_low = inner_low, inner_high, value_high
            inner_high = low + _GOLDEN * (high - low)
            value_high = nll(inner_high)
    return float(math.exp((low + high) / 2.0))


def calibration(logits, labels, holdout_logits, holdout_labels, num_bins=ECE_BINS):
    """The paper's Table 5 numbers for one model: ECE, fitted temperature, ECE after scaling.

    The temperature is fitted on (`holdout_logits`, `holdout_labels`) and both
    ECEs are measured on (`logits`, `labels`). Returns a dict with `accuracy`,
    `loss` (NLL, unscaled), `ece`, `temperature`, `ece_temperature_scaled`,
    as fractions.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    temperature = fit_temperature(holdout_logits, holdout_labels)
    return {
        "accuracy": accuracy(logits, labels),
        "loss": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(softmax(logits), labels, num_bins),
        "temperature": temperature,
        "ece_temperature_scaled": expected_calibration_error(softmax(logits / temperature), labels, num_bins),
    }


def temperature_checks(logits, labels, temperature=None, draws=200, seed=0, num_bins=ECE_BINS):
    """Table 5's secondary numbers (docs/analysis-plan.md): what temperature scaling leaves, net of the
    floor that `num_bins` bins put under any model.

    With `temperature`, the one fitted on a hold-out (the paper's protocol, `calibration`'s):
    `loss_temperature_scaled` (test NLL at it) and `ece_temperature_scaled_excess` (test ECE at it minus
    `calibrated_ece` at the same confidences).
    Always, `test_half`: T fitted on the first half of the test examples, scored on the second half
    (`temperature`, `loss`, `ece`, `ece_excess`): no hold-out needed, none of the scored images fitted.
    `seed` fixes the floor's label draws. Fractions and nats.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    rng = np.random.default_rng(seed)

    def scored(temperature, part_logits, part_labels):
        probabilities = softmax(part_logits / temperature)
        ece = expected_calibration_error(probabilities, part_labels, num_bins)
        return {"temperature": temperature, "loss": temperature_scaled_nll(part_logits, part_labels, temperature),
                "ece": ece, "ece_excess": ece - calibrated_ece(probabilities, rng, draws, num_bins)}

    half = labels.size // 2
    if half < 1:
        raise ValueError(f"Expected at least 2 samples to split in halves; received {labels.size}.")
    result = {"test_half": scored(fit_temperature(logits[:half], labels[:half]), logits[half:], labels[half:]),
              "loss_temperature_scaled": None, "ece_temperature_scaled_excess": None}
    if temperature is not None:
        at_holdout = scored(temperature, logits, labels)
        result.update(loss_temperature_scaled=at_holdout["loss"],
                      ece_temperature_scaled_excess=at_holdout["ece_excess"])
    return result


def churn(predictions_a, predictions_b):
    """Fraction of samples whose top-1 class differs between two models (paper §4.4).

    Each argument is (N,) class indices or (N, classes) logits / probabilities.
    """
    first, second = top1(predictions_a), top1(predictions_b)
    if first.shape != second.shape:
        raise ValueError(f"Predictions differ in shape: {first.shape} vs {second.shape}.")
    return float(np.mean(first != second))


def _kl_to_mixture(p, q):
    """KL(p‖m), m = ½(p + q): Σ p log(2p / (p + q)), with 0 · log 0 = 0.

    Written as 2p / (p + q), not p / m: half of the smallest subnormal rounds to 0 (m = 0 where p > 0 gave
    an infinite divergence for a confident model), while p + q >= p > 0 keeps the ratio in (0, 2].
    """
    positive = p > 0
    ratio = 2.0 * np.where(positive, p, 1.0) / np.where(positive, p + q, 2.0)
    return np.sum(np.where(positive, p * np.log(ratio), 0.0), axis=-1)


def jensen_shannon_divergence(probabilities_a, probabilities_b):
    """Mean over samples of JS(p‖q) = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q), natural log.

    0 for identical distributions, symmetric, at most ln 2 (reached by
    disjoint supports). Arguments are (N, classes) or (classes,) probabilities.
    """
    p = np.asarray(probabilities_a, dtype=np.float64)
    q = np.asarray(probabilities_b, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"Probabilities differ in shape: {p.shape} vs {q.shape}.")
    if p.ndim not in (1, 2):
        raise ValueError(f"Expected probabilities (classes,) or (N, classes). Received shape {p.shape}.")
    per_sample = 0.5 * _kl_to_mixture(p, q) + 0.5 * _kl_to_mixture(q, p)
    return float(np.mean(np.maximum(per_sample, 0.0)))  # clip rounding below 0


def pairwise_mean(metric, predictions):
    """Mean of `metric(a, b)` over all unordered pairs of a list (e.g. one entry per seed).

    With 3 seeds this is the mean over the pairs (0,1), (0,2), (1,2), as in the
    paper's Table 3 ("pair-wise churn and JS divergence").
    """
    return float(np.mean(pairwise_values(metric, predictions)))


def pairwise_values(metric, predictions):
    """`metric(a, b)` for every unordered pair, in `itertools.combinations` order ((0,1), (0,2), (1,2))."""
    predictions = list(predictions)
    if len(predictions) < 2:
        raise ValueError(f"Expected predictions of at least 2 models. Received {len(predictions)}.")
    return [float(metric(a, b)) for a, b in itertools.combinations(predictions, 2)]


def prediction_stability(correct_previous, correct_current):
    """Fraction of samples whose correctness did not change between two epochs (Adda et al., Fig. 2).

    Arguments are boolean (N,) arrays, e.g. `correctness(predictions, labels)`.
    """
    previous = np.asarray(correct_previous, dtype=bool)
    current = np.asarray(correct_current, dtype=bool)
    if previous.shape != current.shape or previous.ndim != 1:
        raise ValueError(f"Expected two (N,) arrays. Received shapes {previous.shape} and {current.shape}.")
    return float(np.mean(previous == current))


def prediction_stability_over_epochs(correct_by_epoch):
    """Stability between each pair of consecutive epochs: (E,) correctness arrays -> (E − 1,) values."""
    correct_by_epoch = list(correct_by_epoch)
    return np.array(
        [prediction_stability(a, b) for a, b in zip(correct_by_epoch[:-1], correct_by_epoch[1:])],
        dtype=np.float64,
    )


def relative_weight_distance(ema_weights, sgd_weights):
    """||θ_EMA − θ_SGD|| / ||θ_SGD||, Euclidean norms over all arrays together (Adda et al., App. B).

    Arguments are matching lists of arrays (e.g. `model.get_weights()`; pass
    the same subset for both, e.g. trainable weights only).
    """
    ema_weights, sgd_weights = list(ema_weights), list(sgd_weights)
    if len(ema_weights) != len(sgd_weights):
        raise ValueError(f"Expected as many EMA as SGD arrays. Received {len(ema_weights)} and {len(sgd_weights)}.")
    difference_squared = 0.0
    sgd_squared = 0.0
    for index, (ema, sgd) in enumerate(zip(ema_weights, sgd_weights)):
        ema = np.asarray(ema, dtype=np.float64)
        sgd = np.asarray(sgd, dtype=np.float64)
        if ema.shape != sgd.shape:
            raise ValueError(f"Weight {index} differs in shape: EMA {ema.shape} vs SGD {sgd.shape}.")
        difference_squared += float(np.sum((ema - sgd) ** 2))
        sgd_squared += float(np.sum(sgd**2))
    if sgd_squared == 0.0:
        raise ValueError("The SGD weights have norm 0; the relative distance is undefined.")
    return math.sqrt(difference_squared) / math.sqrt(sgd_squared)
