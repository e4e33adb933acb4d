"""The regime row (evaluation/regime.py) and the pilots' choice against hand-computed values."""

import math
import os
import sys

import pytest

from evaluation import regime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import regime_pilots  # noqa: E402


def _history(train, validation):
    epochs = len(train)
    lr = [0.5 * 0.2 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    return [{"epoch": e + 1, "lr": lr[e], "train_accuracy": train[e], "val_accuracy": validation[e]}
            for e in range(epochs)]


def test_regime_row_by_hand():
    # 8 epochs: the 75 % window ends at epoch 6 (epochs 4-6), the last window is epochs 6-8.
    train = [0.5, 0.7, 0.85, 0.91, 0.95, 0.97, 0.98, 0.985]
    validation = [0.40, 0.50, 0.60, 0.70, 0.71, 0.72, 0.725, 0.73]
    row = regime.regime_row(_history(train, validation))
    assert row["late_window_end_epoch"] == 6
    assert row["late_validation_gain"] == pytest.approx((0.72 + 0.725 + 0.73) / 3 - (0.70 + 0.71 + 0.72) / 3)
    assert row["final_train_accuracy"] == pytest.approx(0.985)
    assert row["fit_epoch"] == 4
    assert row["fit_fraction"] == pytest.approx(4 / 8)
    # lr at epoch 4 over the peak (epoch 1): 0.5 * (1 + cos(3π/8)).
    assert row["fit_lr_fraction"] == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 8)))
    assert row["final_gap"] == pytest.approx(0.985 - 0.73)
    assert row["r1_met"] and row["r2_met"] and row["reached"]
    assert "regime reached" in regime.regime_text(row)


def test_regime_thresholds_each_fail_alone():
    train = [0.5] * 7 + [0.89]
    row = regime.regime_row(_history(train, [0.5] * 8))
    assert not row["r1_met"] and row["r2_met"] and not row["reached"] and row["fit_epoch"] is None
    rising = [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]
    row = regime.regime_row(_history([0.99] * 8, rising))
    assert row["r1_met"] and not row["r2_met"] and not row["reached"]
    with pytest.raises(ValueError, match="at least 6 epochs"):
        regime.regime_row(_history([0.9] * 5, [0.5] * 5))


def _pilot(name, images, epochs, final_train, gain):
    return {"name": name, "images": images, "epochs": epochs, "samples": images * epochs,
            "regime": {"final_train_accuracy": final_train, "r1_met": final_train >= 0.97,
                       "r2_met": gain <= 0.02, "reached": final_train >= 0.97 and gain <= 0.02}}


def test_pilot_choice_follows_the_plan():
    p1, p2, p3 = (_pilot("P1", 5000, 60, 0.98, 0.01), _pilot("P2", 2500, 120, 0.99, 0.0),
                  _pilot("P3", 5000, 120, 0.99, 0.0))
    assert regime_pilots.choose([p1, p2, p3])[0] == "P1"  # most images among the 1x pilots that reach it
    p1 = _pilot("P1", 5000, 60, 0.95, 0.01)
    assert regime_pilots.choose([p1, p2, p3])[0] == "P2"
    p2 = _pilot("P2", 2500, 120, 0.96, 0.0)
    assert regime_pilots.choose([p1, p2, p3])[0] == "P3"
    p3 = _pilot("P3", 5000, 120, 0.96, 0.0)
    assert regime_pilots.choose([p1, p2, p3])[0] == "P2"  # highest R1 among 1x pilots meeting R2


def test_the_choice_is_decided_without_the_2x_pilot_once_a_1x_pilot_reaches_the_regime():
    p1, p2 = _pilot("P1", 5000, 60, 0.98, 0.03), _pilot("P2", 2500, 120, 0.99, 0.01)
    p3 = {"name": "P3", "images": 5000, "epochs": 120, "samples": 600000, "regime": None}
    assert regime_pilots.decided([p1, p2, p3])[0] == "P2"
    assert regime_pilots.decided([p1, _pilot("P2", 2500, 120, 0.96, 0.01), p3]) == (None, "pilots not finished")
    assert regime_pilots.decided([p1, {**p2, "regime": None}, p3]) == (None, "pilots not finished")


def _gain_pilot(name, images, epochs, final_train, gain):
    pilot = _pilot(name, images, epochs, final_train, gain)
    pilot["regime"]["late_validation_gain"] = gain
    return pilot


def test_amendment_1_runs_p4_only_when_p1_to_p3_leave_no_candidate():
    # The recorded outcome of P1 and P2 (R1 met, R2 missed), P3 missing R2 as well.
    p1, p2 = _gain_pilot("P1", 5000, 60, 0.9764, 0.0282), _gain_pilot("P2", 2500, 120, 0.9960, 0.0213)
    p3 = _gain_pilot("P3", 5000, 120, 0.99, 0.025)
    p4 = {"name": "P4", "images": 1250, "epochs": 240, "samples": 300000, "regime": None}
    assert regime_pilots.decided([p1, p2, p3, p4])[0] is None  # P4 must run
    # P3 reaching the regime decides without P4.
    reached_p3 = _gain_pilot("P3", 5000, 120, 0.99, 0.01)
    assert regime_pilots.decided([p1, p2, reached_p3, p4])[0] == "P3"
    # P4 reaching it is chosen; missing it, the 1x pilot with the smallest R2 among those meeting R1.
    assert regime_pilots.decided([p1, p2, p3, _gain_pilot("P4", 1250, 240, 0.999, 0.015)])[0] == "P4"
    chosen, why = regime_pilots.decided([p1, p2, p3, _gain_pilot("P4", 1250, 240, 0.999, 0.022)])
    assert chosen == "P2" and "smallest R2" in why
    chosen, _ = regime_pilots.decided([p1, p2, p3, _gain_pilot("P4", 1250, 240, 0.999, 0.0205)])
    assert chosen == "P4"
    # P4 meeting R2 but not R1 is the first rule's fallback (highest R1 meeting R2).
    assert regime_pilots.decided([p1, p2, p3, _gain_pilot("P4", 1250, 240, 0.96, 0.01)])[0] == "P4"
