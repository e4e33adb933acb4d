"""The regime row of docs/analysis-plan.md: has SGD fitted its training set while the lr was high?

The paper's mechanism (§3.2-3.3) needs SGD to fit its training data while the
learning rate is still well above 0; the plan states four quantities, read
from one SGD run's `history.csv` rows (fractions in [0, 1]):

- R1 `final_train_accuracy`: training accuracy in the last epoch (required ≥ 0.97);
- R2 `late_validation_gain`: validation accuracy, mean of the last 3 epochs minus
  the mean of the 3 epochs ending at 75 % of the run, rounded down (required ≤ 0.02);
- R3 `fit_epoch` / `fit_fraction` / `fit_lr_fraction`: the first epoch with training
  accuracy ≥ 0.90, as a fraction of the run, and its lr over the run's peak lr;
- R4 `final_gap`: training minus validation accuracy in the last epoch.

`reached` is R1 and R2. The thresholds are the plan's; change them only with it.
"""

import math

import numpy as np

MIN_FINAL_TRAIN_ACCURACY = 0.97
MAX_LATE_VALIDATION_GAIN = 0.02
FIT_ACCURACY = 0.90
WINDOW = 3
LATE_FRACTION = 0.75


def regime_row(history):
    """The regime row of one run from its history rows (dicts with epoch, lr, train_accuracy, val_accuracy)."""
    epochs = len(history)
    if epochs < 2 * WINDOW:
        raise ValueError(f"the regime row needs at least {2 * WINDOW} epochs; got {epochs}")
    train = np.array([float(row["train_accuracy"]) for row in history])
    validation = np.array([float(row["val_accuracy"]) for row in history])
    lr = np.array([float(row["lr"]) for row in history])
    late_end = max(int(LATE_FRACTION * epochs), WINDOW)  # epoch (1-based) ending the 75 % window
    gain = float(validation[-WINDOW:].mean() - validation[late_end - WINDOW:late_end].mean())
    fitted = np.flatnonzero(train >= FIT_ACCURACY)
    fit_epoch = int(fitted[0]) + 1 if len(fitted) else None
    row = {
        "epochs": epochs,
        "final_train_accuracy": float(train[-1]),
        "late_validation_gain": gain,
        "late_window_end_epoch": late_end,
        "fit_epoch": fit_epoch,
        "fit_fraction": fit_epoch / epochs if fit_epoch else math.nan,
        "fit_lr_fraction": float(lr[fit_epoch - 1] / lr.max()) if fit_epoch else math.nan,
        "final_gap": float(train[-1] - validation[-1]),
    }
    row["r1_met"] = row["final_train_accuracy"] >= MIN_FINAL_TRAIN_ACCURACY
    row["r2_met"] = gain <= MAX_LATE_VALIDATION_GAIN
    row["reached"] = row["r1_met"] and row["r2_met"]
    return row


def regime_text(row):
    """One Markdown line of the row, for a claim page or the pilots' report."""
    fit = ("never ≥ 90 %" if row["fit_epoch"] is None else
           f"≥ 90 % from epoch {row['fit_epoch']} ({100 * row['fit_fraction']:.0f} % of the run, "
           f"lr {100 * row['fit_lr_fraction']:.0f} % of its peak)")
    return (f"R1 final training accuracy {100 * row['final_train_accuracy']:.2f} % "
            f"({'met' if row['r1_met'] else 'not met'}, ≥ 97 %); "
            f"R2 validation gain after epoch {row['late_window_end_epoch']} "
            f"{100 * row['late_validation_gain']:+.2f} points ({'met' if row['r2_met'] else 'not met'}, ≤ +2.00); "
            f"R3 training accuracy {fit}; R4 final gap {100 * row['final_gap']:.2f} points; "
            f"regime {'reached' if row['reached'] else 'not reached'}")
