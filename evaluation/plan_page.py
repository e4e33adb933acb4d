"""A claim's verdict section on its page: the plan's rule as written, the verdict, the scope, every statistic
with its interval, the power, tuned-lr and regime rows (evaluation/plan_claims.py computes them).

`section(claim, dirs)` is what evaluation/claims.py writes into `<claim>.md`, between the builder's
headline and its tables; nothing outside it on a page says "holds" or "verdict".
"""

import json
import os
import re

from evaluation import claim_common as common
from evaluation import regime, runs, stats
from evaluation.plan_claims import assess
from evaluation.plan_provenance import PLAN_FILE, ROOT, plan_commit


def plan_rule(claim):
    """The claim's section of docs/analysis-plan.md, as written there."""
    with open(PLAN_FILE, encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(rf"^### {re.escape(claim)} .*?(?=^### |^## |\Z)", text, re.S | re.M)
    return match.group(0).strip() if match else ""


def _seeds_read(result):
    primary = result["primary"]
    return stats.seeds_for_pairs(primary["interval"].n) if primary["statistic"].pairs else primary["interval"].n


def _scope(claim, result):
    """The plan's Scope: the verdict claims its primary statistic on this budget's data and model, no more."""
    config = result["groups"][0].config
    images = runs.train_examples(config["dataset"], config.get("limit_train"), config.get("full_train", False),
                                 config.get("validation_fraction", 0.2))
    untested = " Not tested: \"competitive with specialized methods\" (none is run here)." if claim == "table2" else ""
    return (f"**Scope**: the verdict is the primary statistic's, on {config['dataset']} / {config['model']}, "
            f"{images:,} training images × {config['epochs']} epochs, {_seeds_read(result)} seeds; it does not "
            f"test the paper's other datasets, architectures or budgets.{untested}{_regime_scope(result)}")


def regime_summary(result):
    """How many of the runs whose SGD gives the regime rows reached the regime, and their R1 range."""
    rows = [row for _, _, row in result["regime"]]
    measured = [row for row in rows if row is not None]
    final = [row["final_train_accuracy"] for row in measured]
    return {"runs": len(rows), "measured": len(measured), "reached": sum(row["reached"] for row in measured),
            "final_train_accuracy": [min(final), max(final)] if final else None}


def _regime_scope(result):
    """The plan: where no run reached the regime, the page says "regime not reached" beside the verdict."""
    summary = regime_summary(result)
    measured, reached = summary["measured"], summary["reached"]
    if not measured or reached == measured:
        return ""
    if reached:
        return f" Regime reached in {reached} of {measured} runs read (Regime, below)."
    low, high = (100 * value for value in summary["final_train_accuracy"])
    return (f" **Regime not reached** in any of the {measured} runs read (SGD's final training accuracy "
            f"{low:.1f}-{high:.1f} %; the regime asks ≥ 97 % with validation accuracy saturated; Regime, "
            f"below): the verdict is about training that stops short of the state the paper's mechanism "
            f"rests on.")


def _tuned_lrs(claim, dirs):
    """Both tuned lrs (docs/analysis-plan.md, Comparators), from the search that set this claim's runs."""
    key = {"fig2": "tuning_noisy", "table2": "tuning_noisy", "adda-constant-lr": None}.get(claim, "tuning")
    tuning = dirs.get(key) if key else None
    found = {}
    for name, columns in (("best.json", "EMA"), ("best_sgd_final.json", "SGD/baseline")):
        path = os.path.join(tuning, name) if tuning else None
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                found[columns] = (json.load(handle).get("lr"), os.path.relpath(path, os.path.dirname(tuning)))
    if not found:
        return ""
    return ("**Tuned lr** (validation split, seed 0; docs/analysis-plan.md, Comparators): "
            + "; ".join(f"{lr:g} for the {columns} columns ({path})" for columns, (lr, path) in found.items()) + ".")


def _monitored(config):
    """What a run's per-epoch `val_accuracy` (which the regime row's R2 and R4 read) was measured on."""
    limit = config.get("limit_validation")
    first = f"the first {limit:,}" if limit else "all"
    if config.get("full_train"):  # no validation split: app.train monitors on the test split
        return f"{first} test images (a --full-train run has no validation split)"
    if config.get("evaluation_split", "validation") != "validation":
        return f"{first} {config['evaluation_split']} images"
    return f"{first} validation images ({100 * config.get('validation_fraction', 0.2):g} % split)"


def section(claim, dirs):
    """The page's Markdown: the plan's rule, the statistics, the verdict, the power and regime rows."""
    result = assess(claim, dirs)
    lines = [f"**Rule** (docs/analysis-plan.md at {(plan_commit() or 'unknown')[:10]}):", "",
             *[f"> {line}" if line else ">" for line in plan_rule(claim).splitlines()], ""]
    if result["exploratory"]:
        lines += [f"**Exploratory**: {result['exploratory']}; the plan's rule would read "
                  f"**{result['would_read']}**.", ""]
    elif result["pending_seeds"]:
        lines += [f"**Verdict: {result['verdict']} at {_seeds_read(result)} seeds, not final**: the plan adds "
                  f"seeds once, up to {result['pending_seeds']}, and reads the verdict there (power row).", ""]
    else:
        lines += [f"**Verdict: {result['verdict']}.**", ""]
    lines += [_scope(claim, result), ""]
    # The plan: one primary statistic decides; the secondary ones are reported with their interval, never a verdict.
    lines += ["| statistic | per seed (points unless named) | mean, 95 % CI | rule | verdict |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        statistic = row["statistic"]
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in row["diffs"])
        name = f"**primary**: {statistic.label}" if statistic.primary else f"secondary: {statistic.label}"
        if statistic.unit != " points":
            name += f" ({statistic.unit.strip()})"
        verdict = row["verdict"] if statistic.primary else "— (reported only)"
        lines.append(f"| {name} | {per_seed} | {row['interval'].short()} | {row['rule']} | {verdict} |")
        if statistic.primary and row["interval"].rounds_onto(statistic.margin):
            lines.append("| (a bound shows as the margin; decided on its unrounded value) | | | | |")
    lines += ["", f"**Power** (primary): {result['primary']['power']}.", ""]
    lines += [line + "\n" for line in [_tuned_lrs(claim, dirs)] if line]
    notes = [row["statistic"].note for row in result["rows"] if row["statistic"].note]
    lines += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    lines += ["**Regime** (docs/analysis-plan.md; SGD of each run read, at its lr):", "",
              "| run | seed | lr | R2's \"validation\" | regime row |", "|---|---|---|---|---|"]
    lines += [f"| {os.path.relpath(run.path, ROOT) if os.path.isabs(run.path) else run.path} | {common.seed(run)} | "
              f"{run.config.get('lr', float('nan')):g} | {_monitored(run.config)} | "
              f"{regime.regime_text(row) if row else f'{len(run.history)} epochs: too short for the row'} |"
              for _, run, row in result["regime"]]
    return "\n".join(lines) + "\n", result
