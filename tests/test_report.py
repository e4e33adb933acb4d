"""`python -m app.report` on hand-written run directories: table cells, CSVs, PNGs, user errors."""

import csv
import json
import os

import numpy as np
import pytest

from app import report as report_app
from evaluation import figures, runs
from utils.errors import UsageError

EPOCHS = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(path, dataset, model, seed, numbers, decays=("0.968", "0.998"), bn=True, swa=True):
    """A run directory as app.train writes it (docs/run-directory.md), with the given numbers."""
    os.makedirs(path)
    config = {"dataset": dataset, "model": model, "seed": seed, "epochs": EPOCHS, "lr": 0.1,
              "out": str(path), "evaluation_split": "validation", "label_noise": "worse",
              # Seeds may run on other commits or machines: still one setup.
              "provenance": {"git_commit": f"commit-{seed}", "git_dirty": seed % 2 == 0}}
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    columns = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    for decay in decays:
        columns += [f"ema_{decay}_val_loss", f"ema_{decay}_val_accuracy"]
    columns.append("ema_best_val_accuracy")
    if bn:
        for decay in decays:
            columns += [f"ema_{decay}_bn_val_loss", f"ema_{decay}_bn_val_accuracy"]
    if swa:
        columns += ["swa_val_loss", "swa_val_accuracy"]
    with open(os.path.join(path, "history.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for epoch in range(1, EPOCHS + 1):
            row = [epoch, 0.1 * (EPOCHS - epoch + 1) / EPOCHS]
            row += [0.01 * seed + 0.1 * epoch + 0.001 * index for index in range(len(columns) - 2)]
            if swa:
                row[-2:] = ["", ""] if epoch < 3 else [0.5, 0.6]  # SWA starts at epoch 3
            writer.writerow(row)
    ema = {}
    for decay in decays:
        ema[decay] = {"decay": float(decay), "every_steps": 16}
        for criterion, offset in (("best_val_accuracy", 0.0), ("lowest_val_loss", 0.1)):
            entry = {"epoch": 3, "val_loss": numbers["ema_loss"] + offset, "val_accuracy": numbers["ema_acc"] - offset}
            if bn:
                entry["bn_recomputed"] = {"val_loss": numbers["ema_bn_loss"] + offset,
                                          "val_accuracy": numbers["ema_bn_acc"] - offset}
            ema[decay][criterion] = entry
    ema[decays[0]]["best_val_accuracy"]["val_accuracy"] = 0.123  # the smaller decay must not be reported
    summary = {
        "evaluation_split": "validation", "epochs_completed": EPOCHS,
        "sgd": {"final": {"epoch": EPOCHS, "val_loss": numbers["sgd_loss"], "val_accuracy": numbers["sgd_acc"]}},
        "ema": ema,
    }
    if swa:
        summary["swa"] = {"start_epoch": 3, "models_averaged": 2, "val_loss": numbers["swa_loss"],
                          "val_accuracy": numbers["swa_acc"]}
    json.dump(summary, open(os.path.join(path, "summary.json"), "w"))


SEED_NUMBERS = [
    {"sgd_acc": 0.7763, "sgd_loss": 1.02, "ema_acc": 0.780, "ema_loss": 0.90, "ema_bn_acc": 0.7855,
     "ema_bn_loss": 0.84, "swa_acc": 0.7869, "swa_loss": 0.80},
    {"sgd_acc": 0.7741, "sgd_loss": 1.05, "ema_acc": 0.775, "ema_loss": 0.93, "ema_bn_acc": 0.7810,
     "ema_bn_loss": 0.86, "swa_acc": 0.7901, "swa_loss": 0.83},
]


def _mean_std_text(values, scale, digits):
    values = np.array(values, dtype=np.float64) * scale
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _markdown_rows(text, first_cells):
    prefix = "| " + " | ".join(first_cells) + " |"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture
def run_dirs(tmp_path):
    multi_seed = tmp_path / "cifar100-resnet18"
    for seed, numbers in enumerate(SEED_NUMBERS):
        seed_dir = multi_seed / f"seed-{seed}"
        _write_run(seed_dir, "cifar100", "resnet18", seed, numbers)
        models = {"baseline": {"accuracy": 0.75 + seed / 100, "ece": 0.11 + seed / 100,
                               "ece_temperature_scaled": 0.04, "temperature": 1.5 + seed},
                  "ema_loss": {"accuracy": 0.76, "ece": 0.09, "ece_temperature_scaled": 0.03 + seed / 100,
                               "temperature": 1.2}}
        json.dump({"split": "test", "models": models}, open(seed_dir / "evaluation.json", "w"))
        transfer = {"linear_eval": {"cifar10": {"baseline": {"accuracy": 0.70 + seed / 50},
                                                "ema_loss": {"accuracy": 0.74}}}}
        json.dump(transfer, open(seed_dir / "transfer.json", "w"))
    consistency = {"split": "test", "seeds": [0, 1], "models": {
        "baseline": {"accuracy": 0.7752, "churn": 0.1884, "js_divergence": 0.032},
        "ema_loss": {"accuracy": 0.7805, "churn": 0.1271, "js_divergence": 0.009}}}
    json.dump(consistency, open(multi_seed / "consistency.json", "w"))
    noisy = []
    for seed, numbers in enumerate(SEED_NUMBERS):
        path = tmp_path / f"noisy-seed{seed}"
        _write_run(path, "cifar100n", "resnet34", seed, numbers, bn=False, swa=False)
        noisy.append(str(path))
    return [str(multi_seed)] + noisy


def test_table1_cells_are_mean_and_std_over_seeds(run_dirs, tmp_path):
    result = report_app.main(run_dirs + ["--out", str(tmp_path / "report")])
    text = open(result["markdown"]).read()
    (cifar,) = _markdown_rows(text, ["cifar100", "resnet18", "validation", "2"])
    # Baseline, EMA (acc.) and EMA (loss) of decay 0.998 with BN recomputed, SWA.
    acc = lambda key, offset=0.0: [numbers[key] - offset for numbers in SEED_NUMBERS]
    loss = lambda key, offset=0.0: [numbers[key] + offset for numbers in SEED_NUMBERS]
    assert cifar[4:] == [
        _mean_std_text(acc("sgd_acc"), 100, 2), _mean_std_text(loss("sgd_loss"), 1, 3),
        _mean_std_text(acc("ema_bn_acc"), 100, 2), _mean_std_text(loss("ema_bn_loss"), 1, 3),
        _mean_std_text(acc("ema_bn_acc", 0.1), 100, 2), _mean_std_text(loss("ema_bn_loss", 0.1), 1, 3),
        _mean_std_text(acc("swa_acc"), 100, 2), _mean_std_text(loss("swa_loss"), 1, 3),
    ]
    (noisy,) = _markdown_rows(text, ["cifar100n", "resnet34", "validation", "2"])
    assert noisy[6] == _mean_std_text(acc("ema_acc"), 100, 2)  # no BN recompute: tracked values
    assert noisy[10:] == ["–", "–"]  # no SWA
    assert "EMA decay α=0.998, BN statistics recomputed once" in text
    # CSV: raw fractions at full precision.
    rows = list(csv.DictReader(open(result["csv"]["table1"])))
    ema = next(row for row in rows if row["dataset"] == "cifar100" and row["method"] == "ema_acc")
    assert float(ema["accuracy_mean"]) == pytest.approx(np.mean(acc("ema_bn_acc")), abs=1e-15)
    assert float(ema["accuracy_std"]) == pytest.approx(np.std(acc("ema_bn_acc"), ddof=1), abs=1e-15)
    assert ema["ema_decay"] == "0.998"


def test_tables_3_to_5_from_json_files(run_dirs, tmp_path):
    result = report_app.main(run_dirs + ["--out", str(tmp_path / "report")])
    text = open(result["markdown"]).read()
    (churn,) = _markdown_rows(text, ["cifar100", "resnet18", "test", "2", "EMA (loss)"])
    assert churn[5:] == ["77.52", "78.05", "18.84", "12.71", "0.0320 / 0.0462", "0.0090 / 0.0130"]  # nats / bits
    (transfer,) = _markdown_rows(text, ["cifar100", "resnet18", "cifar10", "2"])
    assert transfer[4:] == [_mean_std_text([0.70, 0.72], 100, 2), "74.00 ± 0.00"]
    (ece,) = _markdown_rows(text, ["cifar100", "resnet18", "test", "2", "ECE (%)"])
    assert ece[5:] == [_mean_std_text([0.11, 0.12], 100, 2), "9.00 ± 0.00"]
    (scaled,) = _markdown_rows(text, ["cifar100", "resnet18", "test", "2", "ECE w/ TS (%)"])
    assert scaled[6] == _mean_std_text([0.03, 0.04], 100, 2)
    assert sorted(result["csv"]) == ["table1", "table3", "table4", "table5"]
    # The CSVs: raw numbers at full precision, from the JSON files the fixture wrote.
    table = {name: list(csv.DictReader(open(result["csv"][name], newline="")))
             for name in ("table3", "table4", "table5")}
    (churn_row,) = table["table3"]
    churn = [float(churn_row[k]) for k in ("churn_baseline", "churn_method", "js_divergence_method")]
    assert churn == [0.1884, 0.1271, 0.009]
    baseline = next(row for row in table["table4"] if row["method"] == "baseline")
    assert float(baseline["accuracy_mean"]) == pytest.approx(np.mean([0.70, 0.72]), abs=1e-15)
    assert float(baseline["accuracy_std"]) == pytest.approx(np.std([0.70, 0.72], ddof=1), abs=1e-15)
    ece = next(row for row in table["table5"] if (row["method"], row["metric"]) == ("baseline", "ece"))
    want = (np.mean([0.11, 0.12]), np.std([0.11, 0.12], ddof=1))
    assert (float(ece["mean"]), float(ece["std"])) == pytest.approx(want)


def test_figures_are_readable_pngs(run_dirs, tmp_path):
    import matplotlib.image

    out = tmp_path / "report"
    result = report_app.main(run_dirs + ["--out", str(out), "--smoothing-window", "2"])
    names = sorted(os.path.basename(path) for path in result["figures"])
    assert names == ["fig1a-cifar100-resnet18.png", "fig1b-cifar100-resnet18.png",
                     "fig1b-cifar100n-resnet34.png", "fig2-cifar100n-resnet34.png"]
    for path in result["figures"]:
        data = open(path, "rb").read()
        assert data[:8] == PNG_SIGNATURE  # their content: test_figure_1a_plots_the_seed_mean_of_history_smoothed
        assert matplotlib.image.imread(path).shape[:2] == (675, 1200)  # 8 x 4.5 in at 150 dpi
        assert f"({os.path.basename(path)})" in open(result["markdown"]).read()


def test_figure_1a_plots_the_seed_mean_of_history_smoothed(run_dirs, tmp_path, monkeypatch):
    """What Fig. 1a draws: the curves' data, against a NumPy mean over the seeds'
    history.csv and a trailing mean of 2 epochs."""
    drawn = {}
    save = figures._save

    def recording_save(pyplot, figure, path):
        drawn[os.path.basename(path)] = {line.get_label(): (np.asarray(line.get_xdata(), float),
                                                            np.asarray(line.get_ydata(), float))
                                         for axes in figure.axes for line in axes.get_lines()}
        save(pyplot, figure, path)

    monkeypatch.setattr(figures, "_save", recording_save)
    report_app.main(run_dirs + ["--out", str(tmp_path / "report"), "--smoothing-window", "2"])
    histories = []
    for seed in range(len(SEED_NUMBERS)):
        with open(os.path.join(run_dirs[0], f"seed-{seed}", "history.csv"), newline="") as handle:
            histories.append(list(csv.DictReader(handle)))
    mean = lambda column: np.mean([[float(row[column]) for row in rows] for rows in histories], axis=0)
    trailing = lambda values: np.concatenate([values[:1], (values[1:] + values[:-1]) / 2])
    lines = drawn["fig1a-cifar100-resnet18.png"]
    epochs, sgd = lines["SGD"]
    np.testing.assert_array_equal(epochs, np.arange(1, EPOCHS + 1))
    np.testing.assert_allclose(sgd, 100 * trailing(mean("val_accuracy")), rtol=1e-12)
    np.testing.assert_allclose(lines["learning rate η"][1], mean("lr"), rtol=1e-12)  # not smoothed
    ema = [label for label in lines if label not in ("SGD", "learning rate η")]
    assert len(ema) == 1
    np.testing.assert_allclose(lines[ema[0]][1], 100 * trailing(mean("ema_best_val_accuracy")), rtol=1e-12)


def test_mean_curve_averages_seeds_and_skips_missing_values():
    history = lambda values: [{"epoch": epoch + 1.0, "x": value} for epoch, value in enumerate(values)]
    fake = [runs.Run("a", {}, history([1.0, float("nan"), 3.0]), {}), runs.Run("b", {}, history([3.0, 4.0]), {})]
    epochs, mean = figures.mean_curve(fake, "x")
    np.testing.assert_array_equal(epochs, [1, 2, 3])
    np.testing.assert_allclose(mean, [2.0, 4.0, 3.0])
    np.testing.assert_allclose(figures.smooth(np.array([1.0, np.nan, 3.0, 5.0]), 2), [1.0, np.nan, 3.0, 4.0])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["missing-dir"], "run directory missing-dir does not exist"),
        (["--ema-decay", "0.5"], "--ema-decay 0.5 is not among"),
        (["--smoothing-window", "0"], "--smoothing-window must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run_dirs, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    argv = (extra if extra == ["missing-dir"] else run_dirs[:1] + extra) + ["--out", "report"]
    with pytest.raises(SystemExit) as exit_info:
        report_app.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1
    assert not (tmp_path / "report").exists()  # nothing written


def test_runs_of_one_setup_with_different_configs_are_refused(tmp_path, capsys):
    _write_run(tmp_path / "a", "cifar10", "resnet18", 0, SEED_NUMBERS[0])
    _write_run(tmp_path / "b", "cifar10", "resnet18", 1, SEED_NUMBERS[1])
    config = json.load(open(tmp_path / "b" / "config.json"))
    json.dump(dict(config, lr=0.05), open(tmp_path / "b" / "config.json", "w"))
    with pytest.raises(SystemExit):
        report_app.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "report")])
    assert "differ in lr; report them separately" in capsys.readouterr().err


def test_a_config_field_newer_than_one_seed_is_its_default_there(tmp_path):
    """Seed 0 made before --ema-evaluate existed (no such key), seed 1 after: one setup while it is the default."""
    _write_run(tmp_path / "a", "cifar10", "resnet18", 0, SEED_NUMBERS[0])
    _write_run(tmp_path / "b", "cifar10", "resnet18", 1, SEED_NUMBERS[1])
    config = json.load(open(tmp_path / "b" / "config.json"))
    json.dump(dict(config, ema_evaluate="every-epoch", devices=1), open(tmp_path / "b" / "config.json", "w"))
    (group,) = runs.load_groups([str(tmp_path / "a"), str(tmp_path / "b")])
    assert len(group.runs) == 2
    json.dump(dict(config, ema_evaluate="selected"), open(tmp_path / "b" / "config.json", "w"))
    with pytest.raises(UsageError, match="differ in ema_evaluate; report them separately"):
        runs.load_groups([str(tmp_path / "a"), str(tmp_path / "b")])


def test_fig1b_names_the_decays_the_warm_up_held_together():
    from evaluation import figures, runs

    def run(rows):
        return runs.Run(path="", config={}, history=rows, summary={})

    # 0.996 logs the numbers of 0.992 at epochs 1-2 (both held by the warm-up), then differs.
    rows = [{"epoch": e, "ema_0.968_val_loss": 1.0 + e, "ema_0.992_val_loss": 2.0 + e,
             "ema_0.996_val_loss": 2.0 + e if e <= 2 else 9.0} for e in (1, 2, 3)]
    keys = ["0.968", "0.992", "0.996"]
    assert figures.identical_until([run(rows)], "0.996", keys) == ("0.992", 2)
    assert figures.identical_until([run(rows)], "0.992", keys) is None
