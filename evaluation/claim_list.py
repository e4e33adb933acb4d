"""The claims `python -m app.reproduce` checks, stated with the papers' numbers, and the status of their verdicts.

`CLAIMS` in the order app.reproduce runs them (`CLAIM_ORDER`); `status_table` reads the `<claim>.json` each
claim page leaves (evaluation/claims.py writes them) into the README's status of the results
(experiments/publish_results.py --readme). Light on purpose: nothing here imports NumPy, SciPy or Keras.
"""

import json
import os

CLAIMS = {
    "fig1a": "§3.2-3.3 Fig. 1a: validation accuracy of SGD and of the best EMA each epoch "
    "(warm-up + cosine): EMA ahead early, peaking before the end, meeting SGD as lr -> 0.",
    "fig1b": "§3.4 Fig. 1b: the largest decays fail without BN recompute and recover with it.",
    "table1": "§4.2 Table 1: test accuracy/loss of the baseline, EMA (acc.), EMA (loss) (BN "
    "recomputed once), SWA. Paper R18/C100: 77.63 / 78.55 / 78.07 / 78.69.",
    "table3": "§4.4 Table 3: churn and JS divergence between seeds, baseline vs EMA (loss). "
    "Paper R18/C100 churn 18.84 -> 12.71, JS 0.32 -> 0.09.",
    "table5": "§4.6 Table 5: ECE and ECE after temperature scaling, baseline vs EMA. "
    "Paper R18/C100 ECE 11.75 -> 9.46, with TS 4.67 -> 3.13.",
    "swa": "SWA paper §4: SWA vs SGD at the same budget (R18-like nets: +0.5-1.5 points on "
    "CIFAR-100; Table 1 of the EMA paper: 78.69 vs 77.63).",
    "fig2": "§4.3 Fig. 2: noisy labels (~40 %), clean test set each epoch: \"EMA dominates SGD and "
    "outperforms the best model\" (paper C100N: the EMA peaks at 64.8 % at epoch 100, lr ~0.4, then "
    "falls to 55.0 % as the lr decays and the noisy labels are memorized).",
    "table2": "§4.3 Table 2: EMA (acc.) on CIFAR-N 'worse' beside published methods "
    "(paper C10N 86.71, C100N 65.15; CE standard 77.69 / 55.50).",
    "adda-constant-lr": "Adda et al. Table 1: constant vs cosine schedule, SGD vs EMA at "
    "several decays (constant: SGD 86.4, EMA 0.999 92.2; cosine: 91.4 for all).",
}
CLAIM_ORDER = tuple(CLAIMS)


def status_table(budget_dir, claim_order, link_prefix=""):
    """A Markdown table of the claims in `claim_order` that have a `<claim>.json` under `budget_dir`: verdict,
    primary interval and regime; then a line naming the others ("Not yet run under the plan: ...")."""
    lines = ["| claim | verdict | primary statistic: mean, 95 % CI | regime: runs reached; final training "
             "accuracy |", "|---|---|---|---|"]
    missing = []
    for claim in claim_order:
        path = os.path.join(budget_dir, claim, f"{claim}.json")
        if not os.path.exists(path):
            missing.append(claim)
            continue
        with open(path, encoding="utf-8") as handle:
            entry = json.load(handle)
        if entry.get("primary") is None:  # a page from before the analysis plan (no primary statistic)
            missing.append(claim)
            continue
        verdict = f"**{entry['verdict']}**" + (
            f" (not final: up to {entry['pending_seeds']} seeds)" if entry.get("pending_seeds") else "")
        if entry["verdict"] == "exploratory":  # runs before the plan's commit or from a modified tree
            verdict = f"exploratory (the plan's rule would read: {entry.get('would_read')})"
        lines.append(f"| [{claim}]({link_prefix}{claim}/{claim}.md) | {verdict} | {entry['primary']}: "
                     f"{entry['primary_interval']} | {_regime_text(entry.get('regime'))} |")
    if missing:
        lines += ["", "Not yet run under the plan: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def _regime_text(regime):
    """A status-table cell: "0 of 6; 78.8-83.7 %" (runs that reached the regime; their final training accuracy)."""
    if regime is None:
        return "not recorded: rerun app.reproduce for this claim"
    if not regime["measured"]:
        return "not measured (runs too short for the row)"
    low, high = regime["final_train_accuracy"]
    measured = "" if regime["measured"] == regime["runs"] else f" ({regime['measured']} measured)"
    return f"{regime['reached']} of {regime['runs']}{measured}; {100 * low:.1f}-{100 * high:.1f} %"
