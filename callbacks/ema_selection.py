"""Per EMA, the epoch of best validation accuracy and of lowest validation loss (paper §4.1).

`EpochSelection` keeps, for every decay and criterion, the selected epoch,
its validation metrics and the EMA's weights then (host memory); or, with
`select_epochs`, takes the epochs fixed in advance (the paper's final run on
the full training set uses the epochs chosen on the validation run: "early
stopping is not tuned again on the test set"). `MultiEMA` feeds it after
every evaluation; its state is a flat dict of NumPy values for checkpoints.
"""

import numpy as np

from callbacks.arguments import invalid

CRITERIA = ("accuracy", "loss")
# criterion -> the key of `MultiEMA.summary()` entries (and of summary.json).
SUMMARY_KEYS = {"accuracy": "best_val_accuracy", "loss": "lowest_val_loss"}
_FILE_SUFFIXES = {"accuracy": "acc", "loss": "loss"}
CRITERION_LABELS = {"accuracy": "acc.", "loss": "loss"}  # in tables: "EMA 0.998 (acc.)"


def weights_file_name(decay, criterion, bn_recomputed=False):
    """`ema_<decay>_{acc,loss}[_bn].weights.h5`: the one naming of saved EMA selections."""
    suffix = "_bn" if bn_recomputed else ""
    return f"ema_{decay:g}_{_FILE_SUFFIXES[criterion]}{suffix}.weights.h5"


def selection_label(selections):
    """'EMA 0.9 (acc. = loss)', 'EMA 0.996, 0.998 (acc.)': `(decay, criterion)` selections that are one model.

    `decay` a float or its key ('0.998').
    """
    by_decay = {}
    for decay, criterion in selections:
        by_decay.setdefault(float(decay), []).append(CRITERION_LABELS[criterion])
    labels = {" = ".join(criteria) for criteria in by_decay.values()}
    if len(labels) == 1:
        return f"EMA {', '.join(f'{d:g}' for d in by_decay)} ({labels.pop()})"
    return " = ".join(f"EMA {d:g} ({' = '.join(c)})" for d, c in by_decay.items())


def checked_criterion(criterion):
    if criterion not in CRITERIA:
        raise invalid("criterion", criterion, f"one of {CRITERIA}")
    return criterion


def checked_select_epochs(select_epochs, decays):
    """`None`, or `{decay: {criterion: 0-based epoch}}` with one entry per decay."""
    if select_epochs is None:
        return None
    expected = "{decay: {criterion: epoch}}"
    try:
        fixed = {
            float(decay): {str(c): int(e) for c, e in epochs.items()}
            for decay, epochs in select_epochs.items()
        }
    except (AttributeError, TypeError, ValueError):
        raise invalid("select_epochs", select_epochs, expected) from None
    if set(fixed) != set(decays):
        raise invalid("select_epochs", select_epochs, f"one entry per decay in {decays}")
    for epochs in fixed.values():
        if not set(epochs) <= set(CRITERIA) or min(epochs.values(), default=0) < 0:
            raise invalid("select_epochs", select_epochs, f"criteria from {CRITERIA} mapped to epochs >= 0")
    return fixed


def selection_accuracy(metrics, accuracy_metric):
    """The accuracy `MultiEMA` selects by in `evaluate()`'s `metrics`, or None with `accuracy_metric=None`."""
    if accuracy_metric is None:
        return None
    if accuracy_metric not in metrics:
        raise ValueError(
            f"MultiEMA selects by the metric accuracy_metric={accuracy_metric!r}, but "
            f"evaluate() returns {sorted(metrics)}: pass the accuracy metric's name, "
            "or accuracy_metric=None to select by the loss only."
        )
    return metrics[accuracy_metric]


def epoch_logs(evaluated, num_decays):
    """`ema_<decay>_val_<metric>` for every evaluated group, and `ema_best_val_accuracy`.

    `evaluated` pairs each group of decays (holding one average) with its
    `(metrics, accuracy)`. The best is the maximum over all `num_decays`,
    never over the few evaluated at a selected epoch.
    """
    results, accuracies = {}, []
    for decays, (metrics, accuracy) in evaluated:
        for decay in decays:
            results.update({f"ema_{decay:g}_val_{name}": value for name, value in metrics.items()})
        accuracies.append(accuracy)
    if None not in accuracies and sum(len(decays) for decays, _ in evaluated) == num_decays:
        results["ema_best_val_accuracy"] = max(accuracies)
    return results


class EpochSelection:
    """The selected epochs and weights of `len(decays)` EMAs.

    Args:
        decays: the EMAs' decays, in their order.
        select_epochs: see `checked_select_epochs`. Defaults to `None` (select
            the best epochs seen).
    """

    def __init__(self, decays, select_epochs=None):
        self.decays = tuple(decays)
        self.select_epochs = checked_select_epochs(select_epochs, self.decays)
        self.reset()

    def reset(self):
        self._selected = {c: [None] * len(self.decays) for c in CRITERIA}

    def offer(self, index, epoch, loss, accuracy, weights):
        """EMA `index` scored `loss`/`accuracy` (None: no accuracy) at 0-based `epoch`.

        Without `select_epochs`, the epoch is selected if it beats the one kept
        (the first wins a tie); an epoch scored NaN is never selected.

        `weights()` returns its weights; it is called only if the epoch is
        selected (and may be shared by identical averages).
        """
        if self.select_epochs is not None:
            fixed = self.select_epochs[self.decays[index]]
            better_accuracy = fixed.get("accuracy") == epoch
            lower_loss = fixed.get("loss") == epoch
        else:
            # A NaN score is never selected: `x > nan` is false, so a NaN kept once would stay for ever.
            best = self._selected["accuracy"][index]
            better_accuracy = (accuracy is not None and not np.isnan(accuracy)
                               and (best is None or accuracy > best["val_accuracy"]))
            lowest = self._selected["loss"][index]
            lower_loss = not np.isnan(loss) and (lowest is None or loss < lowest["val_loss"])
        if not (better_accuracy or lower_loss):
            return
        selected = {
            "epoch": epoch,
            "val_loss": float(loss),
            "val_accuracy": None if accuracy is None else float(accuracy),
            "weights": weights(),
        }
        if better_accuracy:
            self._selected["accuracy"][index] = selected
        if lower_loss:
            self._selected["loss"][index] = selected

    def fixes(self, index, epoch):
        """Whether `select_epochs` fixes 0-based `epoch` for EMA `index` (by either criterion)."""
        return self.select_epochs is not None and epoch in self.select_epochs[self.decays[index]].values()

    def get(self, index, criterion):
        """The selection (`epoch`, `val_loss`, `val_accuracy`, `weights`), or None."""
        return self._selected[checked_criterion(criterion)][index]

    def require(self, index, criterion):
        selected = self.get(index, criterion)
        if selected is None:
            raise RuntimeError(
                f"No EMA of decay {self.decays[index]:g} has been selected by {criterion} "
                "yet: it is selected after each epoch evaluated."
            )
        return selected

    def summary(self, index, criterion):
        """JSON-able: the epoch (0-based, as Keras's `epoch`) and the validation metrics, or None."""
        selected = self.get(index, criterion)
        if selected is None:
            return None
        return {"epoch": selected["epoch"], "val_loss": selected["val_loss"],
                "val_accuracy": selected["val_accuracy"]}

    def missing(self):
        """`[(decay, criterion, epoch), ...]`: the epochs fixed by `select_epochs` not selected (yet)."""
        if self.select_epochs is None:
            return []
        return [
            (decay, criterion, epoch)
            for index, decay in enumerate(self.decays)
            for criterion, epoch in sorted(self.select_epochs[decay].items())
            if self._selected[criterion][index] is None
        ]

    def state(self):
        """A flat dict of NumPy values (for `np.savez`)."""
        flat = {}
        for criterion in CRITERIA:
            for index, selected in enumerate(self._selected[criterion]):
                if selected is None:
                    continue
                prefix = f"selected/{criterion}/{index}/"
                accuracy = selected["val_accuracy"]
                flat[prefix + "epoch"] = selected["epoch"]
                flat[prefix + "val_loss"] = selected["val_loss"]
                flat[prefix + "val_accuracy"] = np.nan if accuracy is None else accuracy
                for k, weight in enumerate(selected["weights"]):
                    flat[prefix + f"weight/{k}"] = np.asarray(weight)  # a sharded copy is gathered here
        return flat

    def load_state(self, state, keep=list):
        """Restores `state()`'s result; `keep(arrays)` gives the form the weights are kept in."""
        self._selected = {c: [_unflat(state, c, i, keep) for i in range(len(self.decays))] for c in CRITERIA}


def _unflat(state, criterion, index, keep=list):
    prefix = f"selected/{criterion}/{index}/"
    if prefix + "epoch" not in state:
        return None
    count = sum(key.startswith(prefix + "weight/") for key in state)
    accuracy = float(state[prefix + "val_accuracy"])
    return {
        "epoch": int(state[prefix + "epoch"]),
        "val_loss": float(state[prefix + "val_loss"]),
        "val_accuracy": None if np.isnan(accuracy) else accuracy,
        "weights": keep([np.array(state[f"{prefix}weight/{k}"]) for k in range(count)]),
    }
