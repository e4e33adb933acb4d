"""The tables and figures of `python -m app.reproduce` for the label-noise claims
(Fig. 2, Table 2) and Adda et al.'s constant-lr claim.

Same contract as evaluation/claim_tables.py (rows, Markdown table, figures, a
headline of numbers with paired 95 % CIs over seeds, or for a single seed a
normal-approximation interval from binomial standard errors; runs read; no
verdict); shared helpers: evaluation/claim_common.py. Evidence:
tests/test_noise_claims.py.
"""

import os

import numpy as np

from evaluation import claim_common as common
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


# Fig. 2 and Table 2 (label noise).


def fig2(dirs, out):
    group = common.runs_of(dirs, "noisy_final")
    sgd_group = common.paired_sgd(dirs, group, "noisy_final")  # SGD's curve at its own tuned lr, where made
    decay = common.largest_decay(group.runs[0])
    epochs, sgd = figures.mean_curve(sgd_group.runs, "val_accuracy")
    _, ema = figures.mean_curve(group.runs, f"ema_{decay}_val_accuracy")
    _, train = figures.mean_curve(sgd_group.runs, "train_accuracy")
    _, lr = figures.mean_curve(group.runs, "lr")
    _, sgd_lr = figures.mean_curve(sgd_group.runs, "lr")  # the EMA's schedule where SGD has no twin
    rows = [{"epoch": int(e), "lr": r, "sgd_lr": q, "sgd_test_accuracy": s, f"ema_{decay}_test_accuracy": a,
             "sgd_train_accuracy_noisy_labels": t} for e, r, q, s, a, t in zip(epochs, lr, sgd_lr, sgd, ema, train)]
    peak = int(np.nanargmax(ema))  # chosen on the test curve itself: a description, no interval
    per_seed_peak = [common.column(run, f"ema_{decay}_val_accuracy")[peak] for run in group.runs]
    per_seed_final = [common.column(run, "val_accuracy")[-1] for run in sgd_group.runs]
    ema_mean = common.epoch_means(group.runs, f"ema_{decay}_val_accuracy")
    sgd_mean = common.epoch_means(sgd_group.runs, "val_accuracy")
    interval = stats.paired_interval(ema_mean, sgd_mean)  # the plan's statistic (evaluation/plan_claims.fig2)
    twin = common.has_twin(dirs, "noisy_final")
    path = figures.plot_ema_vs_sgd(group, os.path.join(out, "fig2.png"), f"ema_{decay}_val_accuracy", f"EMA α={decay}",
                                   sgd_group=sgd_group if twin else None)
    shown = sorted({1, len(rows) // 4, len(rows) // 2, peak + 1, 3 * len(rows) // 4, len(rows)})
    lrs = common.lr_columns(twin)
    table = report.markdown_table(
        ["epoch", *[header for header, _ in lrs], "SGD test (%)", f"EMA α={decay} test (%)",
         "SGD train acc. on noisy labels (%)"],
        [[str(r["epoch"]), *[f"{r[key]:.3g}" for _, key in lrs],
          f"{100 * r['sgd_test_accuracy']:.2f}", f"{100 * r[f'ema_{decay}_test_accuracy']:.2f}",
          f"{100 * r['sgd_train_accuracy_noisy_labels']:.2f}"]
         for r in rows if r["epoch"] in shown])
    table += "\nPer seed (%):\n\n" + common.per_seed_table(group, [
        ("EMA, mean over epochs", ema_mean), ("SGD, mean over epochs", sgd_mean),
        (f"EMA at epoch {peak + 1}", per_seed_peak), ("SGD final", per_seed_final)])
    limit = group.config.get("limit_validation")
    test_set = f"the first {limit:,} clean test images each epoch" if limit else "the clean test set each epoch"
    headline = (f"Fig. 2 ({group.dataset} 'worse' labels, {len(group.runs)} seeds, {test_set}): EMA α={decay} − SGD, "
                f"mean over all {len(rows)} epochs: {interval.text()}. EMA α={decay}'s mean curve peaks at "
                f"{100 * ema[peak]:.2f} % (epoch {peak + 1}, lr {lr[peak]:.3g}; described only: that epoch was "
                f"picked on this same test curve, so no interval is given); SGD's last epoch {100 * sgd[-1]:.2f} %, "
                f"its training accuracy on the noisy labels then {100 * train[-1]:.2f} % (with augmentation).")
    return common.result(rows, table, headline, group, [path], common.release_text(group.config),
                         extra_runs=sgd_group.runs)  # SGD's own runs where it has a twin: their provenance too


def table2(dirs, out):
    group = common.runs_of(dirs, "noisy_final")
    ema = common.test_values(group, "ema_acc")
    sgd_group = common.paired_sgd(dirs, group, "noisy_final")
    sgd = common.test_values(sgd_group, "baseline")  # at SGD's own lr, where made
    interval = stats.paired_interval(ema, sgd)
    rows = [{"method": "EMA (acc.) — ours", "accuracy_mean": common.mean_std(ema)[0], "accuracy_std": common.mean_std(ema)[1]},
            {"method": "CE (standard) — ours, SGD final", "accuracy_mean": common.mean_std(sgd)[0],
             "accuracy_std": common.mean_std(sgd)[1]},
            {"method": "EMA (acc.) − CE, ours", "accuracy_mean": interval.mean, "ci_low": interval.low,
             "ci_high": interval.high}]
    lines = [[r["method"], common.pm(r["accuracy_mean"], r.get("accuracy_std")), "—"] for r in rows[:2]]
    lines += [[f"{name} (quoted from the paper)", c10, c100] for name, c10, c100 in PUBLISHED_TABLE2]
    table = (f"Ours: mean ± sd over {len(ema)} seeds; the other rows as the paper's Table 2 prints them (from Wei "
             f"et al., 2022).\n\n" + report.markdown_table(["Method", "CIFAR-10N worse (%)", "CIFAR-100N (%)"], lines))
    table += "\nTest accuracy (%) per seed:\n\n" + common.per_seed_table(group, [("EMA (acc.)", ema), ("CE (SGD final)", sgd)])
    headline = (f"Table 2 ({group.dataset}, {len(ema)} seeds, {group.model}, {common.test_examples(group):,} test images): "
                f"EMA (acc., epoch chosen on the noisy validation split, BN recomputed) {100 * np.mean(ema):.2f} % vs "
                f"standard CE (SGD final) {100 * np.mean(sgd):.2f} % ({interval.text()}).")
    return common.result(rows, table, headline, group, extra_runs=sgd_group.runs)


# Adda et al. Table 1.


def adda(dirs, out):
    """Adda et al. Table 1 from runs that keep the final epoch's EMAs (`--ema-select final`), tested.

    The decay is chosen on the 10 % hold-out (final epoch, mean over the constant-lr seeds); the
    intervals pair the seeds' test accuracies (the runs of one seed share their initialization).
    """
    groups = {schedule: common.runs_of(dirs, f"adda_{schedule}") for schedule in ("constant", "cosine")}
    decays = figures.ema_decay_keys(groups["constant"].runs)
    holdout, test = {}, {}
    for schedule, group in groups.items():
        group.runs.sort(key=lambda run: run.config.get("seed", 0))
        evaluations = common.evaluated(group)
        holdout[schedule] = {"no_ema": [run.history[-1]["val_accuracy"] for run in group.runs]}
        test[schedule] = {"no_ema": [e["by_weights"]["final"]["accuracy"] for e in evaluations]}
        for decay in decays:
            holdout[schedule][decay] = [run.history[-1][f"ema_{decay}_val_accuracy"] for run in group.runs]
            test[schedule][decay] = [e["by_weights"][f"ema_{decay}_acc"]["accuracy"] for e in evaluations]
    seeds = [[common.seed(run) for run in group.runs] for group in groups.values()]
    if seeds[0] != seeds[1]:
        raise ValueError(f"the constant and cosine runs differ in seeds ({', '.join(seeds[0])} vs "
                         f"{', '.join(seeds[1])}); run both schedules for the same seeds")
    best = max(decays, key=lambda d: np.mean(holdout["constant"][d]))
    rows = [{"schedule": schedule, "split": split, **{("no_ema" if key == "no_ema" else f"ema_{key}"): float(np.mean(v))
                                                      for key, v in values[schedule].items()}}
            for split, values in (("test", test), ("hold-out", holdout)) for schedule in groups]
    config = groups["constant"].config
    examples = common.test_examples(groups["constant"])
    header = ["Schedule", "No EMA (%)"] + [f"EMA {d} (%)" for d in decays]
    table = f"Test accuracy at the final epoch ({examples:,} images, mean ± sd over {len(seeds[0])} seeds):\n\n"
    table += report.markdown_table(
        header, [[schedule] + [common.pm(*common.mean_std(v)) for v in test[schedule].values()] for schedule in groups]
        + [["paper constant", "86.4", "89.3 (0.9)", "91.4 (0.99)", "92.2 (0.999)"],
           ["paper cosine", "91.4", "91.4", "91.4", "91.4"]])
    # The hold-out's size as data/loading.split_indices rounds it (int() drops one image at e.g. 0.29).
    holdout_examples = config.get("limit_validation") or round(
        runs.train_examples(config["dataset"], None, True) * config.get("validation_fraction", 0.1))
    table += (f"\nThe {config['validation_fraction']:.0%} hold-out at the final epoch "
              f"({holdout_examples:,} images, mean over seeds), where the decay is chosen "
              f"(EMA {best}):\n\n")
    table += report.markdown_table(
        header, [[schedule] + [f"{100 * np.mean(v):.2f}" for v in holdout[schedule].values()] for schedule in groups])
    table += f"\nTest accuracy (%) per seed, EMA {best}:\n\n" + common.per_seed_table(groups["constant"], [
        ("constant: SGD", test["constant"]["no_ema"]), (f"constant: EMA {best}", test["constant"][best]),
        ("cosine: SGD", test["cosine"]["no_ema"]), (f"cosine: EMA {best}", test["cosine"][best])])
    fallback = stats.binomial_se(np.mean(test["constant"][best]), np.mean(test["constant"]["no_ema"]), examples)
    gain = stats.paired_interval(test["constant"][best], test["constant"]["no_ema"], fallback_se=fallback)
    headline = (f"Adda Table 1 ({groups['constant'].dataset}/{groups['constant'].model}, final epoch, {examples:,} test "
                f"images, {len(seeds[0])} seeds; EMA {best} chosen on the hold-out): constant lr: EMA {best} "
                f"{gain.text()} over SGD ({100 * np.mean(test['constant']['no_ema']):.2f} %); cosine: "
                f"{100 * np.mean(np.subtract(test['cosine'][best], test['cosine']['no_ema'])):+.2f}.")
    result = common.result(rows, table, headline, groups["constant"], extra_runs=groups["cosine"].runs)
    result["outside_rule"] = ("Adda et al.'s own protocol (an EMA after every step, no decay warm-up, decays "
                              "0.9-0.999), not the EMA paper's; the budget-scaling rule does not apply to it.")
    return result
