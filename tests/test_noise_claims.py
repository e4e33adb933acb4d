"""evaluation/noise_claims.py (Fig. 2, Table 2, Adda et al.) on fabricated run directories.

The run directories are written here in the format `app.train` / `app.evaluate`
write (docs/run-directory.md; copied from reproductions/small-v1/noisy/final
and adda/), with per-seed numbers chosen so that each claim lands on a known
verdict of the analysis plan's rule. Every number the builders report is
re-derived here in NumPy: means over seeds, the paired t interval with
t(0.975, 2) in closed form, and for Adda's one-seed fallback the binomial
standard error from the exact binomial distribution (math.comb), not from
evaluation/stats.py. The builders give no verdict: the page write_claim makes
carries the plan's (evaluation/plan_claims.py), re-derived here from the
plan's primary statistic, and nothing outside the plan's section reads as one.
"""

import csv
import fractions
import json
import math
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from evaluation import claim_list, claims, noise_claims, plan_claims, plan_page, plan_provenance
from training import run_dir as run_directory

SEEDS = (0, 1, 2)
DECAYS = (0.9, 0.99)  # the largest (0.99) is the one Fig. 2 reports
EPOCHS = 8
TEST_EXAMPLES = 2000
# Student's t, 2 degrees of freedom, has the closed-form quantile t_p = (2p - 1) / sqrt(2 p (1 - p)).
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
Z_975 = 1.959963984540054  # standard normal 0.975 quantile (table value)
# Student's t 0.975 quantiles by degrees of freedom (printed tables), for the plan's seeds-needed rule.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365}
# Each seed's EMA (largest decay) curve is its peak value times this shape: the peak is epoch 5.
EMA_SHAPE = np.array([0.40, 0.60, 0.80, 0.95, 1.00, 0.97, 0.94, 0.92])
# The smaller decay peaks higher and earlier (epoch 3): a builder reading it would get other numbers.
SMALL_DECAY_SHAPE = np.array([0.70, 0.90, 1.00, 0.90, 0.85, 0.80, 0.78, 0.76])
INTERVAL = re.compile(r"([+-]\d+\.\d+) points, 95 % CI \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\] \(([^)]*)\)")


def _write_json(path, content):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)


def _write_history(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _config(**overrides):
    """config.json as app.train writes it (reproductions/small-v1/noisy/final/seed-0)."""
    config = {
        "batch_size": 32, "bn_recompute": "end", "bootstrap_every_epochs": 0, "checkpoint_every_steps": None,
        "cifar_n_dir": None, "data_dir": "../shared/data/tfds", "dataset": "cifar10n", "deterministic": False,
        "ema_bn": "eman", "ema_decays": list(DECAYS), "ema_every_steps": 16,
        "ema_select_epochs": {f"{d:g}": {"accuracy": 5, "loss": 4} for d in DECAYS}, "ema_warmup": "steps",
        "epochs": EPOCHS, "eval_batch_size": 512, "evaluation_split": "test", "full_train": True,
        "keep_checkpoint": False, "label_noise": "worse", "limit_train": 5000, "limit_validation": 2000,
        "lr": 0.1, "model": "resnet20", "momentum": 0.9, "nesterov": True, "out": "", "precision": "float32",
        "provenance": {"devices": ["cpu:0"], "git_commit": "0" * 40, "git_dirty": False,
                       "keras_backend": "tensorflow"},
        "schedule": "cosine", "seed": 0, "seeds": list(SEEDS), "split_seed": 0,
        "stop_epochs_from": "runs/noisy/validation", "swa": False, "swa_cycle_epochs": 1, "swa_lr": None,
        "swa_start_epoch": None, "track_stability": False, "validation_fraction": 0.2, "warmup_epochs": 1,
        "weight_decay": 0.0001,
    }
    config.update(overrides)
    return config


def _history_rows(lr, train_accuracy, val_accuracy, ema_accuracy):
    """history.csv rows in app.train's column order; `ema_accuracy` = {decay key: per-epoch values}."""
    rows = []
    for i in range(len(lr)):
        row = {"epoch": i + 1, "lr": lr[i], "train_loss": 2.0 - 1.5 * train_accuracy[i],
               "train_accuracy": train_accuracy[i], "val_loss": 2.0 - 1.5 * val_accuracy[i],
               "val_accuracy": val_accuracy[i]}
        for key, values in ema_accuracy.items():
            row[f"ema_{key}_val_accuracy"] = values[i]
            row[f"ema_{key}_val_loss"] = 2.0 - 1.5 * values[i]
        row["ema_best_val_accuracy"] = max(values[i] for values in ema_accuracy.values())
        row.update(epoch_seconds=20.0, train_images_per_second=300.0, evaluation_seconds=3.0)
        rows.append(row)
    return rows


def _entry(history, epoch, prefix):
    row = history[epoch - 1]
    return {"epoch": epoch, "val_loss": row[f"{prefix}val_loss"], "val_accuracy": row[f"{prefix}val_accuracy"]}


def _summary(history, config):
    """summary.json as app.train writes it for a run of `history` (docs/run-directory.md)."""
    last = len(history)
    best_sgd = max(range(1, last + 1), key=lambda e: history[e - 1]["val_accuracy"])
    lowest_sgd = min(range(1, last + 1), key=lambda e: history[e - 1]["val_loss"])
    ema = {}
    for decay in config["ema_decays"]:
        key = f"{decay:g}"
        prefix = f"ema_{key}_"
        best = max(range(1, last + 1), key=lambda e: history[e - 1][prefix + "val_accuracy"])
        lowest = min(range(1, last + 1), key=lambda e: history[e - 1][prefix + "val_loss"])
        selected_on = "validation" if not config["full_train"] else f"validation (run {config['stop_epochs_from']})"
        ema[key] = {
            "decay": decay, "every_steps": config["ema_every_steps"],
            "effective_per_step_decay": decay ** (1 / config["ema_every_steps"]), "identical_to": [],
            "best_val_accuracy": dict(_entry(history, best, prefix), selected_on=selected_on,
                                      bn_recomputed=_entry(history, best, prefix)),
            "lowest_val_loss": dict(_entry(history, lowest, prefix), selected_on=selected_on,
                                    bn_recomputed=_entry(history, lowest, prefix)),
        }
    return {"evaluation_split": config["evaluation_split"], "epochs_completed": last,
            "sgd": {"final": _entry(history, last, ""), "best_val_accuracy": _entry(history, best_sgd, ""),
                    "lowest_val_loss": _entry(history, lowest_sgd, "")},
            "ema": ema, "wall_time_seconds": 100.0}


def _model(weights, accuracy, **extra):
    return dict(weights=weights, accuracy=accuracy, loss=2.0 - 1.5 * accuracy, ece=0.08, temperature=1.4,
                ece_temperature_scaled=0.05, **extra)


def _evaluation(ema_accuracy, baseline_accuracy):
    """evaluation.json as app.evaluate writes it (reproductions/small-v1/protocol/validation)."""
    key = f"{max(DECAYS):g}"
    # EMA (loss) and the non-recomputed weights get other numbers: Table 2 must read EMA (acc.), BN recomputed.
    return {
        "split": "test", "test_examples": TEST_EXAMPLES, "temperature_fitted_on": "validation",
        "validation_examples": 2000, "ece_bins": 100, "ema_decay": key,
        "models": {
            "baseline": _model("weights/final.weights.h5", baseline_accuracy),
            "ema_acc": _model(f"weights/ema_{key}_acc_bn.weights.h5", ema_accuracy, decay=max(DECAYS),
                              bn_recomputed=True),
            "ema_loss": _model(f"weights/ema_{key}_loss_bn.weights.h5", ema_accuracy - 0.02, decay=max(DECAYS),
                               bn_recomputed=True),
        },
        "by_weights": {
            "final": _model("weights/final.weights.h5", baseline_accuracy),
            f"ema_{key}_acc": _model(f"weights/ema_{key}_acc.weights.h5", ema_accuracy - 0.01),
            f"ema_{key}_acc_bn": _model(f"weights/ema_{key}_acc_bn.weights.h5", ema_accuracy),
        },
    }


def _noisy_final(root, ema_peak, sgd_final, ema_test=None, baseline_test=None):
    """noisy/final/seed-<k>/ for the three seeds; returns `dirs` as app.reproduce.plan names them.

    Seed k's EMA (largest decay) peaks at `ema_peak[k]` in epoch 5 and its SGD
    curve ends at `sgd_final[k]`; evaluation.json holds `ema_test[k]` (EMA acc.)
    and `baseline_test[k]` (SGD final).
    """
    final = os.path.join(root, "noisy", "final")
    lr = 0.1 * 0.5 * (1 + np.cos(np.pi * np.arange(EPOCHS) / EPOCHS))
    for k, seed in enumerate(SEEDS):
        path = os.path.join(final, f"seed-{seed}")
        os.makedirs(path)
        config = _config(seed=seed, out=path)
        ema = {f"{DECAYS[0]:g}": SMALL_DECAY_SHAPE * (ema_peak[k] + 0.1), f"{DECAYS[1]:g}": EMA_SHAPE * ema_peak[k]}
        sgd = np.linspace(0.3, 1.0, EPOCHS) * sgd_final[k]
        train = np.linspace(0.2, 0.9, EPOCHS) + 0.01 * k
        history = _history_rows(lr, train, sgd, ema)
        _write_json(os.path.join(path, "config.json"), config)
        _write_history(os.path.join(path, "history.csv"), history)
        _write_json(os.path.join(path, "summary.json"), _summary(history, config))
        with open(os.path.join(path, "command.txt"), "w", encoding="utf-8") as handle:
            handle.write(f"python -m app.train --dataset cifar10n --seeds 0 1 2 --out {final}\n")
        if ema_test is not None:
            _write_json(os.path.join(path, "evaluation.json"), _evaluation(ema_test[k], baseline_test[k]))
    return {"noisy_validation": os.path.join(root, "noisy", "validation"), "noisy_final": final}


def _t_interval(a, b):
    """(mean, low, high) of the paired 95 % t interval of a - b over 3 seeds."""
    diff = np.asarray(a, "float64") - np.asarray(b, "float64")
    assert len(diff) == 3  # T_975_DF2 is for n - 1 = 2
    mean = diff.mean()
    half = T_975_DF2 * np.sqrt(np.sum((diff - mean) ** 2) / (len(diff) - 1)) / np.sqrt(len(diff))
    return mean, mean - half, mean + half


def _plan_verdict(a, b):
    """docs/analysis-plan.md's direction rule on a − b over 3 seeds: the side of 0 the t interval lies on; an
    undecided one stays "inconclusive" only where at most 8 seeds would decide it at the observed sd."""
    mean, low, high = _t_interval(a, b)
    if low > 0 or high < 0:
        return "holds" if low > 0 else "does not hold"
    sd = np.std(np.subtract(a, b), ddof=1)
    decides = any(T_975[n - 1] * sd / math.sqrt(n) < abs(mean) for n in range(2, 9))
    return "inconclusive" if decides else "not decidable at this budget"


# Verdict words and rules: the plan's section of a page may hold them, the builder's part may not.
VERDICT_WORDS = re.compile(r"holds|does not hold|inconclusive|decidable|margin|verdict", re.I)


def _page(claim, dirs, out):
    """write_claim's page (Markdown) and its JSON for the fabricated runs, the builder's part checked for
    verdicts of its own. The runs record commit 0000000: pre-plan, so exploratory, with what the plan reads."""
    claims.write_claim(claim, claim_list.CLAIMS[claim], out, dirs, commands=[], command="test", wall_seconds=1.0,
                       images=0, forward=0)
    with open(os.path.join(out, f"{claim}.md"), encoding="utf-8") as handle:
        text = handle.read()
    with open(os.path.join(out, f"{claim}.json"), encoding="utf-8") as handle:
        entry = json.load(handle)
    section, _ = plan_page.section(claim, dirs)
    assert text.count(section) == 1
    builders_part = text.replace(section, "")
    assert not VERDICT_WORDS.search(builders_part), VERDICT_WORDS.search(builders_part)
    assert entry["verdict"] == "exploratory" and "before the plan's commit" in entry["exploratory"]
    assert f"the plan's rule would read **{entry['would_read']}**" in section
    # One statistic decides; the secondary ones are reported with their interval, never a verdict.
    statistics = [line for line in section.splitlines() if line.startswith(("| **primary**", "| secondary: "))]
    assert [line.startswith("| **primary**") for line in statistics] == [True] + [False] * (len(statistics) - 1)
    assert statistics[0].endswith(f"| {entry['would_read']} |")
    assert all(line.endswith("| — (reported only) |") for line in statistics[1:])
    # Each regime row names its run's lr and what its per-epoch "validation" accuracy was measured on.
    monitored = ("| 0.1 | the first 2,000 validation images (10 % split) |" if claim == "adda-constant-lr" else
                 "| 0.1 | the first 2,000 test images (a --full-train run has no validation split) |")
    regime_rows = [line for line in section.split("**Regime**")[1].splitlines() if line.startswith("| ")][1:]
    assert regime_rows and all(monitored in line for line in regime_rows), regime_rows
    # The JSON's regime summary (the README's status table reads it) agrees with the page's rows.
    final = [float(value) for line in regime_rows for value in re.findall(r"R1 final training accuracy ([\d.]+) %", line)]
    assert entry["regime"]["runs"] == len(regime_rows) and entry["regime"]["measured"] == len(final)
    assert entry["regime"]["reached"] == sum("regime reached" in line for line in regime_rows)
    if final:
        assert np.allclose(100 * np.array(entry["regime"]["final_train_accuracy"]), [min(final), max(final)],
                           atol=0.005)
    return text, entry


def _check_interval_text(text, mean, low, high, method):
    """`text` shows (mean, low, high) in points to 2 decimals: each within rounding of ours."""
    match = INTERVAL.search(text)
    assert match, text
    shown = [float(value) for value in match.groups()[:3]]
    assert np.abs(np.array(shown) - 100 * np.array([mean, low, high])).max() <= 0.005 + 1e-9, (shown, text)
    assert match.group(4) == method


def _per_seed_table(table):
    """{first cell: [other cells]} of the last Markdown table in `table` (the per-seed one)."""
    block = table.rsplit("Per seed", 1)[-1] if "Per seed" in table else table.rsplit("per seed", 1)[-1]
    rows = [line.strip("|").split("|") for line in block.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[1:]}


def _check_per_seed_table(table, columns):
    """The per-seed rows and the mean ± sd row of `table` against `columns` (per-seed values, 0-1)."""
    rows = _per_seed_table(table)
    assert list(rows) == [str(seed) for seed in SEEDS] + ["mean ± sd"]
    for i, seed in enumerate(SEEDS):
        assert [float(cell) for cell in rows[str(seed)]] == pytest.approx([100 * c[i] for c in columns], abs=0.0051)
    for cell, values in zip(rows["mean ± sd"], columns):
        mean, sd = (float(part) for part in cell.split(" ± "))
        assert mean == pytest.approx(100 * np.mean(values), abs=0.0051)
        assert sd == pytest.approx(100 * np.std(values, ddof=1), abs=0.0051)


def test_t_quantile_closed_form_matches_the_table():
    assert T_975_DF2 == pytest.approx(4.302652729749464, abs=1e-12)
    # Z_975 solves Phi(z) = 0.975.
    assert 0.5 * (1 + math.erf(Z_975 / math.sqrt(2))) == pytest.approx(0.975, abs=1e-15)


# (EMA peak per seed, SGD final per seed, the plan's verdict: EMA − SGD, mean over all epochs of the curves, > 0).
# The mean EMA curve is 0.8225 x its peak (EMA_SHAPE), SGD's 0.65 x its final (a ramp from 0.3 to 1).
FIG2_CASES = {
    # Peak − final +1.5/+2.5/+2.0 points (CI [+0.76, +3.24]); over all epochs about +12 points.
    "EMA ahead": ([0.62, 0.63, 0.645], [0.605, 0.605, 0.625], "holds"),
    # The peak is below SGD's final (CI [-3.24, -0.76]: the pre-plan peak-vs-final rule read "does not hold"),
    # the curve above SGD's on average: the plan reads "holds".
    "peak below SGD's final": ([0.60, 0.60, 0.60], [0.615, 0.625, 0.62], "holds"),
    "EMA behind": ([0.50, 0.51, 0.52], [0.70, 0.70, 0.71], "does not hold"),  # about -4.4/-3.6/-3.4 points
    "undecided": ([0.578, 0.529, 0.565], [0.70, 0.70, 0.70], "not decidable at this budget"),  # +2/-2/+1 points
}


@pytest.mark.parametrize("case", FIG2_CASES)
def test_fig2_reads_the_mean_curves_peak_and_its_page_the_plans_verdict(tmp_path, case):
    ema_peak, sgd_final, expected = FIG2_CASES[case]
    out = tmp_path / "fig2"
    out.mkdir()
    # evaluation.json as app.evaluate leaves it (the plan's statistics look for SGD's early-stopped weights there).
    dirs = _noisy_final(str(tmp_path), ema_peak, sgd_final, ema_test=ema_peak, baseline_test=sgd_final)
    result = noise_claims.fig2(dirs, str(out))

    # The mean curves over seeds, recomputed from the fabricated per-seed curves.
    key = f"{max(DECAYS):g}"
    ema_curves = np.array([EMA_SHAPE * p for p in ema_peak])
    sgd_curves = np.array([np.linspace(0.3, 1.0, EPOCHS) * f for f in sgd_final])
    train_curves = np.array([np.linspace(0.2, 0.9, EPOCHS) + 0.01 * k for k in range(len(SEEDS))])
    lr = 0.1 * 0.5 * (1 + np.cos(np.pi * np.arange(EPOCHS) / EPOCHS))
    rows = result["rows"]
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose([row[f"ema_{key}_test_accuracy"] for row in rows], ema_curves.mean(0), rtol=1e-12)
    np.testing.assert_allclose([row["sgd_test_accuracy"] for row in rows], sgd_curves.mean(0), rtol=1e-12)
    np.testing.assert_allclose([row["sgd_train_accuracy_noisy_labels"] for row in rows], train_curves.mean(0),
                               rtol=1e-12)
    np.testing.assert_allclose([row["lr"] for row in rows], lr, rtol=1e-12)

    # The headline's interval is the plan's statistic (per seed, EMA − SGD averaged over the epochs); the peak
    # of the mean EMA curve (epoch 5 by construction) is read off the test curve: described, no interval.
    peak = int(np.argmax(ema_curves.mean(0)))
    assert peak == 4
    per_seed_peak, per_seed_final = ema_curves[:, peak], sgd_curves[:, -1]
    np.testing.assert_allclose(per_seed_peak, ema_peak, rtol=1e-12)
    _check_per_seed_table(result["table"], [ema_curves.mean(1), sgd_curves.mean(1), per_seed_peak, per_seed_final])
    mean, low, high = _t_interval(ema_curves.mean(1), sgd_curves.mean(1))
    _check_interval_text(result["headline"], mean, low, high, "paired t, 3 seeds")
    assert len(INTERVAL.findall(result["headline"])) == 1
    assert f"(epoch {peak + 1}, lr {lr[peak]:.3g};" in result["headline"]
    assert f"peaks at {100 * ema_curves.mean(0)[peak]:.2f} %" in result["headline"]
    assert "training accuracy on the noisy labels" in result["headline"]
    assert "the first 2,000 clean test images each epoch" in result["headline"]
    assert "verdict" not in result
    assert [run.config["seed"] for run in result["runs"]] == list(SEEDS)

    # The figure: a PNG of the documented 1200 x 675 pixels in `out`.
    assert result["figures"] == [str(out / "fig2.png")]
    with open(out / "fig2.png", "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 675)

    # The page's verdict: the plan's primary statistic, per seed the mean over epochs of EMA − SGD.
    assert _plan_verdict(ema_curves.mean(1), sgd_curves.mean(1)) == expected  # the numbers land where intended
    text, entry = _page("fig2", dirs, str(out))
    assert entry["would_read"] == expected
    assert f"**Ours.** {result['headline']}" in text


# (EMA (acc.) test accuracy per seed, SGD final per seed, the plan's verdict of "EMA (acc.) beats CE").
TABLE2_CASES = {
    "holds": ([0.6015, 0.6040, 0.6000], [0.5865, 0.5790, 0.5800], "holds"),  # +1.5/+2.5/+2.0: CI [+0.76, +3.24]
    "does not hold": ([0.5500, 0.5520, 0.5490], [0.5650, 0.5770, 0.5690], "does not hold"),  # CI [-3.24, -0.76]
    # +1.5/+0.1/+0.8 points: CI [-0.94, +2.54]; at sd 0.70 and mean 0.80, 6 seeds would decide it.
    "inconclusive": ([0.5965, 0.5810, 0.5880], [0.5815, 0.5800, 0.5800], "inconclusive"),
    "not decidable": ([0.6000, 0.5700, 0.5900], [0.5800, 0.5900, 0.5800], "not decidable at this budget"),  # +2/-2/+1
}


@pytest.mark.parametrize("case", TABLE2_CASES)
def test_table2_compares_ema_acc_with_sgd_final_from_evaluation_json(tmp_path, case):
    ema, sgd, expected = TABLE2_CASES[case]
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3, ema_test=ema, baseline_test=sgd)
    result = noise_claims.table2(dirs, str(tmp_path))

    mean, low, high = _t_interval(ema, sgd)
    ours, ce, difference = result["rows"][:3]
    assert ours["accuracy_mean"] == pytest.approx(np.mean(ema), rel=1e-12)
    assert ours["accuracy_std"] == pytest.approx(np.std(ema, ddof=1), rel=1e-9)
    assert ce["accuracy_mean"] == pytest.approx(np.mean(sgd), rel=1e-12)
    assert ce["accuracy_std"] == pytest.approx(np.std(sgd, ddof=1), rel=1e-9)
    assert [difference["accuracy_mean"], difference["ci_low"], difference["ci_high"]] == pytest.approx(
        [mean, low, high], rel=1e-9, abs=1e-12)
    _check_per_seed_table(result["table"], [ema, sgd])
    # Our rows in the comparison table, beside the published methods.
    ours_line = next(line for line in result["table"].splitlines() if line.startswith("| EMA (acc.) — ours |"))
    shown_mean, shown_sd = (float(part) for part in ours_line.split("|")[2].split(" ± "))
    assert [shown_mean, shown_sd] == pytest.approx([100 * np.mean(ema), 100 * np.std(ema, ddof=1)], abs=0.0051)
    assert "| EMA (acc.) — the paper (quoted from the paper) | 86.71 ± 0.17 | 65.15 ± 0.20 |" in result["table"]
    _check_interval_text(result["headline"], mean, low, high, "paired t, 3 seeds")
    assert f"{TEST_EXAMPLES:,} test images" in result["headline"]
    assert "verdict" not in result
    assert _plan_verdict(ema, sgd) == expected  # the fabricated numbers land where intended
    _, entry = _page("table2", dirs, str(tmp_path))
    assert entry["would_read"] == expected


def test_table2_names_the_missing_evaluation(tmp_path):
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3)
    with pytest.raises(ValueError, match=r"seed-0 has no evaluation.json; run `python -m app.evaluate"):
        noise_claims.table2(dirs, str(tmp_path))


ADDA_DECAYS = ("0.9", "0.99", "0.999")


def _adda_runs(root, schedule, holdout, test_sgd, test_ema, **overrides):
    """adda/<schedule>/seed-<k>/ as `app.train --ema-select final` and app.evaluate write them.

    `holdout`: final-epoch hold-out accuracy per decay (seed k adds k / 1000); `test_sgd[k]`,
    `test_ema[decay][k]`: seed k's test accuracies (final weights, EMA without BN recompute).
    """
    base = os.path.join(root, "adda", schedule)
    for k, seed in enumerate(SEEDS):
        path = os.path.join(base, f"seed-{seed}")
        os.makedirs(path)
        config = _config(dataset="cifar10", ema_decays=[float(d) for d in ADDA_DECAYS], ema_every_steps=1,
                         ema_select="final", ema_select_epochs={d: {"accuracy": 4, "loss": 4} for d in ADDA_DECAYS},
                         ema_warmup="none", evaluation_split="validation", full_train=False, limit_train=10000,
                         limit_validation=2000, nesterov=False, schedule=schedule, seed=seed, seeds=list(SEEDS),
                         stop_epochs_from=None, validation_fraction=0.1, warmup_epochs=0, batch_size=128, out=path)
        config.update(overrides)
        # Earlier epochs above the last one: the claim reads the final epoch only.
        ramp = np.array([1.05, 1.04, 1.02, 1.0])
        history = _history_rows([0.1] * 4, 0.8 * ramp, (0.7 + k / 1000) * ramp,
                                {d: (holdout[d] + k / 1000) * ramp for d in ADDA_DECAYS})
        _write_json(os.path.join(path, "config.json"), config)
        _write_history(os.path.join(path, "history.csv"), history)
        _write_json(os.path.join(path, "summary.json"), _summary(history, config))
        by_weights = {"final": _model("weights/final.weights.h5", test_sgd[k])}
        for d in ADDA_DECAYS:
            by_weights[f"ema_{d}_acc"] = _model(f"weights/ema_{d}_acc.weights.h5", test_ema[d][k])
            # BN recomputed: other numbers, which the claim must not read (its hold-out curves have none).
            by_weights[f"ema_{d}_acc_bn"] = _model(f"weights/ema_{d}_acc_bn.weights.h5", test_ema[d][k] - 0.03)
        evaluation = {"split": "test", "test_examples": TEST_EXAMPLES, "temperature_fitted_on": "validation",
                      "validation_examples": 2000, "ece_bins": 100, "ema_decay": "0.999",
                      "models": {"baseline": by_weights["final"]}, "by_weights": by_weights}
        _write_json(os.path.join(path, "evaluation.json"), evaluation)
    return base


def _adda_dirs(root, constant, cosine, **overrides):
    """`dirs` as app.reproduce.plan names them, for both schedules' runs (`_adda_runs` arguments)."""
    return {f"adda_{schedule}": _adda_runs(root, schedule, *runs, **overrides)
            for schedule, runs in (("constant", constant), ("cosine", cosine))}


def _seeds(values, jitter=(0.0, 0.005, -0.005)):
    return [v + j for v, j in zip([values] * 3 if np.isscalar(values) else values, jitter)]


# Per schedule: hold-out accuracy per decay, SGD's test accuracy per seed, EMA's per decay and seed;
# the decay the hold-out picks; the plan's verdict (its primary: constant lr, EMA − SGD at the final epoch, > 0).
ADDA_CASES = {
    # Constant: EMA 0.99 +7.0/+7.5/+7.0 points; cosine: 0/+0.1/-0.2.
    "holds": (({"0.9": 0.74, "0.99": 0.79, "0.999": 0.75}, [0.72, 0.71, 0.73],
               {"0.9": _seeds(0.74), "0.99": [0.79, 0.785, 0.80], "0.999": _seeds(0.75)}),
              ({"0.9": 0.78, "0.99": 0.785, "0.999": 0.78}, [0.78, 0.785, 0.79],
               {"0.9": _seeds(0.78), "0.99": [0.78, 0.786, 0.788], "0.999": _seeds(0.77)}),
              "0.99", "holds"),
    # EMA 2 points below SGD (CI [-3.24, -0.76]) and cosine gains 3 points.
    "does not hold": (({"0.9": 0.73, "0.99": 0.745, "0.999": 0.72}, [0.76, 0.75, 0.77],
                       {"0.9": _seeds(0.73), "0.99": [0.74, 0.735, 0.745], "0.999": _seeds(0.72)}),
                      ({"0.9": 0.75, "0.99": 0.76, "0.999": 0.75}, [0.73, 0.73, 0.73],
                       {"0.9": _seeds(0.75), "0.99": [0.76, 0.766, 0.755], "0.999": _seeds(0.75)}),
                      "0.99", "does not hold"),
    # Constant gains 4/4.5/3.5: holds; cosine 2/4/1, the difference's CI [-0.92, +4.26] (a secondary statistic:
    # the pre-plan rule, which required it above +1 point, read "inconclusive").
    "the constant-lr gain decides": (({"0.9": 0.72, "0.99": 0.76, "0.999": 0.73}, [0.70, 0.70, 0.70],
                      {"0.9": _seeds(0.72), "0.99": [0.74, 0.745, 0.735], "0.999": _seeds(0.73)}),
                     ({"0.9": 0.70, "0.99": 0.72, "0.999": 0.71}, [0.70, 0.70, 0.70],
                      {"0.9": _seeds(0.70), "0.99": [0.72, 0.74, 0.71], "0.999": _seeds(0.71)}),
                     "0.99", "holds"),
    # The hold-out picks 0.999 though 0.99 tests higher: the claim reports 0.999 (+0.5/+1.0/0.0 points,
    # CI [-0.74, +1.74]; 7 seeds would decide it at this spread), not the test set's best.
    "chosen on the hold-out": (({"0.9": 0.72, "0.99": 0.75, "0.999": 0.76}, [0.70, 0.70, 0.70],
                                {"0.9": _seeds(0.72), "0.99": _seeds(0.78), "0.999": [0.705, 0.71, 0.70]}),
                               ({"0.9": 0.70, "0.99": 0.70, "0.999": 0.70}, [0.72, 0.72, 0.72],
                                {"0.9": _seeds(0.72), "0.99": _seeds(0.72), "0.999": [0.70, 0.69, 0.71]}),
                               "0.999", "inconclusive"),
}


@pytest.mark.parametrize("case", ADDA_CASES)
def test_adda_pairs_the_seeds_on_the_test_set_with_the_decay_chosen_on_the_hold_out(tmp_path, case):
    constant, cosine, best, expected = ADDA_CASES[case]
    dirs = _adda_dirs(str(tmp_path), constant, cosine)
    result = noise_claims.adda(dirs, str(tmp_path))

    means = {name: {"no_ema": np.mean(sgd), **{f"ema_{d}": np.mean(ema[d]) for d in ADDA_DECAYS}}
             for name, (_, sgd, ema) in (("constant", constant), ("cosine", cosine))}
    holdout_means = {name: {"no_ema": 0.7 + 0.001, **{f"ema_{d}": holdout[d] + 0.001 for d in ADDA_DECAYS}}
                     for name, (holdout, _, _) in (("constant", constant), ("cosine", cosine))}
    expected_rows = [dict(schedule=name, split=split, **{k: pytest.approx(v, abs=1e-12) for k, v in values[name].items()})
                     for split, values in (("test", means), ("hold-out", holdout_means)) for name in means]
    assert result["rows"] == expected_rows
    assert max(ADDA_DECAYS, key=lambda d: constant[0][d]) == best  # the fabricated hold-out picks `best`

    gain_cosine = np.subtract(cosine[2][best], cosine[1])
    assert f"final epoch, {TEST_EXAMPLES:,} test images, 3 seeds; EMA {best} chosen on the hold-out" in result["headline"]
    _check_interval_text(result["headline"], *_t_interval(constant[2][best], constant[1]), "paired t, 3 seeds")
    assert f"over SGD ({100 * np.mean(constant[1]):.2f} %); cosine: {100 * np.mean(gain_cosine):+.2f}." in result["headline"]
    _check_per_seed_table(result["table"], [constant[1], constant[2][best], cosine[1], cosine[2][best]])
    assert [(run.config["schedule"], run.config["seed"]) for run in result["runs"]] == \
        [("constant", s) for s in SEEDS] + [("cosine", s) for s in SEEDS]
    assert "The 10% hold-out at the final epoch (2,000 images, mean over seeds), where the decay is chosen " \
        f"(EMA {best})" in result["table"]
    assert result["outside_rule"]
    assert "verdict" not in result
    assert _plan_verdict(constant[2][best], constant[1]) == expected  # the fabricated numbers land where intended
    _, entry = _page("adda-constant-lr", dirs, str(tmp_path))
    assert entry["would_read"] == expected


def test_adda_needs_the_same_seeds_for_both_schedules_and_their_evaluations(tmp_path):
    constant, cosine = ADDA_CASES["holds"][:2]
    dirs = _adda_dirs(str(tmp_path), constant, cosine)
    os.rename(os.path.join(dirs["adda_cosine"], "seed-2"), os.path.join(dirs["adda_cosine"], "seed-7"))
    config_path = os.path.join(dirs["adda_cosine"], "seed-7", "config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    _write_json(config_path, dict(config, seed=7))
    with pytest.raises(ValueError, match=r"differ in seeds \(0, 1, 2 vs 0, 1, 7\)"):
        noise_claims.adda(dirs, str(tmp_path))
    os.remove(os.path.join(dirs["adda_constant"], "seed-1", "evaluation.json"))
    with pytest.raises(ValueError, match=r"seed-1 has no evaluation.json; run `python -m app.evaluate"):
        noise_claims.adda(dirs, str(tmp_path))


@pytest.mark.parametrize("validation_fraction, expected", [(0.1, 5000), (0.29, 14500), (0.57, 28500)])
def test_adda_counts_the_hold_out_as_the_data_split_does(tmp_path, validation_fraction, expected):
    # Without --limit-validation the hold-out is round(50,000 x fraction) images (data/loading.split_indices).
    constant, cosine = ADDA_CASES["holds"][:2]
    dirs = _adda_dirs(str(tmp_path), constant, cosine, validation_fraction=validation_fraction,
                      limit_validation=None)
    result = noise_claims.adda(dirs, str(tmp_path))
    assert f"The {validation_fraction:.0%} hold-out at the final epoch ({expected:,} images" in result["table"]


def test_adda_with_one_seed_falls_back_to_the_binomial_error(tmp_path):
    # One seed per schedule (a partial rerun): a normal interval from both models' binomial errors
    # on the test images, as if independent (exact binomial variance here, not p(1 - p) / n).
    constant, cosine = ADDA_CASES["holds"][:2]
    dirs = _adda_dirs(str(tmp_path), constant, cosine)
    for base in dirs.values():
        for seed in SEEDS[1:]:
            shutil.rmtree(os.path.join(base, f"seed-{seed}"))
    result = noise_claims.adda(dirs, str(tmp_path))
    sgd, ema = constant[1][0], constant[2]["0.99"][0]
    se = math.sqrt(_binomial_variance(ema, TEST_EXAMPLES) + _binomial_variance(sgd, TEST_EXAMPLES))
    _check_interval_text(result["headline"], ema - sgd, ema - sgd - Z_975 * se, ema - sgd + Z_975 * se,
                         "1 seed: binomial error over the evaluated images")


def _binomial_variance(p, n):
    """Var(K / n) for K ~ Binomial(n, p), summed exactly over the distribution (not p(1 - p) / n)."""
    p = fractions.Fraction(p).limit_denominator(n)
    a, scale = p.numerator, p.denominator
    total = sum(math.comb(n, k) * a ** k * (scale - a) ** (n - k) * (k * scale - n * a) ** 2 for k in range(n + 1))
    return float(fractions.Fraction(total, scale ** (n + 2) * n ** 2))


def test_the_power_rows_cost_is_the_fastest_seeds_wall_time():
    """The seeds do the same work: a slower one measures other load on the shared cores (or a paused
    process), so the cost of a seed is the fastest one's summary.json wall time."""
    from types import SimpleNamespace

    from evaluation import plan_claims

    def group(*seconds):
        return SimpleNamespace(runs=[SimpleNamespace(summary={} if s is None else {"wall_time_seconds": s})
                                     for s in seconds])

    assert plan_claims.seconds_per_seed(group(7200.0, 5400.0, 9000.0)) == 5400.0
    assert plan_claims.seconds_per_seed(group(None, 3600.0)) == 3600.0  # a run written before it was kept
    assert math.isnan(plan_claims.seconds_per_seed(group(None)))


def test_a_page_reads_the_seeds_its_command_names_and_an_undecided_one_asks_for_seeds_once(tmp_path, monkeypatch):
    """docs/analysis-plan.md: seeds are added once, up to n*, and the verdict is read at that n and not again.
    A directory may hold a seed that another claim added (seed 3 here, its EMA far ahead): a page made with
    --seeds 0 1 2 (dirs["seeds"]) reads those three, and names the n* its undecided verdict waits for."""
    ema, sgd, expected = TABLE2_CASES["inconclusive"]
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3, ema_test=ema, baseline_test=sgd)
    exploratory = plan_claims.assess("table2", dirs)  # commit 0000000: no seeds asked for runs that decide nothing
    assert exploratory["pending_seeds"] is None and "app.reproduce" not in exploratory["primary"]["power"]
    # As if made after the plan's commit.
    monkeypatch.setattr(plan_claims, "exploratory_reason", lambda groups, commit=None, upstream=(): None)
    extra = os.path.join(dirs["noisy_final"], "seed-3")
    shutil.copytree(os.path.join(dirs["noisy_final"], "seed-2"), extra)
    _write_json(os.path.join(extra, "config.json"), _config(seed=3, out=extra))
    _write_json(os.path.join(extra, "evaluation.json"), _evaluation(0.70, 0.55))
    every = plan_claims.assess("table2", dirs)
    assert every["primary"]["interval"].n == 4
    # A half-trained seed 4 (nothing written yet) is not read by a page of other seeds.
    os.makedirs(os.path.join(dirs["noisy_final"], "seed-4"))
    named = plan_claims.assess("table2", {**dirs, "seeds": (0, 1, 2)})
    assert named["primary"]["interval"].n == 3 and named["would_read"] == expected == "inconclusive"
    diff = np.subtract(ema, sgd)
    needed = next(n for n in range(2, 9) if T_975[n - 1] * np.std(diff, ddof=1) / math.sqrt(n) < abs(diff.mean()))
    assert named["pending_seeds"] == needed > 3
    assert (f"the plan adds seeds once, up to {needed}: `python -m app.reproduce table2 --seeds "
            f"{' '.join(map(str, range(needed)))}`") in named["primary"]["power"]
    # Read at 4 seeds (added once), an undecided verdict is final: no more seeds asked for.
    _write_json(os.path.join(extra, "evaluation.json"), _evaluation(0.5815, 0.5800))
    added = plan_claims.assess("table2", {**dirs, "seeds": (0, 1, 2, 3)})  # +0.15, +0.10, +0.80, +0.15: [-0.41, +1.68]
    assert added["would_read"] == "inconclusive" and added["pending_seeds"] is None
    assert "the plan reads no further" in added["primary"]["power"]
    with pytest.raises(Exception, match=r"hold no finished run of seed 5 6; train it"):
        plan_claims.assess("table2", {**dirs, "seeds": (0, 5, 6)})
    with pytest.raises(Exception, match=r"seed-4 holds neither config.json"):  # named, but not trained yet
        plan_claims.assess("table2", {**dirs, "seeds": (0, 4)})


def test_consistency_of_named_seeds_keeps_their_pairs_only(tmp_path):
    """A final/ directory whose consistency.json measured seeds 0-3 (another claim added seed 3): a page of
    seeds 0 1 2 reads their 3 pairs, with the means and accuracies of those alone."""
    import itertools

    from evaluation import claim_common

    seeds = [0, 1, 2, 3]
    pairs = [list(p) for p in itertools.combinations(seeds, 2)]
    churn = [0.10, 0.20, 0.90, 0.30, 0.80, 0.70]  # the pairs with seed 3 are the large ones
    js = [0.01 * (i + 1) for i in range(6)]
    entry = {"weights": "final", "accuracy": 0.0, "accuracy_by_seed": [0.70, 0.72, 0.74, 0.90],
             "churn_by_pair": churn, "js_divergence_by_pair": js, "churn": 0.0, "js_divergence": 0.0}
    _write_json(os.path.join(tmp_path, "consistency.json"),
                {"seeds": seeds, "pairs": 6, "pair_seeds": pairs, "models": {"baseline": entry}})
    kept = claim_common.consistency(str(tmp_path), (0, 1, 2))
    baseline = kept["models"]["baseline"]
    assert kept["seeds"] == [0, 1, 2] and kept["pairs"] == 3 and kept["pair_seeds"] == [[0, 1], [0, 2], [1, 2]]
    assert baseline["churn_by_pair"] == [0.10, 0.20, 0.30] and baseline["churn"] == pytest.approx(0.20)
    assert baseline["js_divergence_by_pair"] == [0.01, 0.02, 0.04]
    assert baseline["accuracy"] == pytest.approx(0.72)
    assert claim_common.consistency(str(tmp_path), None)["pairs"] == 6
    with pytest.raises(Exception, match=r"holds seeds \[0, 1, 2, 3\], not \[0, 4\]; run `python -m app.consistency"):
        claim_common.consistency(str(tmp_path), (0, 4))


def test_fig2s_secondary_reads_the_tracked_ema_and_sgds_early_stopped_weights(tmp_path):
    """The plan's fig2 model is the largest decay with BN tracked: its secondary (EMA at the epoch chosen on
    validation − SGD early-stopped there) reads the tracked weights file, not the recomputed one Table 2 reads."""
    ema, sgd_early = [0.61, 0.62, 0.60], [0.58, 0.60, 0.585]
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3, ema_test=ema, baseline_test=[0.55] * 3)
    for k, seed in enumerate(SEEDS):
        path = os.path.join(dirs["noisy_final"], f"seed-{seed}", "evaluation.json")
        with open(path, encoding="utf-8") as handle:
            evaluation = json.load(handle)
        evaluation["models"]["sgd_early"] = _model("weights/sgd_early.weights.h5", sgd_early[k])
        _write_json(path, evaluation)
    statistics, _, _ = plan_claims.fig2(dirs)
    secondary = [s for s in statistics if not s.primary]
    assert len(secondary) == 1 and "BN tracked" in secondary[0].label
    tracked = np.subtract(ema, 0.01)  # _evaluation: the tracked file scores 1 point below the recomputed one
    np.testing.assert_allclose(secondary[0].a, tracked, rtol=1e-12)
    np.testing.assert_allclose(secondary[0].b, sgd_early, rtol=1e-12)
    table2_secondary = [s for s in plan_claims.table2(dirs)[0] if not s.primary]
    np.testing.assert_allclose(table2_secondary[0].a, ema, rtol=1e-12)  # Table 2: BN recomputed


def test_a_run_upstream_of_the_runs_read_can_make_a_claim_exploratory(tmp_path):
    """The noisy validation run fixes the final runs' epochs and the lr search their lr: a pre-plan or dirty
    one of those makes the verdict exploratory, though the claim's statistics never read them."""
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3, ema_test=[0.6] * 3, baseline_test=[0.55] * 3)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=plan_provenance.ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    for seed in SEEDS:  # the final runs: made at HEAD, clean
        path = os.path.join(dirs["noisy_final"], f"seed-{seed}", "config.json")
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        config["provenance"]["git_commit"] = head
        _write_json(path, config)
    dirs["tuning_noisy"] = os.path.join(str(tmp_path), "tuning-noisy")
    for path, dirty in ((dirs["noisy_validation"], False), (os.path.join(dirs["tuning_noisy"], "trial_1"), True)):
        os.makedirs(path)
        _write_json(os.path.join(path, "config.json"),
                    _config(provenance={"git_commit": head, "git_dirty": dirty}, full_train=False))
    assert [path for path, _ in plan_provenance.upstream_runs("table2", dirs)] == [
        dirs["noisy_validation"], os.path.join(dirs["tuning_noisy"], "trial_1")]
    assert plan_provenance.upstream_runs("adda-constant-lr", dirs) == []
    # The SWA lr search (app.tune_swa's choice file in the validation run) counts for the claims that read SWA.
    validation = os.path.join(str(tmp_path), "protocol", "validation")
    os.makedirs(os.path.join(validation, "swa-tuning"))
    _write_json(os.path.join(validation, "config.json"), _config(provenance={"git_commit": head, "git_dirty": False}))
    _write_json(os.path.join(validation, "swa-tuning", "best_swa_lr.json"),
                {"swa_lr": 0.02, "provenance": {"git_commit": head, "git_dirty": True}})
    assert [path for path, _ in plan_provenance.upstream_runs("swa", {"validation": validation})] == [
        validation, os.path.join(validation, "swa-tuning", "best_swa_lr.json")]
    assert [path for path, _ in plan_provenance.upstream_runs("fig1b", {"validation": validation})] == [validation]
    result = plan_claims.assess("table2", dirs)
    assert result["exploratory"] == f"{os.path.join(dirs['tuning_noisy'], 'trial_1')} records no clean commit"
    os.remove(os.path.join(dirs["tuning_noisy"], "trial_1", "config.json"))
    assert plan_claims.assess("table2", dirs)["exploratory"] is None  # the final runs and the validation run decide
    # A run resumed under older or uncommitted code (attempts.jsonl) cannot decide either.
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=plan_provenance.ROOT,
                           capture_output=True, text=True, check=True).stdout.split()[0]
    run = os.path.join(dirs["noisy_final"], "seed-1")
    for resumed_under, reason in (({"git_commit": first, "git_dirty": False}, f"ran {first[:10]}, before the plan's"),
                                  ({"git_commit": head, "git_dirty": True}, "records no clean commit"),
                                  ({"git_commit": head, "git_dirty": False}, None)):
        run_directory.record_attempt(run, {"git_commit": head, "git_dirty": False})
        run_directory.record_attempt(run, resumed_under, resumed_at={"epoch": 5, "step": 1})
        exploratory = plan_claims.assess("table2", dirs)["exploratory"]
        assert (exploratory is None) if reason is None else (f"{run} (resumed at epoch 5) {reason}" in exploratory)


def test_fig2_and_table2_list_the_sgd_twins_runs_they_read(tmp_path):
    """With SGD at its own tuned lr (noisy/final-sgd), the pages' provenance names those runs too."""
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3, ema_test=[0.6] * 3, baseline_test=[0.55] * 3)
    twin = os.path.join(str(tmp_path), "final-sgd")
    shutil.copytree(dirs["noisy_final"], twin)
    dirs["noisy_final_sgd"] = twin
    for builder in (noise_claims.fig2, noise_claims.table2):
        paths = [run.path for run in builder(dirs, str(tmp_path))["runs"]]
        assert sorted(paths) == sorted([os.path.join(dirs["noisy_final"], f"seed-{s}") for s in SEEDS]
                                       + [os.path.join(twin, f"seed-{s}") for s in SEEDS]), builder.__name__


@pytest.mark.parametrize("early_epoch, noted", [(8, True), (5, False)])
def test_an_early_stopped_sgd_at_its_last_epoch_is_said_to_be_the_final_one(tmp_path, early_epoch, noted):
    dirs = _noisy_final(str(tmp_path), [0.6] * 3, [0.55] * 3, ema_test=[0.6] * 3, baseline_test=[0.55] * 3)
    for seed in SEEDS:
        run = os.path.join(dirs["noisy_final"], f"seed-{seed}")
        path = os.path.join(run, "summary.json")
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        summary["sgd"]["early_stopped"] = {**summary["sgd"]["final"], "epoch": early_epoch}
        _write_json(path, summary)
        path = os.path.join(run, "evaluation.json")
        with open(path, encoding="utf-8") as handle:
            evaluation = json.load(handle)
        evaluation["models"]["sgd_early"] = _model("weights/sgd_early.weights.h5", 0.55)
        _write_json(path, evaluation)
    assert {int(json.load(open(os.path.join(dirs["noisy_final"], f"seed-{s}", "summary.json")))["sgd"]["final"]["epoch"])
            for s in SEEDS} == {8}
    for builder in (plan_claims.table2, plan_claims.fig2):  # fig2's secondary is its own row, same note
        secondary = [s for s in builder(dirs)[0] if not s.primary]
        assert "early-stopped on validation" in secondary[0].label
        assert ("this row compares with SGD's final model" in (secondary[0].note or "")) is noted, builder.__name__
