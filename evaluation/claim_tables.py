"""The tables and figures of `python -m app.reproduce`, one builder per claim.

The claims themselves, and the pages built from these tables: evaluation/claims.py.

Each builder reads finished run directories (docs/run-directory.md) and
returns rows (the CSV), a Markdown table, the figures it drew, the paper's
numbers it is compared with, a verdict and its reason, the runs it read (for
the page's provenance) and their config (for the budget's ratio table).
Verdicts come from paired 95 % confidence intervals over seeds and a stated
margin (evaluation/stats.py): `holds`, `does not hold`, `inconclusive`.
Accuracies of tables are measured by `app.evaluate` on the whole test split
(evaluation.json); curves come from history.csv. Nothing here trains.
Evidence: tests/test_reproduce.py recomputes the tables' numbers from the
run directories.
"""

import dataclasses
import json
import math
import os

import numpy as np

from evaluation import figures, report, runs, stats

# Paper Table 2 (CIFAR-10N worse / CIFAR-100N), quoted from Wei et al. (2022) by the paper.
PUBLISHED_TABLE2 = (
    ("DivideMix", "92.56 ± 0.42", "71.13 ± 0.48"),
    ("PES (semi)", "92.68 ± 0.22", "70.36 ± 0.33"),
    ("ELR+", "91.09 ± 1.6", "66.70 ± 0.07"),
    ("EMA (acc.) — the paper", "86.71 ± 0.17", "65.15 ± 0.20"),
    ("CAL", "85.36 ± 0.16", "61.73 ± 0.42"),
    ("CORES", "83.60 ± 0.53", "61.15 ± 0.73"),
    ("Co-Teaching", "83.83 ± 0.13", "60.30 ± 0.27"),
    ("CE (standard)", "77.69 ± 1.55", "55.50 ± 0.66"),
)


def _group(*paths):
    """The runs behind `paths` (missing directories skipped) as one group."""
    return runs.load_groups([path for path in paths if path and os.path.isdir(path)])[0]


def _validation(dirs):
    """The 80/20 validation runs of every seed (the first seed's run and the others')."""
    return _group(dirs["validation"], dirs.get("validation_seeds"))


def _column(run, name):
    return np.array([row.get(name, np.nan) for row in run.history], dtype="float64")


def _mean_std(values):
    """(mean, sample std or None for one value) of the finite values (report.mean_std)."""
    return report.mean_std(values)[:2]


def _pm(mean, std, scale=100, digits=2):
    return report.format_mean_std(mean, std, scale, digits)


def _largest_decay(run):
    return max(run.summary.get("ema", {}), key=float)


def _seed(run):
    return str(run.config.get("seed", "?"))


def _evaluated(group):
    """Each run's evaluation.json (app.evaluate on the test split), or a ValueError naming the command."""
    for run in group.runs:
        if run.evaluation is None:
            raise ValueError(f"{run.path} has no evaluation.json; run `python -m app.evaluate {run.path}`")
    return [run.evaluation for run in group.runs]


def _test_values(group, key, metric="accuracy"):
    """Per seed: `models[key][metric]` of evaluation.json (whole test split unless --limit-test)."""
    return [evaluation["models"][key][metric] for evaluation in _evaluated(group)]


def _test_examples(group):
    return _evaluated(group)[0]["test_examples"]


def _per_seed_table(group, columns, digits=2, scale=100):
    """Rows per seed, then mean ± sd: `columns` = [(label, per-seed values)]."""
    lines = [[_seed(run)] + [f"{scale * values[i]:.{digits}f}" for _, values in columns]
             for i, run in enumerate(group.runs)]
    lines.append(["mean ± sd"] + [_pm(*_mean_std(values), scale, digits) for _, values in columns])
    return report.markdown_table(["seed"] + [label for label, _ in columns], lines)


def _interval_lines(items):
    """'- label: +x points, 95 % CI [a, b] (method): verdict' for [(label, interval, verdict)]."""
    return "\n".join(f"- {label}: {interval.text()} → **{verdict}**" for label, interval, verdict in items)


def _result(rows, table, headline, verdict, reason, group, figures_drawn=(), mechanism="", extra_runs=()):
    return dict(rows=rows, table=table, figures=list(figures_drawn), headline=headline, verdict=verdict,
                reason=reason, mechanism=mechanism, runs=list(group.runs) + list(extra_runs), config=group.config)


# Fig. 1a.


def fig1a(dirs, out):
    group = _validation(dirs)
    decays = figures.ema_decay_keys(group.runs)
    sgd = np.stack([_column(run, "val_accuracy") for run in group.runs])
    best = np.stack([_column(run, "ema_best_val_accuracy") for run in group.runs])
    epochs, lr = figures.mean_curve(group.runs, "lr")
    count, half = sgd.shape[1], sgd.shape[1] // 2
    per_decay = np.stack([figures.mean_curve(group.runs, f"ema_{d}_val_accuracy")[1] for d in decays])
    rows = []
    for i, epoch in enumerate(epochs):
        gap = stats.paired_interval(best[:, i], sgd[:, i])
        rows.append({"epoch": int(epoch), "lr": lr[i], "sgd_val_accuracy": sgd[:, i].mean(),
                     "ema_best_val_accuracy": best[:, i].mean(), "best_decay": decays[int(np.argmax(per_decay[:, i]))],
                     "gap": gap.mean, "gap_low": gap.low, "gap_high": gap.high, "seeds": len(group.runs)})
    mean_best = best.mean(axis=0)
    peak = int(np.argmax(mean_best))
    ahead = stats.paired_interval((best[:, :half] - sgd[:, :half]).mean(axis=1), np.zeros(len(group.runs)))
    end = stats.paired_interval(best[:, -1], sgd[:, -1])
    parts = [("best EMA − SGD, mean over epochs 1-%d (margin 0)" % half, ahead, stats.verdict(ahead, 0.0)),
             ("best EMA − SGD at the last epoch, within ±1 point",
              end, stats.combined([stats.verdict(end, -0.01), stats.verdict(end, 0.01, higher_is_better=False)]))]
    verdict = stats.combined(v for _, _, v in parts)
    shown = sorted({1, 2, 3, max(1, count // 4), count // 2, 3 * count // 4, peak + 1, count - 1, count})
    table = report.markdown_table(
        ["epoch", "lr", "SGD (%)", "best EMA (%)", "its decay", "EMA − SGD", "95 % CI"],
        [[str(r["epoch"]), f"{r['lr']:.3g}", f"{100 * r['sgd_val_accuracy']:.2f}",
          f"{100 * r['ema_best_val_accuracy']:.2f}", r["best_decay"], f"{100 * r['gap']:+.2f}",
          "—" if math.isnan(r["gap_low"]) else f"[{100 * r['gap_low']:+.2f}, {100 * r['gap_high']:+.2f}]"]
         for r in rows if r["epoch"] in shown])
    peaks = [int(np.argmax(b)) + 1 for b in best]
    table += "\n" + _per_seed_table(group, [
        (f"best EMA − SGD, epochs 1-{half} (points)", list((best[:, :half] - sgd[:, :half]).mean(axis=1))),
        ("best EMA peak (%)", list(best.max(axis=1))),
        ("at the last epoch: SGD (%)", list(sgd[:, -1])), ("best EMA (%)", list(best[:, -1]))])
    path = figures.plot_ema_vs_sgd(group, os.path.join(out, "fig1a.png"), "ema_best_val_accuracy",
                                   "EMA (best decay each epoch)")
    headline = (f"Fig. 1a ({group.dataset}/{group.model}, validation, {len(group.runs)} seeds): the best EMA leads "
                f"SGD by {ahead.text()} on average over epochs 1-{half}; its mean curve peaks at epoch "
                f"{peak + 1} of {count} ({100 * mean_best[peak]:.2f} %; per seed: epochs "
                f"{', '.join(map(str, peaks))}) and ends {end.text()} from SGD ({100 * sgd[:, -1].mean():.2f} %).")
    reason = (stats.rule_text(0.0) + " for the lead; the end gap must lie within ±1 point (both sides). "
              "The peak epoch is descriptive (it is picked on the same curves); Table 1 tests the "
              "validation-selected epoch on the test set\n\n" + _interval_lines(parts))
    return _result(rows, table, headline, verdict, reason, group, [path], _release_text(group.config))


def _release_text(config):
    released = runs.warmup_release_epochs(config)
    parts = [f"{d} at epoch {e}" if e else f"{d} never (held at the warm-up value all run)"
             for d, e in released.items()]
    return (f"Decay warm-up min(α, (t+1)/(t+10)) ({config.get('ema_warmup', 'steps')}, "
            f"{runs.steps_per_epoch(config)} steps/epoch, T={config['ema_every_steps']}): released " + ", ".join(parts) + ".")


# Fig. 1b.


def fig1b(dirs, out):
    group = _validation(dirs)
    decays = figures.ema_decay_keys(group.runs)
    released = runs.warmup_release_epochs(group.config)
    rows, gains = [], {}
    for decay in decays:
        tracked = [np.nanmax(_column(run, f"ema_{decay}_val_accuracy")) for run in group.runs]
        recomputed = [np.nanmax(_column(run, f"ema_{decay}_bn_val_accuracy")) for run in group.runs]
        gain = stats.paired_interval(recomputed, tracked)
        gains[decay] = np.subtract(recomputed, tracked)
        rows.append({"decay": decay, "released_epoch": released.get(decay), "seeds": len(group.runs),
                     "best_tracked_bn": float(np.mean(tracked)), "best_tracked_bn_std": _mean_std(tracked)[1],
                     "best_bn_recomputed": float(np.mean(recomputed)),
                     "best_bn_recomputed_std": _mean_std(recomputed)[1],
                     "gain": gain.mean, "gain_low": gain.low, "gain_high": gain.high})
    table = report.markdown_table(
        ["decay", "released (epoch)", "best, tracked BN (%)", "best, BN recomputed (%)",
         "recomputed − tracked", "95 % CI"],
        [[r["decay"], str(r["released_epoch"]), _pm(r["best_tracked_bn"], r["best_tracked_bn_std"]),
          _pm(r["best_bn_recomputed"], r["best_bn_recomputed_std"]), f"{100 * r['gain']:+.2f}",
          "—" if math.isnan(r["gain_low"]) else f"[{100 * r['gain_low']:+.2f}, {100 * r['gain_high']:+.2f}]"]
         for r in rows])
    largest, smallest = decays[-1], decays[0]
    largest_gain = stats.paired_interval(gains[largest], np.zeros(len(group.runs)))
    versus = stats.paired_interval(gains[largest], gains[smallest])
    parts = [(f"BN recompute's gain for the largest decay ({largest}), margin +2 points", largest_gain,
              stats.verdict(largest_gain, 0.02)),
             (f"its gain minus the smallest decay's ({smallest}), margin 0", versus, stats.verdict(versus, 0.0))]
    verdict = stats.combined(v for _, _, v in parts)
    path = figures.plot_decays(group, os.path.join(out, "fig1b.png"))
    headline = (f"Fig. 1b ({len(group.runs)} seeds): BN recompute adds {largest_gain.text()} to the best validation "
                f"accuracy of the largest decay ({largest}) and {100 * gains[smallest].mean():+.2f} to the smallest "
                f"({smallest}).")
    reason = ("the paper's failure: the largest decay gains more than 2 points from BN recompute, more than the "
              "smallest; " + stats.rule_text(0.02) + " (and 0 for the comparison)\n\n" + _interval_lines(parts))
    return _result(rows, table, headline, verdict, reason, group, [path], _release_text(group.config))


# Table 1 and SWA.


def table1(dirs, out):
    group = _group(dirs["final"])
    decay = _largest_decay(group.runs[0])
    methods = [m for m in ("baseline", "ema_acc", "ema_loss", "swa") if m in _evaluated(group)[0]["models"]]
    accuracy = {m: _test_values(group, m) for m in methods}
    loss = {m: _test_values(group, m, "loss") for m in methods}
    intervals = {m: stats.paired_interval(accuracy[m], accuracy["baseline"]) for m in methods if m != "baseline"}
    rows = [{"method": m, "ema_decay": decay if m.startswith("ema") else "", "seeds": len(group.runs),
             "test_examples": _test_examples(group),
             "accuracy_mean": _mean_std(accuracy[m])[0], "accuracy_std": _mean_std(accuracy[m])[1],
             "loss_mean": _mean_std(loss[m])[0], "loss_std": _mean_std(loss[m])[1],
             "gain": intervals[m].mean if m in intervals else "", "gain_low": intervals[m].low if m in intervals else "",
             "gain_high": intervals[m].high if m in intervals else "",
             "selected_on": _selected_on(group, m)} for m in methods]
    labels = {"baseline": "Baseline", "ema_acc": "EMA (acc.)", "ema_loss": "EMA (loss)", "swa": "SWA"}
    table = report.markdown_table(
        ["", "Baseline", "EMA (acc.)", "EMA (loss)", "SWA"],
        [["ours: accuracy (%)"] + [_pm(*_mean_std(accuracy[m])) if m in accuracy else "—"
                                   for m in ("baseline", "ema_acc", "ema_loss", "swa")],
         ["ours: loss"] + [_pm(*_mean_std(loss[m]), 1, 3) if m in loss else "—"
                           for m in ("baseline", "ema_acc", "ema_loss", "swa")],
         ["ours: − baseline, 95 % CI"] + ["—"] + [
             f"{100 * intervals[m].mean:+.2f} [{100 * intervals[m].low:+.2f}, {100 * intervals[m].high:+.2f}]"
             if m in intervals and not math.isnan(intervals[m].low) else "—" for m in ("ema_acc", "ema_loss", "swa")],
         ["paper R18/C100: accuracy (%)", "77.63 ± 0.14", "78.55 ± 0.28", "78.07 ± 0.29", "78.69 ± 0.25"],
         ["paper R18/C100: loss", "1.02", "0.84", "0.82", "—"]])
    table += "\nTest accuracy (%) per seed:\n\n" + _per_seed_table(group, [(labels[m], accuracy[m]) for m in methods])
    parts = [(f"{labels[m]} − baseline (margin 0)", intervals[m], stats.verdict(intervals[m], 0.0))
             for m in ("ema_acc", "ema_loss") if m in intervals]
    verdict = parts[0][2]
    best_part, best_text = _best_decay_part(dirs, group)
    headline = (f"Table 1 ({group.dataset}/{group.model}, {_test_examples(group):,} test images, {len(group.runs)} "
                f"seeds, EMA α={decay}, BN recomputed once): EMA (acc.) {intervals['ema_acc'].text()} over the "
                f"baseline ({100 * np.mean(accuracy['baseline']):.2f} %).")
    reason = (stats.rule_text(0.0) + " (EMA (acc.), the paper's column)\n\n" + _interval_lines(parts + [best_part]))
    notes = [f"EMA epochs selected on: {_selected_on(group, 'ema_acc') or '—'}.",
             f"Reported decay: the largest, α={decay} (paper §4.1). {best_text}"]
    return _result(rows, table, headline, verdict, reason, group, mechanism=" ".join(notes),
                   extra_runs=_validation(dirs).runs)


def _best_decay_part(dirs, final):
    """Does the decay the validation runs rank first peak early and beat SGD's final by >= 1 point (test)?"""
    validation = _validation(dirs)
    decays = list(validation.runs[0].summary["ema"])
    score = {d: np.mean([run.summary["ema"][d]["best_val_accuracy"]["val_accuracy"] for run in validation.runs])
             for d in decays}
    winner = max(decays, key=lambda d: (score[d], -float(d)))
    evaluations = _evaluated(final)
    name = f"ema_{winner}_acc_bn"
    values = [e["by_weights"][name]["accuracy"] for e in evaluations]
    interval = stats.paired_interval(values, _test_values(final, "baseline"))
    epochs = [run.summary["ema"][winner]["best_val_accuracy"]["epoch"] for run in final.runs]
    budget = final.config["epochs"]
    early = all(e <= 0.75 * budget for e in epochs)
    part = (f"best decay on validation (α={winner}), at its validation-selected epoch, BN recomputed − baseline, "
            f"margin +1 point", interval, stats.verdict(interval, 0.01))
    text = (f"The validation runs rank α={winner} first ({100 * score[winner]:.2f} % mean best validation "
            f"accuracy); its selected epochs {', '.join(map(str, sorted(set(epochs))))} of {budget} are "
            f"{'all' if early else 'not all'} within the first 75 % (paper App. B: always < 3/4).")
    return part, text


def _selected_on(group, method):
    if not method.startswith("ema"):
        return ""
    criterion = runs.summary_key(method)
    decay = _largest_decay(group.runs[0])
    return "; ".join(sorted({run.summary["ema"][decay][criterion].get("selected_on", "?") for run in group.runs}))


SWA_MARGIN = 0.006  # the EMA paper's Table 1 SWA gain on CIFAR-100 is +1.06; the issue asks for +0.6


def swa(dirs, out):
    group = _group(dirs["final"])
    sgd = _test_values(group, "baseline")
    first = group.runs[0].summary["swa"]
    branch, budget = first["branch"], group.config["epochs"]
    lengths = []  # (method, label, models averaged)
    if "swa_budget" in _evaluated(group)[0]["models"]:
        lengths.append(("swa_budget", f"SWA at the budget's end (epoch {budget}, 1 budget)",
                        first["budget"]["models_averaged"]))
    end = branch.get("last_epoch", budget)
    lengths.append(("swa", f"SWA at the branch's end (epoch {end}, {end / budget:.2f} budgets)",
                    first["models_averaged"]))
    averaged = {method: _test_values(group, method) for method, _, _ in lengths}
    intervals = {method: stats.paired_interval(averaged[method], sgd) for method, _, _ in lengths}
    parts = [(f"{label} − SGD, margin +{100 * SWA_MARGIN:g} points", intervals[method],
              stats.verdict(intervals[method], SWA_MARGIN)) for method, label, _ in lengths]
    verdict = parts[0][2]  # the SWA paper's main comparison: the same budget as SGD
    rows = [{"seed": run.config["seed"], "sgd_final": s,
             **{method: averaged[method][i] for method, _, _ in lengths},
             "swa_branch_sgd_final": run.summary["swa"]["branch"]["final_sgd_val_accuracy"]}
            for i, (run, s) in enumerate(zip(group.runs, sgd))]
    ci = {m: f"{100 * iv.mean:+.2f}" + ("" if math.isnan(iv.low) else f" [{100 * iv.low:+.2f}, {100 * iv.high:+.2f}]")
          for m, iv in intervals.items()}
    table = report.markdown_table(
        ["", "test accuracy (%)", "models averaged", "− SGD, 95 % CI"],
        [["SGD (cosine to 0, final)", _pm(*_mean_std(sgd)), "—", "—"]]
        + [[label, _pm(*_mean_std(averaged[m])), str(count), ci[m]] for m, label, count in lengths]
        + [["paper (EMA paper Table 1, R18/C100): SGD / SWA", "77.63 ± 0.14 / 78.69 ± 0.25", "—", "+1.06"],
           ["paper (SWA paper Table 1, CIFAR-10, VGG-16 / ResNet-164 / WRN-28-10: 1 / 1.25 budgets)", "—", "—",
            "+0.34 / +0.28 / +0.27; +0.45 / +0.49 / +0.46"]])
    table += "\nTest accuracy (%) per seed:\n\n" + _per_seed_table(group, [("SGD final", sgd)] + [
        (label.split(" (")[0], averaged[m]) for m, label, _ in lengths])
    included = "the starting point included" if first.get("start_included") else "the starting point not included"
    headline = (f"SWA ({group.dataset}/{group.model}, {_test_examples(group):,} test images, {len(group.runs)} seeds; "
                f"branch from epoch {branch['from_epoch']} at constant lr {branch['swa_lr']:g}, {included}): "
                + "; ".join(f"{label.split(' (')[0]} {intervals[m].text()} over SGD" for m, label, _ in lengths) + ".")
    reason = (stats.rule_text(SWA_MARGIN) + " (the SWA paper: +0.3 points at 1 budget and +0.5 at 1.25 on "
              "CIFAR-10, +0.6 to +1.3 on CIFAR-100, Table 1); the verdict is the 1-budget comparison\n\n"
              + _interval_lines(parts))
    return _result(rows, table, headline, verdict, reason, group)


# Table 3.


def table3(dirs, out):
    group = _group(dirs["final"])
    with open(os.path.join(dirs["final"], runs.CONSISTENCY_FILE), encoding="utf-8") as handle:
        data = json.load(handle)
    models = data["models"]
    rows = []
    for method in ("baseline", "ema_loss"):
        m = models[method]
        rows.append({"method": method, "accuracy": m["accuracy"], "churn": m["churn"],
                     "js_divergence_nats": m["js_divergence"], "js_divergence_bits": m["js_divergence"] / math.log(2),
                     "churn_by_pair": m.get("churn_by_pair"), "js_by_pair": m.get("js_divergence_by_pair")})
    b, e = rows
    parts = []
    for label, key in (("churn", "churn_by_pair"), ("JS divergence (nats)", "js_by_pair")):
        if e[key] and b[key]:
            interval = stats.paired_interval(e[key], b[key])
        else:  # a consistency.json written before the per-pair values
            interval = stats.Interval(math.nan, math.nan, math.nan, 0, "no per-pair values")
        if key == "js_by_pair":
            interval = dataclasses.replace(interval, scale=1.0, unit=" nats", digits=4)
        parts.append((f"EMA (loss) − baseline {label}, lower is better (margin 0)", interval,
                      stats.verdict(interval, 0.0, higher_is_better=False)))
    verdict = stats.combined(v for _, _, v in parts)
    table = report.markdown_table(
        ["", "Acc. baseline (%)", "Acc. EMA (%)", "Churn baseline (%)", "Churn EMA (%)",
         "JS baseline (nats / bits)", "JS EMA (nats / bits)"],
        [["ours", f"{100 * b['accuracy']:.2f}", f"{100 * e['accuracy']:.2f}", f"{100 * b['churn']:.2f}",
          f"{100 * e['churn']:.2f}", f"{b['js_divergence_nats']:.4f} / {b['js_divergence_bits']:.4f}",
          f"{e['js_divergence_nats']:.4f} / {e['js_divergence_bits']:.4f}"],
         ["paper R18/C100", "77.63", "78.05", "18.84", "12.71", "0.32 (unit not stated)", "0.09"]])
    if b["churn_by_pair"]:
        table += "\nPer pair of seeds:\n\n" + report.markdown_table(
            ["seeds", "churn baseline (%)", "churn EMA (%)", "JS baseline", "JS EMA"],
            [[" & ".join(map(str, pair)), f"{100 * cb:.2f}", f"{100 * ce:.2f}", f"{jb:.4f}", f"{je:.4f}"]
             for pair, cb, ce, jb, je in zip(data.get("pair_seeds", [["?"]] * data["pairs"]), b["churn_by_pair"],
                                             e["churn_by_pair"], b["js_by_pair"], e["js_by_pair"])])
    headline = (f"Table 3 ({len(data['seeds'])} seeds, {data['pairs']} pairs, {data['test_examples']:,} test images): "
                f"churn {100 * b['churn']:.2f} % -> {100 * e['churn']:.2f} % with the EMA (loss) "
                f"({parts[0][1].text()}), JS {b['js_divergence_nats']:.4f} -> {e['js_divergence_nats']:.4f} nats.")
    reason = (stats.rule_text(0.0, higher_is_better=False) + f" for both churn and JS; the {data['pairs']} pairs "
              "share seeds, so their interval is optimistic. The paper's JS values reach 0.85, above ln 2 = 0.693 nats, the "
              "maximum of a mean per-sample JS in nats (1 in bits): its unit is not recoverable, compare "
              "directions only\n\n" + _interval_lines(parts))
    return _result(rows, table, headline, verdict, reason, group)


# Table 5.


def table5(dirs, out):
    group = _validation(dirs)
    rows, values = [], {}
    for method in ("baseline", "ema_acc", "ema_loss"):
        for metric in ("accuracy", "ece", "ece_temperature_scaled"):
            values[(method, metric)] = _test_values(group, method, metric)
            mean, std = _mean_std(values[(method, metric)])
            rows.append({"method": method, "metric": metric, "mean": mean, "std": std, "seeds": len(group.runs),
                         "test_examples": _test_examples(group)})
    table = report.markdown_table(
        ["", "Baseline", "EMA (acc.)", "EMA (loss)", "paper R18/C100 Baseline", "paper EMA"],
        [[label] + [_pm(*_mean_std(values[(m, metric)])) for m in ("baseline", "ema_acc", "ema_loss")]
         + list(paper) for label, metric, paper in (
             ("accuracy (%)", "accuracy", ("75.83 ± 0.05", "76.31 ± 0.28")),
             ("ECE (%)", "ece", ("11.75 ± 0.76", "9.46 ± 0.26")),
             ("ECE after TS (%)", "ece_temperature_scaled", ("4.67 ± 0.65", "3.13 ± 0.15")))])
    table += "\nPer seed (%):\n\n" + _per_seed_table(group, [
        ("ECE baseline", values[("baseline", "ece")]), ("ECE EMA (acc.)", values[("ema_acc", "ece")]),
        ("ECE after TS baseline", values[("baseline", "ece_temperature_scaled")]),
        ("ECE after TS EMA (acc.)", values[("ema_acc", "ece_temperature_scaled")]),
        ("acc. baseline", values[("baseline", "accuracy")]), ("acc. EMA (acc.)", values[("ema_acc", "accuracy")])])
    parts = []
    for label, metric in (("ECE", "ece"), ("ECE after temperature scaling", "ece_temperature_scaled")):
        interval = stats.paired_interval(values[("ema_acc", metric)], values[("baseline", metric)])
        parts.append((f"EMA (acc.) − baseline {label}, lower is better (margin 0)", interval,
                      stats.verdict(interval, 0.0, higher_is_better=False)))
    accuracy = stats.paired_interval(values[("ema_acc", "accuracy")], values[("baseline", "accuracy")])
    verdict = stats.combined(v for _, _, v in parts)
    headline = (f"Table 5 ({len(group.runs)} seeds, 80/20 runs on {_test_examples(group):,} test images, temperature "
                f"fitted on the hold-out): ECE {100 * np.mean(values[('baseline', 'ece')]):.2f} -> "
                f"{100 * np.mean(values[('ema_acc', 'ece')]):.2f} % (EMA acc., {parts[0][1].text()}), after TS "
                f"{100 * np.mean(values[('baseline', 'ece_temperature_scaled')]):.2f} -> "
                f"{100 * np.mean(values[('ema_acc', 'ece_temperature_scaled')]):.2f} %; accuracy {accuracy.text()}.")
    reason = (stats.rule_text(0.0, higher_is_better=False) + " for ECE and for ECE after TS (M=100 equal-mass "
              f"bins, {_test_examples(group):,} images: 100 per bin)\n\n" + _interval_lines(parts))
    return _result(rows, table, headline, verdict, reason, group)


# Fig. 2 and Table 2 (label noise).


def fig2(dirs, out):
    group = _group(dirs["noisy_final"])
    decay = _largest_decay(group.runs[0])
    epochs, sgd = figures.mean_curve(group.runs, "val_accuracy")
    _, ema = figures.mean_curve(group.runs, f"ema_{decay}_val_accuracy")
    _, train = figures.mean_curve(group.runs, "train_accuracy")
    _, lr = figures.mean_curve(group.runs, "lr")
    rows = [{"epoch": int(e), "lr": r, "sgd_test_accuracy": s, f"ema_{decay}_test_accuracy": a,
             "sgd_train_accuracy_noisy_labels": t} for e, r, s, a, t in zip(epochs, lr, sgd, ema, train)]
    peak = int(np.nanargmax(ema))
    per_seed_peak = [_column(run, f"ema_{decay}_val_accuracy")[peak] for run in group.runs]
    per_seed_final = [_column(run, "val_accuracy")[-1] for run in group.runs]
    interval = stats.paired_interval(per_seed_peak, per_seed_final)
    parts = [(f"EMA α={decay} at the mean curve's peak (epoch {peak + 1}) − SGD's final (margin 0)", interval,
              stats.verdict(interval, 0.0))]
    path = figures.plot_ema_vs_sgd(group, os.path.join(out, "fig2.png"), f"ema_{decay}_val_accuracy", f"EMA α={decay}")
    shown = sorted({1, len(rows) // 4, len(rows) // 2, peak + 1, 3 * len(rows) // 4, len(rows)})
    table = report.markdown_table(
        ["epoch", "lr", "SGD test (%)", f"EMA α={decay} test (%)", "SGD train acc. on noisy labels (%)"],
        [[str(r["epoch"]), f"{r['lr']:.3g}", f"{100 * r['sgd_test_accuracy']:.2f}",
          f"{100 * r[f'ema_{decay}_test_accuracy']:.2f}", f"{100 * r['sgd_train_accuracy_noisy_labels']:.2f}"]
         for r in rows if r["epoch"] in shown])
    table += "\nPer seed (%):\n\n" + _per_seed_table(group, [
        (f"EMA at epoch {peak + 1}", per_seed_peak), ("SGD final", per_seed_final)])
    headline = (f"Fig. 2 ({group.dataset} 'worse' labels, {len(group.runs)} seeds, clean test set): EMA α={decay} peaks "
                f"at {100 * ema[peak]:.2f} % (epoch {peak + 1}, lr {lr[peak]:.3g}) vs SGD's final {100 * sgd[-1]:.2f} % "
                f"({interval.text()}); SGD ends at {100 * train[-1]:.2f} % training accuracy on the noisy labels "
                "(with augmentation).")
    reason = (stats.rule_text(0.0) + ". The peak is read off the test curve, as the paper's Fig. 2 shows it, "
              "so it is optimistic; Table 2 tests the validation-selected epoch\n\n" + _interval_lines(parts))
    return _result(rows, table, headline, parts[0][2], reason, group, [path], _release_text(group.config))


def table2(dirs, out):
    group = _group(dirs["noisy_final"])
    ema = _test_values(group, "ema_acc")
    sgd = _test_values(group, "baseline")
    interval = stats.paired_interval(ema, sgd)
    rows = [{"method": "EMA (acc.) — ours", "accuracy_mean": _mean_std(ema)[0], "accuracy_std": _mean_std(ema)[1]},
            {"method": "CE (standard) — ours, SGD final", "accuracy_mean": _mean_std(sgd)[0],
             "accuracy_std": _mean_std(sgd)[1]},
            {"method": "EMA (acc.) − CE, ours", "accuracy_mean": interval.mean, "ci_low": interval.low,
             "ci_high": interval.high}]
    lines = [[r["method"], _pm(r["accuracy_mean"], r.get("accuracy_std")), "—"] for r in rows[:2]]
    lines += [[f"{name} (quoted from the paper)", c10, c100] for name, c10, c100 in PUBLISHED_TABLE2]
    table = report.markdown_table(["Method", "CIFAR-10N worse (%)", "CIFAR-100N (%)"], lines)
    table += "\nTest accuracy (%) per seed:\n\n" + _per_seed_table(group, [("EMA (acc.)", ema), ("CE (SGD final)", sgd)])
    parts = [("EMA (acc.) − CE (margin 0)", interval, stats.verdict(interval, 0.0))]
    headline = (f"Table 2 ({group.dataset}, {len(ema)} seeds, {group.model}, {_test_examples(group):,} test images): "
                f"EMA (acc., epoch chosen on the noisy validation split, BN recomputed) {100 * np.mean(ema):.2f} % vs "
                f"standard CE (SGD final) {100 * np.mean(sgd):.2f} % ({interval.text()}).")
    return _result(rows, table, headline, parts[0][2], stats.rule_text(0.0) + "\n\n" + _interval_lines(parts), group)


# Adda et al. Table 1.


def adda(dirs, out):
    rows, used = [], []
    for schedule in ("constant", "cosine"):
        run = _group(dirs[f"adda_{schedule}"]).runs[0]
        used.append(run)
        last = run.history[-1]
        row = {"schedule": schedule, "no_ema": last["val_accuracy"]}
        for decay in figures.ema_decay_keys([run]):
            row[f"ema_{decay}"] = last[f"ema_{decay}_val_accuracy"]
        rows.append(row)
    decays = [key[len("ema_"):] for key in rows[0] if key.startswith("ema_")]
    table = report.markdown_table(
        ["Schedule", "No EMA (%)"] + [f"EMA {d} (%)" for d in decays],
        [[r["schedule"], f"{100 * r['no_ema']:.2f}"] + [f"{100 * r[f'ema_{d}']:.2f}" for d in decays] for r in rows]
        + [["paper constant", "86.4", "89.3 (0.9)", "91.4 (0.99)", "92.2 (0.999)"],
           ["paper cosine", "91.4", "91.4", "91.4", "91.4"]])
    constant, cosine = rows
    config = used[0].config
    examples = config.get("limit_validation") or int(
        runs.train_examples(config["dataset"], None, True) * config.get("validation_fraction", 0.1))
    best = max(decays, key=lambda d: constant[f"ema_{d}"])
    se = {r["schedule"]: stats.binomial_se(r[f"ema_{best}"], r["no_ema"], examples) for r in rows}
    gain = stats.paired_interval([constant[f"ema_{best}"]], [constant["no_ema"]], fallback_se=se["constant"])
    versus = stats.paired_interval([constant[f"ema_{best}"] - constant["no_ema"]],
                                   [cosine[f"ema_{best}"] - cosine["no_ema"]],
                                   fallback_se=math.hypot(se["constant"], se["cosine"]))
    parts = [(f"constant lr: EMA {best} − SGD, margin +1 point", gain, stats.verdict(gain, 0.01)),
             ("that gain minus the same gain under cosine, margin +1 point", versus, stats.verdict(versus, 0.01))]
    verdict = stats.combined(v for _, _, v in parts)
    headline = (f"Adda Table 1 (final epoch, {config['validation_fraction']:.0%} hold-out, {examples:,} images, 1 seed): "
                f"constant lr: EMA {best} {gain.text()} over SGD ({100 * constant['no_ema']:.2f} %); cosine: "
                f"{100 * (cosine[f'ema_{best}'] - cosine['no_ema']):+.2f}.")
    reason = (stats.rule_text(0.01) + " for both parts. One seed per schedule: the interval is the binomial error "
              "of the hold-out images, treating the two models as independent (conservative: their predictions "
              "are correlated); it leaves out seed-to-seed variation\n\n" + _interval_lines(parts))
    result = _result(rows, table, headline, verdict, reason, _group(dirs["adda_constant"]), extra_runs=used[1:])
    result["outside_rule"] = ("Adda et al.'s own protocol (an EMA after every step, no decay warm-up, decays "
                              "0.9-0.999), not the EMA paper's; the budget-scaling rule does not apply to it.")
    return result
