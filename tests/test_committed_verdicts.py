"""The committed verdicts follow from the committed per-seed data (issue 27).

Every `reproductions/small/<claim>/<claim>.json` that carries a verdict under
the analysis plan is recomputed from the run directories committed beside it
(history.csv, summary.json, evaluation.json, config.json): by the plan's own
code, so that a page left behind by its data or by a later change of the
statistics fails here; and, for adda-constant-lr, independently in NumPy from
the files themselves (the decay chosen on the hold-out, the per-seed
differences, the paired t interval with t(0.975, 2) in closed form). Nothing
trains; the claims not yet run under the plan are skipped by name.
"""

import csv
import json
import math
import os

import numpy as np
import pytest

from app.reproduce_plan import plan
from evaluation import plan_claims
from evaluation.claim_list import CLAIM_ORDER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = os.path.join("reproductions", "small")
SEEDS = (0, 1, 2)


def _committed(claim):
    path = os.path.join(ROOT, SMALL, claim, f"{claim}.json")
    if not os.path.exists(path):
        pytest.skip(f"{claim}: not yet run under the plan ({path} absent)")
    with open(path, encoding="utf-8") as handle:
        entry = json.load(handle)
    if entry.get("primary") is None:
        pytest.skip(f"{claim}: a page from before the plan")
    return entry


@pytest.mark.parametrize("claim", CLAIM_ORDER)
def test_the_committed_verdict_is_the_plans_on_the_committed_runs(claim, monkeypatch):
    entry = _committed(claim)
    monkeypatch.chdir(ROOT)  # the pages name their runs relative to the repository
    _, dirs, _ = plan("small", SMALL, None, SEEDS)
    result = plan_claims.assess(claim, dirs)
    assert (result["verdict"], result["would_read"]) == (entry["verdict"], entry["would_read"])
    assert result["primary"]["statistic"].label == entry["primary"]
    assert result["primary"]["interval"].short() == entry["primary_interval"]


def _final_accuracy(run, name):
    with open(os.path.join(run, "evaluation.json"), encoding="utf-8") as handle:
        return json.load(handle)["by_weights"][name]["accuracy"]


def test_adda_constant_lr_recomputes_in_numpy_from_the_committed_files():
    entry = _committed("adda-constant-lr")
    constant = [os.path.join(ROOT, SMALL, "adda", "constant", f"seed-{seed}") for seed in SEEDS]
    # The decay: best final-epoch hold-out accuracy of the EMA, mean over the seeds (history.csv's last row).
    last_rows = []
    for run in constant:
        with open(os.path.join(run, "history.csv"), newline="", encoding="utf-8") as handle:
            last_rows.append(list(csv.DictReader(handle))[-1])
    decays = [key[len("ema_"):-len("_val_accuracy")] for key in last_rows[0]
              if key.startswith("ema_") and key.endswith("_val_accuracy") and key != "ema_best_val_accuracy"]
    decay = max(decays, key=lambda d: np.mean([float(row[f"ema_{d}_val_accuracy"]) for row in last_rows]))
    # --ema-select final: the EMA kept "by accuracy" is the final epoch's, tracked BatchNorm statistics.
    differences = 100 * np.array([_final_accuracy(run, f"ema_{decay}_acc") - _final_accuracy(run, "final")
                                  for run in constant])
    half_width = 4.302652729911275 * differences.std(ddof=1) / math.sqrt(len(differences))  # t(0.975, 2)
    mean = differences.mean()
    assert entry["primary"] == f"constant lr: EMA {decay} − SGD, final epoch, test"
    assert entry["primary_interval"] == f"{mean:+.2f} [{mean - half_width:+.2f}, {mean + half_width:+.2f}]"
    # The rule: a direction claim, margin 0 (docs/analysis-plan.md): holds when the whole interval is above 0.
    assert entry["verdict"] == ("holds" if mean - half_width > 0 else
                                "does not hold" if mean + half_width < 0 else "inconclusive")
