"""The analysis plan's statistics, verdicts, power rows and regime rows for every claim.

docs/analysis-plan.md fixes, per claim, one primary statistic (a per-seed
difference, its direction or equivalence margin) and the secondary ones; this
module computes them from the run directories app.reproduce writes (`dirs`:
validation, validation_seeds, final, noisy_validation, noisy_final,
adda_constant, adda_cosine) and applies the plan's one policy
(`evaluation/stats.py`): paired t intervals, margin 0 or ±1.0 point, seeds
needed at the observed spread, "not decidable at this budget" beyond 8.

A verdict counts only when every run it reads was made from the plan's commit
or a later one, with a clean tree (`exploratory_reason`); otherwise the page
labels it exploratory. Where a pre-plan run lacks what the plan's statistic
reads (the last-epoch EMA, SGD's early-stopped weights), the nearest quantity
it holds is used and named as such. experiments/exploratory_reanalysis.py
applies this to the pre-plan runs.
"""

import dataclasses
import json
import os
import re
import subprocess

import numpy as np

from evaluation import claim_common as common
from evaluation import regime, runs, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN_FILE = os.path.join(ROOT, "docs", "analysis-plan.md")


@dataclasses.dataclass
class Statistic:
    """One statistic of a claim: per-seed values `a` and `b`, compared as a − b."""

    label: str
    a: list
    b: list
    primary: bool = False
    equivalence: bool = False
    higher_is_better: bool = True
    note: str = ""

    def assess(self, seconds_per_seed=None):
        interval = stats.paired_interval(self.a, self.b)
        diffs = np.asarray(self.a, "float64") - np.asarray(self.b, "float64")
        if self.equivalence:
            verdict = stats.equivalence_verdict(interval)
            needed = stats.seeds_needed(diffs, stats.EQUIVALENCE_MARGIN, equivalence=True)
            rule = f"equivalence within ±{100 * stats.EQUIVALENCE_MARGIN:.1f} points"
        else:
            verdict = stats.verdict(interval, 0.0, higher_is_better=self.higher_is_better)
            needed = stats.seeds_needed(diffs, 0.0)
            rule = f"direction ({'>' if self.higher_is_better else '<'} 0)"
        if verdict == "inconclusive" and (needed is None or needed > stats.MAX_SEEDS):
            verdict = "not decidable at this budget"
        return {"interval": interval, "verdict": verdict, "rule": rule, "seeds_needed": needed, "diffs": diffs,
                "power": stats.power_text(interval, needed, seconds_per_seed)}


def _group(dirs, *keys):
    return common.group(*[dirs.get(key) for key in keys])


def seconds_per_seed(group):
    """The fastest seed's wall time (summary.json, every attempt): the seeds do the same work, so what a
    slower one adds is other load on the shared cores, or a pause of the process."""
    times = [run.summary.get("wall_time_seconds") for run in group.runs]
    times = [t for t in times if t is not None]
    return float(min(times)) if times else float("nan")


def _test(group, method, metric="accuracy"):
    return common.test_values(group, method, metric)


def _has_method(group, method):
    return all(method in evaluation["models"] for evaluation in common.evaluated(group))


# The claims: each returns (statistics, the groups whose SGD runs give the regime rows, seconds per seed).


def fig1a(dirs):
    final = _group(dirs, "final")
    decay = common.largest_decay(final.runs[0])
    if _has_method(final, "ema_final"):
        primary = Statistic(f"EMA α={decay} (acc., BN recomputed) at its validation-selected epoch − the same EMA at "
                            "the last epoch, test", _test(final, "ema_acc"), _test(final, "ema_final"), primary=True)
    else:  # pre-plan runs kept no last-epoch EMA: their per-epoch curve of the first 2,000 test images
        selected, last, epochs = [], [], []
        for run in final.runs:
            epoch = run.summary["ema"][decay]["best_val_accuracy"]["epoch"]
            column = common.column(run, f"ema_{decay}_val_accuracy")
            selected.append(column[epoch - 1])
            last.append(column[-1])
            epochs.append(epoch)
        total = final.config["epochs"]
        primary = Statistic(
            f"EMA α={decay} at its validation-selected epoch − the same EMA at the last epoch (test subset)",
            selected, last, primary=True,
            note=(f"Nearest the pre-plan runs hold: EMA α={decay} (tracked BN) on the final runs' per-epoch curve of "
                  f"the first 2,000 test images, at the epoch chosen on validation ({epochs} of {total}, i.e. "
                  + ", ".join(f"{100 * e / total:.0f} %" for e in epochs) + " of the run; paper App. B: always < 75 %) "
                  "minus the same EMA at the last epoch. The plan reads the whole test set with BN recomputed once."))
    validation = _group(dirs, "validation", "validation_seeds")
    sgd = common.sgd_group(dirs, "validation", "validation_seeds")
    lead = [float(np.mean(common.column(r, "ema_best_val_accuracy") - common.column(s, "val_accuracy")))
            for r, s in zip(validation.runs, sgd.runs)]
    end_ema = [float(common.column(r, "ema_best_val_accuracy")[-1]) for r in validation.runs]
    end_sgd = [float(common.column(r, "val_accuracy")[-1]) for r in sgd.runs]
    secondary = [Statistic("best EMA − SGD, mean over all epochs (validation)", lead, [0.0] * len(lead)),
                 Statistic("best EMA − SGD at the last epoch (validation)", end_ema, end_sgd, equivalence=True)]
    return ([primary] + secondary, _distinct(validation, final, sgd),
            seconds_per_seed(final) + seconds_per_seed(validation))


def fig1b(dirs):
    group = _group(dirs, "validation", "validation_seeds")
    decays = sorted(group.runs[0].summary["ema"], key=float)
    smallest, largest = decays[0], decays[-1]
    release = runs.warmup_release_epochs(group.config)[largest] or group.config["epochs"]
    recovery = {d: recovery_per_seed(group, d, release - 1, None) for d in (smallest, largest)}
    tracked_lead = [float(np.mean((common.column(run, f"ema_{largest}_val_accuracy")
                                   - common.column(run, "val_accuracy"))[release - 1:])) for run in group.runs]
    last = group.config["epochs"]
    return ([Statistic(f"[BN recomputed − tracked] of α={largest} minus that of α={smallest}, mean over epochs "
                       f"{release}-{last} (validation)", recovery[largest], recovery[smallest], primary=True),
             Statistic(f"[recomputed − tracked] of α={largest} alone, epochs {release}-{last}", recovery[largest],
                       [0.0] * len(group.runs)),
             Statistic(f"α={largest} with tracked BN − SGD, epochs {release}-{last}", tracked_lead,
                       [0.0] * len(group.runs))],
            [group], seconds_per_seed(group))


def recovery_per_seed(group, decay, first, stop):
    """Per seed: mean over epochs [first, stop) (0-based) of BN-recomputed minus tracked validation accuracy."""
    return [float(np.mean((common.column(run, f"ema_{decay}_bn_val_accuracy")
                           - common.column(run, f"ema_{decay}_val_accuracy"))[first:stop])) for run in group.runs]


def _early_stopped_sgd(group, sgd, method, label):
    if not _has_method(sgd, "sgd_early"):
        return []
    return [Statistic(f"{label} − SGD early-stopped on validation", _test(group, method), _test(sgd, "sgd_early"))]


def _distinct(*groups):
    """The groups a claim read, each once (an SGD twin is the EMA's own group where the lrs agree)."""
    kept = []
    for group in groups:
        if all(group.runs[0].path != other.runs[0].path for other in kept):
            kept.append(group)
    return kept


def table1(dirs):
    final, sgd = _group(dirs, "final"), common.sgd_group(dirs, "final")
    ema, baseline = _test(final, "ema_acc"), _test(sgd, "baseline")
    statistics = [Statistic("EMA (acc.) − baseline, test accuracy", ema, baseline, primary=True),
                  Statistic("EMA (loss) − baseline", _test(final, "ema_loss"), baseline)]
    statistics += _early_stopped_sgd(final, sgd, "ema_acc", "EMA (acc.)")
    if _has_method(sgd, "swa_budget"):
        statistics.append(Statistic("EMA (acc.) − SWA at the budget's end", ema, _test(sgd, "swa_budget"),
                                    equivalence=True))
    validation = _group(dirs, "validation", "validation_seeds")
    return statistics, _distinct(final, sgd), seconds_per_seed(final) + seconds_per_seed(validation)


def swa(dirs):
    final = common.sgd_group(dirs, "final")  # SWA branches off SGD: the runs at SGD's lr
    method = "swa_budget" if _has_method(final, "swa_budget") else "swa"
    statistics = [Statistic("SWA at the budget's end − SGD's last epoch, test accuracy", _test(final, method),
                            _test(final, "baseline"), primary=True)]
    if method == "swa_budget" and _has_method(final, "swa"):
        statistics.append(Statistic("SWA at the branch's end − SGD's last epoch", _test(final, "swa"),
                                    _test(final, "baseline")))
    return statistics, [final], seconds_per_seed(final)


def table3(dirs):
    final, sgd = _group(dirs, "final"), common.sgd_group(dirs, "final")
    ema = _consistency(dirs["final"])["ema_loss"]
    baseline = _consistency(dirs.get("final_sgd") or dirs["final"])["baseline"]
    return ([Statistic("churn: EMA (loss) − baseline, per pair of seeds", ema["churn_by_pair"],
                       baseline["churn_by_pair"], primary=True, higher_is_better=False),
             Statistic("JS divergence (nats): EMA (loss) − baseline", ema["js_divergence_by_pair"],
                       baseline["js_divergence_by_pair"], higher_is_better=False)],
            _distinct(final, sgd), seconds_per_seed(final))


def _consistency(directory):
    """The models of app.consistency's result for a directory of seeds (consistency.json)."""
    with open(os.path.join(directory, runs.CONSISTENCY_FILE), encoding="utf-8") as handle:
        return json.load(handle)["models"]


def table5(dirs):
    group, sgd = _group(dirs, "validation", "validation_seeds"), common.sgd_group(dirs, "validation", "validation_seeds")
    statistics = [Statistic("ECE: EMA (loss) − baseline (80/20 runs, 100 equal-mass bins)",
                            _test(group, "ema_loss", "ece"), _test(sgd, "baseline", "ece"), primary=True,
                            higher_is_better=False)]
    for label, metric in (("ECE after TS (T on the hold-out)", "ece_temperature_scaled"), ("NLL", "loss")):
        statistics.append(Statistic(f"{label}: EMA (loss) − baseline", _test(group, "ema_loss", metric),
                                    _test(sgd, "baseline", metric), higher_is_better=False))
    return statistics, _distinct(group, sgd), seconds_per_seed(group)


def fig2(dirs):
    group, sgd_group = _group(dirs, "noisy_final"), common.sgd_group(dirs, "noisy_final")
    decay = common.largest_decay(group.runs[0])
    ema = [float(np.mean(common.column(run, f"ema_{decay}_val_accuracy"))) for run in group.runs]
    sgd = [float(np.mean(common.column(run, "val_accuracy"))) for run in sgd_group.runs]
    statistics = [Statistic(f"EMA α={decay} − SGD, mean over all epochs of the clean test curve (first 2,000)",
                            ema, sgd, primary=True)]
    statistics += _early_stopped_sgd(group, sgd_group, "ema_acc", "EMA (acc.), clean test,")
    return statistics, _distinct(group, sgd_group), seconds_per_seed(group)


def table2(dirs):
    group, sgd = _group(dirs, "noisy_final"), common.sgd_group(dirs, "noisy_final")
    statistics = [Statistic("EMA (acc.) − CE (SGD's last epoch), clean test", _test(group, "ema_acc"),
                            _test(sgd, "baseline"), primary=True)]
    statistics += _early_stopped_sgd(group, sgd, "ema_acc", "EMA (acc.)")
    return statistics, _distinct(group, sgd), seconds_per_seed(group)


def adda(dirs):
    constant, cosine = _group(dirs, "adda_constant"), _group(dirs, "adda_cosine")
    decay = _adda_decay(constant)

    def ema(group):
        return [run.evaluation["by_weights"][f"ema_{decay}_acc"]["accuracy"] for run in group.runs]

    gain_constant = np.subtract(ema(constant), _test(constant, "baseline"))
    gain_cosine = np.subtract(ema(cosine), _test(cosine, "baseline"))
    return ([Statistic(f"constant lr: EMA {decay} − SGD, final epoch, test", ema(constant),
                       _test(constant, "baseline"), primary=True),
             Statistic(f"cosine: EMA {decay} − SGD, final epoch, test", ema(cosine), _test(cosine, "baseline"),
                       equivalence=True),
             Statistic("constant-lr gain − cosine gain", list(gain_constant), list(gain_cosine))],
            [constant, cosine], seconds_per_seed(constant) + seconds_per_seed(cosine))  # a seed is one run of each


def _adda_decay(group):
    """The decay chosen on the 10 % hold-out: best final-epoch hold-out accuracy, mean over seeds."""
    decays = sorted(group.runs[0].summary["ema"], key=float)
    return max(decays, key=lambda d: np.mean([run.history[-1][f"ema_{d}_val_accuracy"] for run in group.runs]))


CLAIMS = {"fig1a": fig1a, "fig1b": fig1b, "table1": table1, "swa": swa, "table3": table3, "table5": table5,
          "fig2": fig2, "table2": table2, "adda-constant-lr": adda}


def plan_commit():
    """The commit that last changed docs/analysis-plan.md (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", PLAN_FILE], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def exploratory_reason(groups, commit=None):
    """Why the runs of `groups` cannot decide under the plan, or None when every one can."""
    commit = commit or plan_commit()
    if commit is None:
        return "the plan's commit is unknown (not a git checkout)"
    for group in groups:
        for run in group.runs:
            provenance = run.config.get("provenance") or {}
            made = provenance.get("git_commit")
            if made is None or provenance.get("git_dirty") is not False:
                return f"{run.path} records no clean commit"
            ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, made], cwd=ROOT,
                                      capture_output=True, timeout=10)
            if ancestor.returncode != 0:
                return f"{run.path} was made from {made[:10]}, before the plan's commit {commit[:10]}"
    return None


def plan_rule(claim):
    """The claim's section of docs/analysis-plan.md, as written there."""
    with open(PLAN_FILE, encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(rf"^### {re.escape(claim)} .*?(?=^### |^## |\Z)", text, re.S | re.M)
    return match.group(0).strip() if match else ""


def assess(claim, dirs):
    """{verdict, rows (one per statistic), regime (one per SGD run), exploratory, primary}."""
    statistics, regime_groups, seconds = CLAIMS[claim](dirs)
    reason = exploratory_reason(regime_groups)
    rows = []
    for statistic in statistics:
        result = statistic.assess(seconds if statistic.primary else None)
        rows.append({"statistic": statistic, **result})
    primary = next(row for row in rows if row["statistic"].primary)
    regime_rows = [(group, run, _regime_row(run)) for group in regime_groups for run in group.runs]
    return {"verdict": "exploratory" if reason else primary["verdict"], "would_read": primary["verdict"],
            "exploratory": reason, "rows": rows, "primary": primary, "regime": regime_rows}


def _regime_row(run):
    try:
        return regime.regime_row(run.history)
    except ValueError:  # a run shorter than the row's windows (the test suite's tiny budget)
        return None


def section(claim, dirs):
    """The page's Markdown: the plan's rule, the statistics, the verdict, the power and regime rows."""
    result = assess(claim, dirs)
    lines = [f"**Rule** (docs/analysis-plan.md at {(plan_commit() or 'unknown')[:10]}):", "",
             *[f"> {line}" if line else ">" for line in plan_rule(claim).splitlines()], ""]
    if result["exploratory"]:
        lines += [f"**Exploratory**: {result['exploratory']}; the plan's rule would read "
                  f"**{result['would_read']}**.", ""]
    else:
        lines += [f"**Verdict: {result['verdict']}.**", ""]
    lines += ["| statistic | per seed (points) | mean, 95 % CI | rule | reads |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        statistic = row["statistic"]
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in row["diffs"])
        name = f"**primary**: {statistic.label}" if statistic.primary else statistic.label
        lines.append(f"| {name} | {per_seed} | {row['interval'].short()} | {row['rule']} | {row['verdict']} |")
        if row["interval"].rounds_onto(0.0) or row["interval"].rounds_onto(stats.EQUIVALENCE_MARGIN):
            lines.append("| (a bound shows as the margin; decided on its unrounded value) | | | | |")
    lines += ["", f"**Power** (primary): {result['primary']['power']}.", ""]
    notes = [row["statistic"].note for row in result["rows"] if row["statistic"].note]
    lines += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    lines += ["**Regime** (docs/analysis-plan.md; SGD of each run read):", "", "| run | seed | regime row |",
              "|---|---|---|"]
    lines += [f"| {os.path.relpath(run.path, ROOT) if os.path.isabs(run.path) else run.path} | {common.seed(run)} | "
              f"{regime.regime_text(row) if row else f'{len(run.history)} epochs: too short for the row'} |"
              for _, run, row in result["regime"]]
    return "\n".join(lines) + "\n", result
