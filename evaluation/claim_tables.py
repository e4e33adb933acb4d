"""The tables and figures of `python -m app.reproduce` for the paper's protocol claims.

Fig. 1a/1b, Tables 1, 3 and 5 and SWA; the label-noise claims and Adda et al.'s:
evaluation/noise_claims.py; what both share: evaluation/claim_common.py; the
pages built from these tables: evaluation/claims.py.

Each builder reads finished run directories (docs/run-directory.md) and
returns rows (the CSV), a Markdown table beside the paper's numbers, the
figures it drew, a headline of numbers (no verdict: a page's verdict, margin
and rule are the analysis plan's alone, evaluation/plan_claims.py), the runs
it read (for the page's provenance) and their config (for the budget's ratio
table). Accuracies of tables are measured by `app.evaluate` on the whole test
split (evaluation.json); curves come from history.csv. Nothing here trains.
Evidence: tests/test_reproduce.py recomputes the tables' numbers from the
run directories.
"""

import dataclasses
import math
import os

import numpy as np

from evaluation import claim_common as common
from evaluation import figures, report, runs, stats


# Fig. 1a.


def fig1a(dirs, out):
    group = common.validation(dirs)
    # SGD's curve at its own tuned lr where it differs (docs/analysis-plan.md, Comparators), seed by seed.
    sgd_group = common.paired_sgd(dirs, group, "validation", "validation_seeds")
    twin = common.has_twin(dirs, "validation", "validation_seeds")
    decays = figures.ema_decay_keys(group.runs)
    sgd = np.stack([common.column(run, "val_accuracy") for run in sgd_group.runs])
    best = np.stack([common.column(run, "ema_best_val_accuracy") for run in group.runs])
    epochs, lr = figures.mean_curve(group.runs, "lr")
    _, sgd_lr = figures.mean_curve(sgd_group.runs, "lr")  # the EMA's schedule where SGD has no twin
    count = sgd.shape[1]
    per_decay = np.stack([figures.mean_curve(group.runs, f"ema_{d}_val_accuracy")[1] for d in decays])
    rows = []
    for i, epoch in enumerate(epochs):
        gap = stats.paired_interval(best[:, i], sgd[:, i])
        rows.append({"epoch": int(epoch), "lr": lr[i], "sgd_lr": sgd_lr[i], "sgd_val_accuracy": sgd[:, i].mean(),
                     "ema_best_val_accuracy": best[:, i].mean(), "best_decay": decays[int(np.argmax(per_decay[:, i]))],
                     "gap": gap.mean, "gap_low": gap.low, "gap_high": gap.high, "seeds": len(group.runs)})
    mean_best = best.mean(axis=0)
    peak = int(np.argmax(mean_best))
    ahead = stats.paired_interval((best - sgd).mean(axis=1), np.zeros(len(group.runs)))  # the plan's secondary
    end = stats.paired_interval(best[:, -1], sgd[:, -1])
    shown = sorted({1, 2, 3, max(1, count // 4), count // 2, 3 * count // 4, peak + 1, count - 1, count})
    lrs = common.lr_columns(twin)
    table = report.markdown_table(
        ["epoch", *[header for header, _ in lrs], "SGD (%)", "best EMA (%)", "its decay", "EMA − SGD", "95 % CI"],
        [[str(r["epoch"]), *[f"{r[key]:.3g}" for _, key in lrs], f"{100 * r['sgd_val_accuracy']:.2f}",
          f"{100 * r['ema_best_val_accuracy']:.2f}", r["best_decay"], f"{100 * r['gap']:+.2f}",
          "—" if math.isnan(r["gap_low"]) else f"[{100 * r['gap_low']:+.2f}, {100 * r['gap_high']:+.2f}]"]
         for r in rows if r["epoch"] in shown])
    peaks = [int(np.argmax(b)) + 1 for b in best]
    table += "\n" + common.per_seed_table(group, [
        (f"best EMA − SGD, mean over epochs 1-{count} (points)", list((best - sgd).mean(axis=1))),
        ("best EMA peak (%)", list(best.max(axis=1))),
        ("at the last epoch: SGD (%)", list(sgd[:, -1])), ("best EMA (%)", list(best[:, -1]))])
    path = figures.plot_ema_vs_sgd(group, os.path.join(out, "fig1a.png"), "ema_best_val_accuracy",
                                   "EMA (best decay each epoch)", sgd_group=sgd_group if twin else None)
    headline = (f"Fig. 1a ({group.dataset}/{group.model}, validation, {len(group.runs)} seeds): best EMA − SGD, "
                f"mean over all {count} epochs: {ahead.text()}; the best EMA's mean curve peaks at epoch "
                f"{peak + 1} of {count} ({100 * mean_best[peak]:.2f} %; per seed: epochs "
                f"{', '.join(map(str, peaks))}); at the last epoch SGD {100 * sgd[:, -1].mean():.2f} %, best EMA − SGD "
                f"{end.text()}." + (f" SGD at its own tuned lr {sgd_group.config['lr']:g}." if twin else ""))
    return common.result(rows, table, headline, group, [path], common.release_text(group.config),
                         extra_runs=sgd_group.runs if twin else ())


# Fig. 1b.


def fig1b(dirs, out):
    """Every decay's validation accuracy with tracked and with recomputed BN, as means over the epochs where
    the plan measures the failure (the largest decay's release to the end: evaluation/plan_claims.py)."""
    group = common.validation(dirs)
    decays = figures.ema_decay_keys(group.runs)
    released = runs.warmup_release_epochs(group.config)
    largest, smallest = decays[-1], decays[0]
    first, last = common.recovery_window(group)
    rows, gains = [], {}
    for decay in decays:
        tracked = [float(np.mean(common.column(run, f"ema_{decay}_val_accuracy")[first - 1:])) for run in group.runs]
        recomputed = [float(np.mean(common.column(run, f"ema_{decay}_bn_val_accuracy")[first - 1:]))
                      for run in group.runs]
        gain = stats.paired_interval(recomputed, tracked)
        gains[decay] = np.subtract(recomputed, tracked)
        rows.append({"decay": decay, "released_epoch": released.get(decay), "first_epoch": first, "last_epoch": last,
                     "seeds": len(group.runs), "mean_tracked_bn": float(np.mean(tracked)),
                     "mean_tracked_bn_std": common.mean_std(tracked)[1],
                     "mean_bn_recomputed": float(np.mean(recomputed)),
                     "mean_bn_recomputed_std": common.mean_std(recomputed)[1],
                     "gain": gain.mean, "gain_low": gain.low, "gain_high": gain.high})
    table = report.markdown_table(
        ["decay", "released (epoch)", f"tracked BN, epochs {first}-{last} (%)",
         f"BN recomputed, epochs {first}-{last} (%)", "recomputed − tracked", "95 % CI"],
        [[r["decay"], str(r["released_epoch"]), common.pm(r["mean_tracked_bn"], r["mean_tracked_bn_std"]),
          common.pm(r["mean_bn_recomputed"], r["mean_bn_recomputed_std"]), f"{100 * r['gain']:+.2f}",
          "—" if math.isnan(r["gain_low"]) else f"[{100 * r['gain_low']:+.2f}, {100 * r['gain_high']:+.2f}]"]
         for r in rows])
    largest_gain = stats.paired_interval(gains[largest], np.zeros(len(group.runs)))
    path = figures.plot_decays(group, os.path.join(out, "fig1b.png"))
    headline = (f"Fig. 1b ({len(group.runs)} seeds): validation accuracy, BN recomputed − tracked, mean over epochs "
                f"{first}-{last} (the largest decay's release to the end): {largest_gain.text()} for the largest "
                f"decay ({largest}), {100 * gains[smallest].mean():+.2f} points for the smallest ({smallest}).")
    return common.result(rows, table, headline, group, [path], common.release_text(group.config))


# Table 1 and SWA.


def table1(dirs, out):
    group = common.runs_of(dirs, "final")
    sgd = common.paired_sgd(dirs, group, "final")  # baseline and SWA: SGD's runs at its own tuned lr, where made
    decay = common.largest_decay(group.runs[0])
    models = common.evaluated(group)[0]["models"]
    methods = [m for m in ("baseline", "ema_acc", "ema_loss", "swa") if m in models]
    # SWA at the budget the other columns had, when its branch ran past it (the SWA page shows both).
    swa_source = "swa_budget" if "swa_budget" in models else "swa"
    source = {m: sgd if m in ("baseline", "swa") else group for m in methods}
    accuracy = {m: common.test_values(source[m], swa_source if m == "swa" else m) for m in methods}
    loss = {m: common.test_values(source[m], swa_source if m == "swa" else m, "loss") for m in methods}
    intervals = {m: stats.paired_interval(accuracy[m], accuracy["baseline"]) for m in methods if m != "baseline"}
    rows = [{"method": swa_source if m == "swa" else m, "ema_decay": decay if m.startswith("ema") else "",
             "seeds": len(group.runs),
             "test_examples": common.test_examples(group),
             "accuracy_mean": common.mean_std(accuracy[m])[0], "accuracy_std": common.mean_std(accuracy[m])[1],
             "loss_mean": common.mean_std(loss[m])[0], "loss_std": common.mean_std(loss[m])[1],
             "gain": intervals[m].mean if m in intervals else "", "gain_low": intervals[m].low if m in intervals else "",
             "gain_high": intervals[m].high if m in intervals else "",
             "selected_on": _selected_on(group, m)} for m in methods]
    labels = {"baseline": "Baseline", "ema_acc": "EMA (acc.)", "ema_loss": "EMA (loss)",
              "swa": "SWA (1 budget)" if swa_source == "swa_budget" else "SWA"}
    table = report.markdown_table(
        ["", "Baseline", "EMA (acc.)", "EMA (loss)", labels["swa"]],
        [["ours: accuracy (%)"] + [common.pm(*common.mean_std(accuracy[m])) if m in accuracy else "—"
                                   for m in ("baseline", "ema_acc", "ema_loss", "swa")],
         ["ours: loss"] + [common.pm(*common.mean_std(loss[m]), 1, 3) if m in loss else "—"
                           for m in ("baseline", "ema_acc", "ema_loss", "swa")],
         ["ours: − baseline, 95 % CI"] + ["—"] + [
             intervals[m].short() if m in intervals and not math.isnan(intervals[m].low) else "—"
             for m in ("ema_acc", "ema_loss", "swa")],
         ["paper R18/C100: accuracy (%)", "77.63 ± 0.14", "78.55 ± 0.28", "78.07 ± 0.29", "78.69 ± 0.25"],
         ["paper R18/C100: loss", "1.02", "0.84", "0.82", "—"]])
    table += "\nTest accuracy (%) per seed:\n\n" + common.per_seed_table(group, [(labels[m], accuracy[m]) for m in methods])
    best_text = _best_decay_text(dirs, group)
    headline = (f"Table 1 ({group.dataset}/{group.model}, {common.test_examples(group):,} test images, {len(group.runs)} "
                f"seeds, EMA α={decay}, BN recomputed once): EMA (acc.) {intervals['ema_acc'].text()} over the "
                f"baseline ({100 * np.mean(accuracy['baseline']):.2f} %).")
    notes = [f"EMA epochs selected on: {_selected_on(group, 'ema_acc') or '—'}.",
             f"Reported decay: the largest, α={decay} (paper §4.1). {best_text}"]
    return common.result(rows, table, headline, group, mechanism=" ".join(notes),
                         extra_runs=common.validation(dirs).runs)


def _best_decay_text(dirs, final):
    """Which decay the validation runs rank first, and whether its selected epochs fall early (paper App. B)."""
    validation = common.validation(dirs)
    decays = list(validation.runs[0].summary["ema"])
    score = {d: np.mean([run.summary["ema"][d]["best_val_accuracy"]["val_accuracy"] for run in validation.runs])
             for d in decays}
    winner = max(decays, key=lambda d: (score[d], -float(d)))
    # Read on seed 0's validation run, which fixes the final runs' epochs (the finals keep the largest decay only).
    epoch = common.group(dirs["validation"]).runs[0].summary["ema"][winner]["best_val_accuracy"]["epoch"]
    budget = final.config["epochs"]
    return (f"The validation runs rank α={winner} first ({100 * score[winner]:.2f} % mean best validation "
            f"accuracy); its epoch of best validation accuracy on seed 0's validation run (the run that fixes the "
            f"final runs' epochs), {epoch} of {budget}, is {'' if epoch < 0.75 * budget else 'not '}before 75 % "
            "of the run (paper App. B: always < 3/4).")


def _selected_on(group, method):
    if not method.startswith("ema"):
        return ""
    criterion = runs.summary_key(method)
    decay = common.largest_decay(group.runs[0])
    return "; ".join(sorted({run.summary["ema"][decay][criterion].get("selected_on", "?") for run in group.runs}))


def swa(dirs, out):
    group = common.sgd_group(dirs, "final")  # SWA branches off SGD: the runs at SGD's own lr, where made
    sgd = common.test_values(group, "baseline")
    first = group.runs[0].summary["swa"]
    branch, budget = first["branch"], group.config["epochs"]
    lengths = []  # (method, label, models averaged)
    if "swa_budget" in common.evaluated(group)[0]["models"]:
        lengths.append(("swa_budget", f"SWA at the budget's end (epoch {budget}, 1 budget)",
                        first["budget"]["models_averaged"]))
    end = branch.get("last_epoch", budget)
    lengths.append(("swa", f"SWA at the branch's end (epoch {end}, {end / budget:.2f} budgets)",
                    first["models_averaged"]))
    averaged = {method: common.test_values(group, method) for method, _, _ in lengths}
    intervals = {method: stats.paired_interval(averaged[method], sgd) for method, _, _ in lengths}
    rows = [{"seed": run.config["seed"], "sgd_final": s,
             **{method: averaged[method][i] for method, _, _ in lengths},
             "swa_branch_sgd_final": run.summary["swa"]["branch"]["final_sgd_val_accuracy"]}
            for i, (run, s) in enumerate(zip(group.runs, sgd))]
    ci = {m: iv.short() for m, iv in intervals.items()}
    table = report.markdown_table(
        ["", "test accuracy (%)", "models averaged", "− SGD, 95 % CI"],
        [["SGD (cosine to 0, final)", common.pm(*common.mean_std(sgd)), "—", "—"]]
        + [[label, common.pm(*common.mean_std(averaged[m])), str(count), ci[m]] for m, label, count in lengths]
        + [["paper (EMA paper Table 1, R18/C100): SGD / SWA", "77.63 ± 0.14 / 78.69 ± 0.25", "—", "+1.06"],
           ["paper (SWA paper Table 1, CIFAR-10, VGG-16 / ResNet-164 / WRN-28-10: 1 / 1.25 budgets)", "—", "—",
            "+0.34 / +0.28 / +0.27; +0.45 / +0.49 / +0.46"]])
    table += "\nTest accuracy (%) per seed:\n\n" + common.per_seed_table(group, [("SGD final", sgd)] + [
        (label.split(" (")[0], averaged[m]) for m, label, _ in lengths])
    included = "the starting point included" if first.get("start_included") else "the starting point not included"
    headline = (f"SWA ({group.dataset}/{group.model}, {common.test_examples(group):,} test images, {len(group.runs)} seeds; "
                f"branch from epoch {branch['from_epoch']} at constant lr {branch['swa_lr']:g}, {included}): "
                + "; ".join(f"{label.split(' (')[0]} {intervals[m].text()} over SGD" for m, label, _ in lengths) + ".")
    return common.result(rows, table, headline, group)


# Table 3.


def table3(dirs, out):
    group = common.runs_of(dirs, "final")
    data = common.consistency(dirs["final"], dirs.get("seeds"))
    models = data["models"]
    if dirs.get("final_sgd"):  # the baseline at SGD's own tuned lr
        models = {**models, "baseline": common.consistency(dirs["final_sgd"], dirs.get("seeds"))["models"]["baseline"]}
    rows = []
    for method in ("baseline", "ema_loss"):
        m = models[method]
        rows.append({"method": method, "accuracy": m["accuracy"], "churn": m["churn"],
                     "js_divergence_nats": m["js_divergence"], "js_divergence_bits": m["js_divergence"] / math.log(2),
                     "churn_by_pair": m.get("churn_by_pair"), "js_by_pair": m.get("js_divergence_by_pair")})
    b, e = rows
    if e["churn_by_pair"] and b["churn_by_pair"]:
        churn = stats.paired_interval(e["churn_by_pair"], b["churn_by_pair"])
    else:  # a consistency.json written before the per-pair values
        churn = stats.Interval(math.nan, math.nan, math.nan, 0, "no per-pair values")
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
                f"(difference {churn.text()}), JS {b['js_divergence_nats']:.4f} -> "
                f"{e['js_divergence_nats']:.4f} nats.")
    # The plan (One policy) has the page state the pairs' approximation.
    note = (f"An interval over the {data['pairs']} pair-wise values treats them as independent, though pairs share "
            "seeds: an approximation. The paper's JS values reach 0.85, above ln 2 = 0.693 nats, the maximum of a mean "
            "per-sample JS in nats (1 in bits): its unit is not recoverable, so only directions compare with ours.")
    return common.result(rows, table, headline, group, mechanism=note)


# Table 5.


def table5(dirs, out):
    """§4.6: the EMA early-stopped at its lowest validation loss, BN recomputed (EMA (loss)), against the baseline.

    EMA (acc.) stays in the table for reference; the headline and the per-seed rows follow the plan's model.
    """
    group = common.validation(dirs)
    sgd = common.paired_sgd(dirs, group, "validation", "validation_seeds")
    rows, values = [], {}
    for method in ("baseline", "ema_acc", "ema_loss"):
        for metric in ("accuracy", "ece", "ece_temperature_scaled", "loss"):
            values[(method, metric)] = common.test_values(sgd if method == "baseline" else group, method, metric)
            mean, std = common.mean_std(values[(method, metric)])
            rows.append({"method": method, "metric": metric, "mean": mean, "std": std, "seeds": len(group.runs),
                         "test_examples": common.test_examples(group)})

    def cells(metric, scale=100, digits=2):
        return [common.pm(*common.mean_std(values[(m, metric)]), scale=scale, digits=digits)
                for m in ("baseline", "ema_acc", "ema_loss")]

    table = report.markdown_table(
        ["", "Baseline", "EMA (acc.)", "EMA (loss)", "paper R18/C100 Baseline", "paper EMA"],
        [["accuracy (%)"] + cells("accuracy") + ["75.83 ± 0.05", "76.31 ± 0.28"],
         ["ECE (%)"] + cells("ece") + ["11.75 ± 0.76", "9.46 ± 0.26"],
         ["ECE after TS (%)"] + cells("ece_temperature_scaled") + ["4.67 ± 0.65", "3.13 ± 0.15"],
         ["NLL (nats)"] + cells("loss", scale=1, digits=3) + ["", ""]])
    table += "\nPer seed (%):\n\n" + common.per_seed_table(group, [
        ("ECE baseline", values[("baseline", "ece")]), ("ECE EMA (loss)", values[("ema_loss", "ece")]),
        ("ECE after TS baseline", values[("baseline", "ece_temperature_scaled")]),
        ("ECE after TS EMA (loss)", values[("ema_loss", "ece_temperature_scaled")]),
        ("acc. baseline", values[("baseline", "accuracy")]), ("acc. EMA (loss)", values[("ema_loss", "accuracy")])])
    ece = stats.paired_interval(values[("ema_loss", "ece")], values[("baseline", "ece")])
    nll = dataclasses.replace(stats.paired_interval(values[("ema_loss", "loss")], values[("baseline", "loss")]),
                              unit=" nats ×100")  # the plan's one bound format: 2 decimals (of hundredths of a nat)
    held_out = sorted({evaluation.get("validation_examples") or 0 for evaluation in common.evaluated(group)})
    headline = (f"Table 5 ({len(group.runs)} seeds, 80/20 runs on {common.test_examples(group):,} test images, temperature "
                f"fitted on the hold-out's first {'/'.join(f'{n:,}' for n in held_out)} images): "
                f"ECE {100 * np.mean(values[('baseline', 'ece')]):.2f} -> "
                f"{100 * np.mean(values[('ema_loss', 'ece')]):.2f} % (EMA (loss), {ece.text()}), after TS "
                f"{100 * np.mean(values[('baseline', 'ece_temperature_scaled')]):.2f} -> "
                f"{100 * np.mean(values[('ema_loss', 'ece_temperature_scaled')]):.2f} %; NLL {nll.text()}.")
    return common.result(rows, table, headline, group)
