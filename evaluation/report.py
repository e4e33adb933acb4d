"""The paper's tables (Markdown + CSV) and figures (PNG) from run directories.

Table 1 comes from every run's `summary.json`; Figures 1a, 1b and 2 from
`history.csv` (evaluation/figures.py). Tables 3–5 need predictions of the
saved models, which other commands compute and store as JSON files; a table is
rendered only where its files exist. Their shapes (fractions, not percent;
model keys `baseline` = the SGD model at the end of training, `ema_acc` /
`ema_loss` = the EMA early-stopped at best validation accuracy / lowest
validation loss, `swa`; other keys are shown as written):

`evaluation.json` — in a run directory (one seed); Table 5 (calibration, §4.6):

    {
      "split": "test",                       # where the metrics were measured
      "temperature_fitted_on": "validation", # the 20 % hold-out (Guo et al. 2017)
      "ece_bins": 100,                       # equal-mass bins (Nixon et al. 2019)
      "models": {
        "baseline": {"weights": "weights/final.weights.h5",
                     "accuracy": 0.7583, "loss": 1.05, "ece": 0.1175,
                     "temperature": 1.62, "ece_temperature_scaled": 0.0467,
                     "loss_temperature_scaled": 0.98, "ece_temperature_scaled_excess": 0.021,
                     "test_half": {"temperature": 1.60, "loss": 0.99, "ece": 0.049,
                                   "ece_excess": 0.020}},
        "ema_loss": {"weights": "weights/ema_0.998_loss_bn.weights.h5", ...same keys...}
      }
    }

(`evaluation.metrics.calibration` returns the first five numbers of a model,
`evaluation.metrics.temperature_checks` the rest: NLL and excess ECE after
temperature scaling, and `test_half` with T fitted on the test split's first
half and scored on its second; the hold-out ones are null for a
`--full-train` run.)

`consistency.json` — in a multi-seed directory, beside its `seed-<k>/`
folders; Table 3 (prediction consistency, §4.4). `accuracy` is the mean over
seeds; `churn` and `js_divergence` (natural log) are means over all pairs of
seeds (`evaluation.metrics.pairwise_mean`):

    {
      "split": "test",
      "seeds": [0, 1, 2],
      "models": {
        "baseline": {"accuracy": 0.7763, "churn": 0.1884, "js_divergence": 0.032},
        "sgd_early": {...},   # where every seed kept it (the plan's comparator)
        "ema_loss": {"weights": "ema_0.998_loss_bn", "accuracy": 0.7805,
                     "churn": 0.1271, "js_divergence": 0.009}
      }
    }

`transfer.json` — in a run directory (the pretraining run, one seed); Table 4
(linear evaluation of the frozen backbone, §4.5):

    {
      "epochs": 50, "lr": 0.01,
      "linear_eval": {
        "cifar100": {"baseline": {"accuracy": 0.5277},
                     "ema_acc": {"accuracy": 0.5730},
                     "ema_loss": {"accuracy": 0.5778}},
        "cifar10": {...}
      }
    }

Conventions: "mean ± std" is over seeds, std the sample standard deviation
(ddof=1; omitted for one seed). Markdown shows accuracies, ECE and churn in
percent; the CSV files hold the raw fractions at full precision. Table 1
reports the EMA of one decay (`ema_decay`, by default the largest the runs
kept, as the paper does with α=0.998) and its BN-recomputed numbers when every
seed has them.
"""

import csv
import math
import os
import statistics

from utils.errors import UsageError
from evaluation import figures, runs

METHOD_LABELS = {"baseline": "Baseline", "sgd_early": "SGD (early-stopped)", "ema_acc": "EMA (acc.)",
                 "ema_loss": "EMA (loss)", "ema_final": "EMA (last epoch)", "swa": "SWA",
                 "swa_budget": "SWA (1 budget)"}
CALIBRATION_METRICS = (
    ("accuracy", "Accuracy", 100, 2),
    ("ece", "ECE", 100, 2),
    ("ece_temperature_scaled", "ECE w/ TS", 100, 2),
    ("temperature", "Temperature", 1, 3),
)
_MISSING = "–"


def mean_std(values):
    """(mean, sample std or None for one value, count) of the finite values."""
    values = [float(value) for value in values if value is not None and math.isfinite(float(value))]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def format_mean_std(mean, std, scale=1.0, digits=2):
    if mean is None:
        return _MISSING
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _ordered_methods(keys):
    keys = set(keys)
    return [key for key in METHOD_LABELS if key in keys] + sorted(keys - set(METHOD_LABELS))


def _label(key):
    return METHOD_LABELS.get(key, key)


def choose_decay(group, requested=None):
    """The summary.json key (e.g. '0.998') of the EMA decay Table 1 reports; None without EMA."""
    common = None
    for run in group.runs:
        keys = set(run.summary.get("ema", {}))
        common = keys if common is None else common & keys
    if not common:
        if requested is not None:
            raise UsageError(f"--ema-decay {requested:g}: the {group.name} runs kept no EMA; leave --ema-decay out")
        return None
    if requested is None:
        return max(common, key=float)
    for key in common:
        if math.isclose(float(key), requested, rel_tol=0, abs_tol=1e-12):
            return key
    choices = ", ".join(sorted(common, key=float))
    raise UsageError(f"--ema-decay {requested:g} is not among the {group.name} runs' decays; choose from {choices}")


def _split(group):
    return group.config.get("evaluation_split", "validation")


def _table1_entries(group, decay_key):
    """{method: [per-seed dicts with epoch, val_accuracy, val_loss]} and whether BN was recomputed."""
    entries = {"baseline": [run.summary["sgd"]["final"] for run in group.runs]}
    bn_recomputed = None
    if decay_key is not None:
        emas = [run.summary["ema"][decay_key] for run in group.runs]
        bn_recomputed = all(
            "bn_recomputed" in ema.get(runs.summary_key(method), {}) for ema in emas for method in runs.EMA_METHODS
        )
        for method, criterion in ((method, runs.summary_key(method)) for method in runs.EMA_METHODS):
            chosen = []
            for ema in emas:
                entry = dict(ema[criterion])
                if bn_recomputed:
                    entry.update(entry.pop("bn_recomputed"))
                chosen.append(entry)
            entries[method] = chosen
    if all("swa" in run.summary for run in group.runs):
        entries["swa"] = [run.summary["swa"] for run in group.runs]
    return entries, bn_recomputed


def table1(groups, decays):
    """Long-format rows: one per (group, method) with accuracy/loss mean and std over seeds."""
    rows = []
    for group in groups:
        entries, bn_recomputed = _table1_entries(group, decays[group.name])
        for method, per_seed in entries.items():
            accuracy = mean_std(entry.get("val_accuracy") for entry in per_seed)
            loss = mean_std(entry.get("val_loss") for entry in per_seed)
            epoch = mean_std(entry.get("epoch") for entry in per_seed)
            rows.append({
                "dataset": group.dataset, "model": group.model, "split": _split(group),
                "seeds": len(group.runs), "method": method,
                "ema_decay": decays[group.name] if method.startswith("ema") else "",
                # SWA always recomputes BN (docs/run-directory.md); the baseline needs none.
                "bn_recomputed": {"baseline": "", "swa": True}.get(method, bn_recomputed),
                "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1],
                "loss_mean": loss[0], "loss_std": loss[1], "epoch_mean": epoch[0],
            })
    return rows


def table1_markdown(rows):
    methods = _ordered_methods(row["method"] for row in rows)
    header = ["Dataset", "Model", "Split", "Seeds"]
    for method in methods:
        header += [f"{_label(method)} Acc. (%)", f"{_label(method)} Loss"]
    lines = []
    for key in dict.fromkeys((row["dataset"], row["model"]) for row in rows):
        mine = {row["method"]: row for row in rows if (row["dataset"], row["model"]) == key}
        first = next(iter(mine.values()))
        cells = [key[0], key[1], first["split"], str(first["seeds"])]
        for method in methods:
            row = mine.get(method)
            if row is None:
                cells += [_MISSING, _MISSING]
            else:
                cells += [
                    format_mean_std(row["accuracy_mean"], row["accuracy_std"], 100, 2),
                    format_mean_std(row["loss_mean"], row["loss_std"], 1, 3),
                ]
        lines.append(cells)
    notes = []
    for row in rows:
        if row["method"] == "ema_acc":
            bn = "BN statistics recomputed once after training" if row["bn_recomputed"] else "BN statistics as tracked during training"
            notes.append(f"{row['dataset']}/{row['model']}: EMA decay α={row['ema_decay']}, {bn}.")
    return markdown_table(header, lines) + "".join(f"\n- {note}" for note in notes) + "\n"


def table3(groups):
    rows = []
    for group in groups:
        for directory, data in group.consistency:
            models = data.get("models", {})
            baseline = models.get("baseline", {})
            for method in _ordered_methods(models):
                if method == "baseline":
                    continue
                row = {"dataset": group.dataset, "model": group.model, "split": data.get("split", ""),
                       "seeds": len(data.get("seeds", [])), "method": method, "source": directory}
                for metric in ("accuracy", "churn", "js_divergence"):
                    row[f"{metric}_baseline"] = baseline.get(metric)
                    row[f"{metric}_method"] = models[method].get(metric)
                rows.append(row)
    return rows


def table3_markdown(rows):
    header = ["Dataset", "Model", "Split", "Seeds", "Method", "Acc. Baseline (%)", "Acc. Method (%)",
              "Churn Baseline (%)", "Churn Method (%)", "JS Baseline (nats / bits)", "JS Method (nats / bits)"]

    def cell(value, scale, digits):
        return _MISSING if value is None else f"{value * scale:.{digits}f}"

    lines = [
        [row["dataset"], row["model"], row["split"], str(row["seeds"]), _label(row["method"]),
         cell(row["accuracy_baseline"], 100, 2), cell(row["accuracy_method"], 100, 2),
         cell(row["churn_baseline"], 100, 2), cell(row["churn_method"], 100, 2),
         _nats_bits(row["js_divergence_baseline"]), _nats_bits(row["js_divergence_method"])]
        for row in rows
    ]
    return markdown_table(header, lines)


def _nats_bits(value):
    """A JS divergence in nats (natural log) and in bits: the paper states no unit."""
    return _MISSING if value is None else f"{value:.4f} / {value / math.log(2):.4f}"


def table4(groups):
    rows = []
    for group in groups:
        transfers = [run.transfer for run in group.runs if run.transfer]
        targets = sorted({target for transfer in transfers for target in transfer.get("linear_eval", {})})
        for target in targets:
            results = [transfer["linear_eval"][target] for transfer in transfers if target in transfer.get("linear_eval", {})]
            for method in _ordered_methods(key for result in results for key in result):
                mean, std, count = mean_std(result[method].get("accuracy") for result in results if method in result)
                rows.append({"pretrained_on": group.dataset, "model": group.model, "linear_eval_on": target,
                             "method": method, "seeds": count, "accuracy_mean": mean, "accuracy_std": std})
    return rows


def table4_markdown(rows):
    methods = _ordered_methods(row["method"] for row in rows)
    header = ["Pretrained on", "Model", "Linear eval on", "Seeds"] + [f"{_label(m)} (%)" for m in methods]
    lines = []
    for key in dict.fromkeys((row["pretrained_on"], row["model"], row["linear_eval_on"]) for row in rows):
        mine = {row["method"]: row for row in rows if (row["pretrained_on"], row["model"], row["linear_eval_on"]) == key}
        seeds = max(row["seeds"] for row in mine.values())
        lines.append(list(key) + [str(seeds)] + [
            format_mean_std(mine[m]["accuracy_mean"], mine[m]["accuracy_std"], 100, 2) if m in mine else _MISSING
            for m in methods
        ])
    return markdown_table(header, lines)


def table5(groups):
    rows = []
    for group in groups:
        evaluations = [run.evaluation for run in group.runs if run.evaluation]
        if not evaluations:
            continue
        split = evaluations[0].get("split", "")
        methods = _ordered_methods(key for evaluation in evaluations for key in evaluation.get("models", {}))
        for method in methods:
            for metric, _, _, _ in CALIBRATION_METRICS:
                mean, std, count = mean_std(
                    evaluation["models"][method].get(metric)
                    for evaluation in evaluations if method in evaluation.get("models", {})
                )
                rows.append({"dataset": group.dataset, "model": group.model, "split": split, "seeds": count,
                             "method": method, "metric": metric, "mean": mean, "std": std})
    return rows


def table5_markdown(rows):
    methods = _ordered_methods(row["method"] for row in rows)
    header = ["Dataset", "Model", "Split", "Seeds", "Metric"] + [_label(m) for m in methods]
    lines = []
    for key in dict.fromkeys((row["dataset"], row["model"], row["split"]) for row in rows):
        for metric, title, scale, digits in CALIBRATION_METRICS:
            mine = {row["method"]: row for row in rows if (row["dataset"], row["model"], row["split"]) == key and row["metric"] == metric}
            suffix = " (%)" if scale == 100 else ""
            seeds = max((row["seeds"] for row in mine.values()), default=0)
            lines.append(list(key) + [str(seeds), title + suffix] + [
                format_mean_std(mine[m]["mean"], mine[m]["std"], scale, digits) if m in mine else _MISSING
                for m in methods
            ])
    return markdown_table(header, lines)


def markdown_table(header, lines):
    text = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    return text + "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def write_csv(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return path


def _figures(group, out, decay_key, smoothing_window):
    written = []
    if group.dataset in figures.LABEL_NOISE_DATASETS and decay_key is not None:
        path = os.path.join(out, f"fig2-{group.name}.png")
        written.append(("Figure 2", figures.plot_ema_vs_sgd(
            group, path, f"ema_{decay_key}_val_accuracy", f"EMA α={decay_key}", smoothing_window)))
    else:
        path = os.path.join(out, f"fig1a-{group.name}.png")
        written.append(("Figure 1a", figures.plot_ema_vs_sgd(
            group, path, "ema_best_val_accuracy", "EMA (best decay)", smoothing_window)))
    if figures.ema_decay_keys(group.runs):
        path = os.path.join(out, f"fig1b-{group.name}.png")
        written.append(("Figure 1b", figures.plot_decays(group, path, smoothing_window)))
    return written


def write_report(groups, out, ema_decay=None, smoothing_window=1):
    """Writes report.md, table*.csv and fig*.png into `out`; returns their paths and the table rows."""
    decays = {group.name: choose_decay(group, ema_decay) for group in groups}  # user errors first
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; choose a directory path")
    os.makedirs(out, exist_ok=True)
    tables = {"table1": table1(groups, decays), "table3": table3(groups),
              "table4": table4(groups), "table5": table5(groups)}
    titles = {
        "table1": "Table 1 — accuracy and loss (SGD at the end of training vs its EMA and SWA)",
        "table3": "Table 3 — prediction consistency between seeds (lower churn / JS is better)",
        "table4": "Table 4 — linear evaluation of the frozen backbone on another dataset",
        "table5": "Table 5 — calibration: ECE (100 equal-mass bins) before and after temperature scaling",
    }
    renderers = {"table1": table1_markdown, "table3": table3_markdown,
                 "table4": table4_markdown, "table5": table5_markdown}
    parts = ["# Weight averaging report\n\n",
             "Mean ± sample standard deviation over seeds. Runs:\n\n"]
    for group in groups:
        parts.append(f"- {group.dataset}/{group.model} (seeds {', '.join(map(str, group.seeds))}): "
                     + ", ".join(f"`{run.path}`" for run in group.runs) + "\n")
    csv_paths = {}
    for name, rows in tables.items():
        if rows:
            csv_paths[name] = write_csv(os.path.join(out, f"{name}.csv"), rows)
            parts.append(f"\n## {titles[name]}\n\n{renderers[name](rows)}\nCSV: `{name}.csv`\n")
    figure_paths = []
    for group in groups:
        for title, path in _figures(group, out, decays[group.name], smoothing_window):
            figure_paths.append(path)
            parts.append(f"\n## {title} — {group.dataset}/{group.model}\n\n![{title}]({os.path.basename(path)})\n")
    markdown = os.path.join(out, "report.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write("".join(parts))
    return {"markdown": markdown, "csv": csv_paths, "figures": figure_paths, "tables": tables}
