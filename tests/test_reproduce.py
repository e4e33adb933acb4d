"""`python -m app.reproduce` end to end on the tiny budget (real CIFAR-10, seconds per run).

The claims' tables are recomputed here from the run directories they read
(history.csv, summary.json), not from the builders' own code paths.
"""

import csv
import json
import os
import re

import numpy as np
import pytest

from app import reproduce
from evaluation import plan_claims, plan_page, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
needs_cifar10 = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")),
    reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)",
)


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _history(path):
    return _csv(os.path.join(path, "history.csv"))


def _json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _summary(path):
    with open(os.path.join(path, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reproduce"))
    common = ["--budget", "tiny", "--seeds", "0", "1", "--out", out, "--data-dir", TFDS_DIR]
    results = {claim: reproduce.main([claim, *common])[claim] for claim in ("fig1a", "table1", "fig1b", "swa",
                                                                         "table5", "table3")}
    return os.path.join(out, "tiny"), results, common


@needs_cifar10
def test_fig1a_table_is_the_validation_runs_history(tiny):
    base, results, _ = tiny
    # Seed 0's validation run and the other seeds' (validation-seeds/seed-1): the table is their mean.
    histories = [_history(os.path.join(base, "protocol", "validation")),
                 _history(os.path.join(base, "protocol", "validation-seeds", "seed-1"))]
    rows = _csv(os.path.join(base, "fig1a", "fig1a.csv"))
    assert [int(r["epoch"]) for r in rows] == [int(h["epoch"]) for h in histories[0]]
    for i, row in enumerate(rows):
        at = [h[i] for h in histories]
        sgd = [float(h["val_accuracy"]) for h in at]
        best = [max(float(h[f"ema_{d}_val_accuracy"]) for d in ("0.5", "0.9")) for h in at]
        assert float(row["sgd_val_accuracy"]) == pytest.approx(np.mean(sgd))
        assert float(row["ema_best_val_accuracy"]) == pytest.approx(np.mean(best))
        assert float(row["gap"]) == pytest.approx(np.mean(best) - np.mean(sgd))
        per_decay = {d: np.mean([float(h[f"ema_{d}_val_accuracy"]) for h in at]) for d in ("0.5", "0.9")}
        assert per_decay[row["best_decay"]] == pytest.approx(max(per_decay.values()))
    assert os.path.getsize(os.path.join(base, "fig1a", "fig1a.png")) > 10_000
    assert results["fig1a"]["verdict"] in stats.PLAN_VERDICTS
    with open(os.path.join(base, "fig1a", "fig1a.md"), encoding="utf-8") as handle:
        ran = re.search(r"The last `app.reproduce` to write this page ran (\d+) of its (\d+) steps", handle.read())
    assert ran and ran.group(1) == ran.group(2)  # the first claim of a fresh --out runs every step


@needs_cifar10
def test_table1_is_the_mean_over_the_final_runs(tiny):
    base, results, _ = tiny
    finals = [os.path.join(base, "protocol", "final", f"seed-{s}") for s in (0, 1)]
    summaries = [_summary(p) for p in finals]
    rows = {r["method"]: r for r in _csv(os.path.join(base, "table1", "table1.csv"))}

    def check(method, values):
        assert float(rows[method]["accuracy_mean"]) == pytest.approx(np.mean(values))
        assert float(rows[method]["accuracy_std"]) == pytest.approx(np.std(values, ddof=1))

    evaluations = [_json(os.path.join(p, "evaluation.json")) for p in finals]
    # The tables read app.evaluate's test numbers: the final SGD weights, the EMA of the largest
    # decay at the epochs chosen on the validation run with BN recomputed, SWA.
    files = {"baseline": "final", "ema_acc": "ema_0.9_acc_bn", "ema_loss": "ema_0.9_loss_bn", "swa": "swa"}
    for method, name in files.items():
        assert all(e["models"][method]["weights"] == f"weights/{name}.weights.h5" for e in evaluations)
        if method != "swa":
            check(method, [e["by_weights"][name]["accuracy"] for e in evaluations])
    # SWA's column: at the budget the other columns had when the branch ran past it (its row says which).
    swa = "swa_budget" if "swa_budget" in evaluations[0]["models"] else "swa"
    assert "swa" not in rows or swa == "swa"
    check(swa, [e["models"][swa]["accuracy"] for e in evaluations])
    validation = _summary(os.path.join(base, "protocol", "validation"))
    for key in ("best_val_accuracy", "lowest_val_loss"):
        for summary in summaries:
            entry = summary["ema"]["0.9"][key]
            assert entry["epoch"] == validation["ema"]["0.9"][key]["epoch"]
            assert entry["selected_on"].startswith("validation")
    # The paired interval of the page: mean and t-quantile of the per-seed differences.
    gains = [e["models"]["ema_acc"]["accuracy"] - e["models"]["baseline"]["accuracy"] for e in evaluations]
    row = rows["ema_acc"]
    assert float(row["gain"]) == pytest.approx(np.mean(gains))
    half = 12.706204736 * np.std(gains, ddof=1) / np.sqrt(2)  # t(0.975, 1 degree of freedom)
    assert float(row["gain_high"]) - float(row["gain"]) == pytest.approx(half, abs=1e-9)
    for final, summary in zip(finals, summaries):  # each final run logged SGD's test curve every epoch
        history = _history(final)
        assert len(history) == 3 and all(row["val_accuracy"] for row in history)
        assert list(history[0])[-3:] == ["epoch_seconds", "train_images_per_second", "evaluation_seconds"]
        # and each EMA only at the epochs the validation run chose for it (--ema-evaluate selected)
        for decay, entry in summary["ema"].items():
            chosen = {entry[key]["epoch"]: entry[key] for key in ("best_val_accuracy", "lowest_val_loss")}
            assert {int(row["epoch"]) for row in history if row[f"ema_{decay}_val_accuracy"]} == set(chosen)
            for epoch, selected in chosen.items():
                row = history[epoch - 1]
                assert float(row[f"ema_{decay}_val_accuracy"]) == pytest.approx(selected["val_accuracy"], abs=1e-6)
        # Finished: the checkpoints are gone (no --keep-checkpoint), the weights stay.
        assert not os.path.exists(os.path.join(final, "checkpoint"))
        assert not os.path.exists(os.path.join(final, "swa", "checkpoint"))
        assert os.path.exists(os.path.join(final, "weights", "swa.weights.h5"))
    text = open(os.path.join(base, "table1", "table1.md"), encoding="utf-8").read()
    assert "77.63 ± 0.14" in text
    # The verdict is the analysis plan's: its rule quoted, the primary interval recomputed here, power and regime.
    assert "**Rule** (docs/analysis-plan.md" in text and "> ### table1" in text
    assert "**Power** (primary)" in text and "**Regime**" in text
    entry = json.load(open(os.path.join(base, "table1", "table1.json")))
    low, high = np.mean(gains) - half, np.mean(gains) + half
    assert entry["primary_interval"] == f"{100 * np.mean(gains):+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    expected = "holds" if low > 0 else "does not hold" if high < 0 else None
    if entry["exploratory"]:  # a run made from a dirty tree or before the plan: no verdict
        assert entry["verdict"] == "exploratory"
    elif expected:
        assert entry["verdict"] == expected
    else:
        assert entry["verdict"] in ("inconclusive", "not decidable at this budget")
    assert "**Budget vs paper**" in text and "**Provenance**" in text
    index = open(os.path.join(base, "RESULTS.md"), encoding="utf-8").read()
    verdicts = {claim: json.load(open(os.path.join(base, claim, f"{claim}.json"))) for claim in ("fig1a", "table1")}
    for claim, entry in verdicts.items():
        assert f"| [{claim}](#{claim}) | **{entry['verdict']}** |" in index
    assert "](fig1a/fig1a.png)" in index and "Not run yet: fig2, table2, adda-constant-lr." in index


@needs_cifar10
def test_every_protocol_claim_page_has_its_interval_ratio_table_and_provenance(tiny):
    base, results, _ = tiny
    _, dirs, _ = reproduce.plan("tiny", base, TFDS_DIR, (0, 1))
    for claim in ("fig1a", "fig1b", "table1", "swa", "table5", "table3"):
        text = open(os.path.join(base, claim, f"{claim}.md"), encoding="utf-8").read()
        assert "95 % CI" in text and "**Budget vs paper**" in text and "**Provenance**" in text, claim
        # One source of verdicts: the plan's section; the builder's tables and headline around it carry none.
        section, planned = plan_page.section(claim, dirs)
        assert text.count(section) == 1 and results[claim]["verdict"] == planned["verdict"] in stats.PLAN_VERDICTS
        rest = text.replace(section, "")
        assert not re.search(r"holds|does not hold|inconclusive|decidable|margin|verdict", rest, re.I), (claim, rest)
    # Where a headline has an interval, it is one of the plan's statistics: fig1a's secondary (best EMA − SGD
    # averaged over all epochs), fig1b's [recomputed − tracked] of the largest decay over the plan's window.
    lead, alone = plan_claims.fig1a(dirs)[0][1], plan_claims.fig1b(dirs)[0][1]
    assert lead.label.startswith("best EMA − SGD, mean over all epochs")
    assert stats.paired_interval(lead.a, lead.b).text() in results["fig1a"]["headline"]
    assert stats.paired_interval(alone.a, alone.b).text() in results["fig1b"]["headline"]
    # fig1b's table, re-derived from the validation histories over the window it names.
    rows = _csv(os.path.join(base, "fig1b", "fig1b.csv"))
    histories = [_history(os.path.join(base, "protocol", "validation")),
                 _history(os.path.join(base, "protocol", "validation-seeds", "seed-1"))]
    for row in rows:
        first, last = int(row["first_epoch"]), int(row["last_epoch"])
        assert last == len(histories[0])
        gains = [np.mean([float(h[f"ema_{row['decay']}_bn_val_accuracy"]) - float(h[f"ema_{row['decay']}_val_accuracy"])
                          for h in history[first - 1:last]]) for history in histories]
        assert float(row["gain"]) == pytest.approx(np.mean(gains))
    largest = max(rows, key=lambda row: float(row["decay"]))
    assert float(largest["gain"]) == pytest.approx(np.mean(alone.a))
    table3 = open(os.path.join(base, "table3", "table3.md"), encoding="utf-8").read()
    assert "pair-wise values treats them as independent, though pairs share seeds: an approximation" in table3
    # Table 5 reads app.evaluate on both validation runs: the per-seed ECE rows are theirs.
    evaluations = [_json(os.path.join(base, "protocol", path, "evaluation.json"))
                   for path in ("validation", os.path.join("validation-seeds", "seed-1"))]
    rows = {(r["method"], r["metric"]): r for r in _csv(os.path.join(base, "table5", "table5.csv"))}
    ece = [e["models"]["ema_acc"]["ece"] for e in evaluations]
    assert float(rows[("ema_acc", "ece")]["mean"]) == pytest.approx(np.mean(ece))
    # §4.6's model is EMA (loss): the headline reports its ECE and NLL, not EMA (acc.)'s.
    ece_loss = [e["models"]["ema_loss"]["ece"] for e in evaluations]
    nll = [e["models"]["ema_loss"]["loss"] - e["models"]["baseline"]["loss"] for e in evaluations]
    assert float(rows[("ema_loss", "loss")]["mean"]) == pytest.approx(np.mean([e["models"]["ema_loss"]["loss"]
                                                                               for e in evaluations]))
    headline = results["table5"]["headline"]
    assert f"-> {100 * np.mean(ece_loss):.2f} % (EMA (loss)," in headline
    assert f"NLL {100 * np.mean(nll):+.2f} nats ×100" in headline  # the plan's one bound format, 2 decimals
    # Table 3: churn per pair of seeds, its mean the table's.
    consistency = _json(os.path.join(base, "protocol", "final", "consistency.json"))
    baseline = consistency["models"]["baseline"]
    assert consistency["pair_seeds"] == [[0, 1]]
    assert baseline["churn"] == pytest.approx(np.mean(baseline["churn_by_pair"]))
    # SWA: the average of the branch (the starting point included) against SGD's final, on the test set.
    finals = [_json(os.path.join(base, "protocol", "final", f"seed-{s}", "evaluation.json")) for s in (0, 1)]
    swa_rows = _csv(os.path.join(base, "swa", "swa.csv"))
    assert [float(r["swa"]) for r in swa_rows] == pytest.approx([e["models"]["swa"]["accuracy"] for e in finals])


@needs_cifar10
def test_rerun_skips_finished_steps(tiny, capsys):
    base, _, common = tiny
    before = os.path.getmtime(os.path.join(base, "protocol", "final", "seed-0", "summary.json"))
    reproduce.main(["table1", *common])
    out = capsys.readouterr().out
    # tuning is not in the tiny budget: validation, validation-seeds/seed-1, app.tune_swa, and per seed the
    # final run and its test.
    assert out.count("done already") == 7 and "running:" not in out
    assert os.path.getmtime(os.path.join(base, "protocol", "final", "seed-0", "summary.json")) == before
    with open(os.path.join(base, "table1", "table1.md"), encoding="utf-8") as handle:
        page = handle.read()
    assert "The last `app.reproduce` to write this page found all 7 steps done and only rendered it" in page
    # The final runs' SWA lr is the one app.tune_swa chose on the validation run, over the tiny grid.
    with open(os.path.join(base, "protocol", "validation", "swa-tuning", "best_swa_lr.json"), encoding="utf-8") as f:
        tuned = json.load(f)
    assert [trial["swa_lr"] for trial in tuned["trials"]] == [0.01, 0.05]
    assert tuned["swa_lr"] == max(tuned["trials"], key=lambda trial: trial["val_accuracy"])["swa_lr"]
    for seed in (0, 1):
        with open(os.path.join(base, "protocol", "final", f"seed-{seed}", "config.json"), encoding="utf-8") as f:
            assert json.load(f)["swa_lr"] == tuned["swa_lr"]


@needs_cifar10
def test_the_dry_runs_test_evaluation_count_is_the_weights_files_the_runs_saved(tiny):
    """Each evaluate step's estimate: the weights files its run saved (app.evaluate's `by_weights` lists each,
    coinciding ones too), over the test split and the hold-out."""
    base, _, _ = tiny
    steps, _, _ = reproduce.plan("tiny", base, TFDS_DIR, (0, 1))
    checked = 0
    for claim in ("table5", "table1"):
        for train, evaluate in zip(steps[claim], steps[claim][1:]):
            if train.command == "train" and evaluate.command == "evaluate":
                result = _json(evaluate.done_files[0])
                holdout = result["validation_examples"] or 0  # null for a --full-train run
                assert evaluate.forward_images == len(result["by_weights"]) * (result["test_examples"] + holdout)
                checked += 1
    assert checked == 4  # the 80/20 runs of seeds 0 and 1, the final runs of seeds 0 and 1


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    result = reproduce.main(["table3", "--budget", "small", "--out", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("python -m app.")]
    assert [line.split()[2] for line in lines] == (["app.tune", "app.train", "app.tune_swa"] + ["app.train"] * 3
                                                    + ["app.consistency"])
    assert "--lrs 0.05 0.1 0.2 0.4" in lines[0] and "--batch-size 32" in lines[0]
    # The SWA lr (docs/analysis-plan.md, Comparators): the validation run branches at the grid's largest
    # rate and keeps its branch point; app.tune_swa tries the others; the final runs take its choice.
    validation = os.path.join(str(tmp_path), "small", "protocol", "validation")
    assert "--swa --swa-lr 0.05 --keep-checkpoint" in lines[1]
    assert lines[2] == f"python -m app.tune_swa {validation} --swa-lr 0.01 0.02 0.05"
    # One step per seed (each into final/seed-k/), so that each seed can be tested right after it trains.
    assert all("--stop-epochs-from" in lines[3 + seed] and f"--seeds {seed} --out" in lines[3 + seed]
               and f"--swa --swa-lr-from {validation}" in lines[3 + seed] for seed in range(3))
    # The regime pilots' choice (docs/analysis-plan.md): 4 tuning trials and the validation run, 120
    # epochs x 5,000 images each (the limit applies after the 80/20 split), its SWA branch 30 epochs
    # (from epoch 91, exactly 75 %) and 2 more in app.tune_swa; 3 final runs with their 30-epoch branch.
    assert "--epochs 120" in lines[1] and "--limit-train 5000" in lines[1] and "--warmup-epochs 3 " in lines[1]
    assert "--ema-decays 0.8937 0.9468 0.9734 0.9867 0.9934 " in lines[1]
    assert result["train_images"] == 4 * 120 * 5000 + (120 + 30) * 5000 + 2 * 30 * 5000 + 3 * (120 + 30) * 5000
    assert not os.listdir(tmp_path)
    # Without --limit-train, an 80/20 run trains on 80 % of the split (paper budget: 40,000 CIFAR-100
    # images) and evaluates on the rest; Adda et al.'s 90/10 split holds out 5,000.
    from app import reproduce_plan

    steps, _, setups = reproduce.plan("paper", str(tmp_path), None, (0,))
    validation = next(step for step in steps["fig1b"] if step.command == "train")
    epochs = setups["protocol"].epochs
    assert validation.train_images == 40000 * (epochs + reproduce.swa_branch_epochs(epochs))
    assert reproduce_plan._num_evaluated(setups["protocol"]) == 10000
    assert reproduce_plan._num_evaluated(setups["adda"]) == 5000
    # The tiny budget has no search (a fixed lr for both): no -sgd runs to price.
    tiny = reproduce.main(["table1", "--budget", "tiny", "--out", str(tmp_path), "--dry-run"])
    assert tiny["sgd_twin_images"] == (0, 0) and "# after tuning" not in capsys.readouterr().out
    assert not os.listdir(tmp_path)


def test_each_seed_is_tested_right_after_it_trains(tmp_path):
    steps, _, _ = reproduce.plan("small", str(tmp_path), "data", (0, 1, 2))
    texts = [step.text() for step in steps["table1"]]
    for seed in range(3):
        trained = next(i for i, text in enumerate(texts) if "app.train" in text and f"--seeds {seed} --out" in text
                       and text.endswith(os.path.join("protocol", "final")))
        assert texts[trained + 1] == "python -m app.evaluate " + os.path.join(str(tmp_path), "protocol", "final",
                                                                              f"seed-{seed}")
    table5 = [step.text() for step in steps["table5"]]
    assert [text.split()[2] for text in table5] == ["app.tune"] + ["app.train", "app.evaluate"] * 3
    # Fig. 2's secondary statistic tests the early-stopped models: each noisy final run is tested too.
    fig2 = [step.text() for step in steps["fig2"]]
    assert [text.split()[2] for text in fig2] == ["app.tune", "app.train"] + ["app.train", "app.evaluate"] * 3


def test_seeds_added_later_train_their_own_runs_and_measure_consistency_again(tmp_path):
    """The plan adds seeds once (docs/analysis-plan.md): `--seeds 0 1 2 3 4` after 0 1 2. Seed 0's
    validation run picks every final run's epochs, whatever --seeds lists first; each other seed gets its
    validation run; the consistency step is done only when its file holds every named seed's pairs."""
    steps, dirs, _ = reproduce.plan("small", str(tmp_path), "data", (3, 4))
    seeds = os.path.join(str(tmp_path), "protocol", "validation-seeds")
    trained = [step for step in steps["fig1b"] if step.command == "train"]
    assert [step.argv[-1] for step in trained] == [os.path.join(str(tmp_path), "protocol", "validation"),
                                                   seeds, seeds]
    assert [step.argv[step.argv.index("--seeds") + 1] for step in trained[1:]] == ["3", "4"]
    assert dirs["seeds"] == (3, 4)
    steps, dirs, _ = reproduce.plan("small", str(tmp_path), "data", (0, 1, 2, 3))
    consistency = next(step for step in steps["table3"] if step.command == "consistency")
    os.makedirs(os.path.dirname(consistency.done_files[0]))
    for measured, done in (([0, 1, 2], False), ([0, 1, 2, 3], True), ([0, 1, 2, 3, 4], True)):
        with open(consistency.done_files[0], "w", encoding="utf-8") as handle:
            json.dump({"seeds": measured}, handle)
        assert consistency.done() is done


def test_list_names_every_claim_with_the_papers_numbers(capsys):
    reproduce.main(["--list"])
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(reproduce.CLAIM_ORDER)
    assert "77.63" in out and "86.4" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["table9"], "unknown claim 'table9'; choose from fig1a"),
        (["table1", "--budget", "huge"], "unknown budget 'huge'"),
        ([], "name a claim (see --list) or all"),
        (["table3", "--seeds", "0"], "table3 compares seeds pairwise (churn, JS divergence): give --seeds at least two"),
        (["all", "--seeds", "4", "--dry-run"], "all includes table3, which compares seeds pairwise"),
        (["table1", "--budget", "paper", "--data-dir", TFDS_DIR], "table1 needs cifar100, which is not available"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(argv + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_sgd_columns_get_runs_at_sgds_own_lr_when_the_search_picks_another(tmp_path):
    """The plan's comparators (issue 27): where best_sgd_final.json's lr differs from best.json's, the runs the
    SGD columns read are repeated at it into <dir>-sgd/; where it agrees, one run serves both."""
    out = str(tmp_path)
    tuning = os.path.join(out, "tuning")
    os.makedirs(tuning)
    for name, lr in (("best.json", 0.1), ("best_sgd_final.json", 0.1)):
        with open(os.path.join(tuning, name), "w", encoding="utf-8") as handle:
            json.dump({"lr": lr}, handle)
    agree, dirs, _ = reproduce.plan("small", out, "data", (0, 1))
    assert "final_sgd" not in dirs and not any("-sgd" in step.text() for s in agree.values() for step in s)
    with open(os.path.join(tuning, "best_sgd_final.json"), "w", encoding="utf-8") as handle:
        json.dump({"lr": 0.2}, handle)
    steps, dirs, _ = reproduce.plan("small", out, "data", (0, 1))
    protocol = os.path.join(out, "protocol")
    assert dirs["final_sgd"] == os.path.join(protocol, "final-sgd")
    twins = [step for step in steps["table1"] if "-sgd" in step.text()]
    # Each EMA-lr step that table1 reads has its twin, in the same order, at the SGD file's lr.
    originals = [step for step in steps["table1"] if step.command != "tune" and "-sgd" not in step.text()]
    assert len(twins) == len(originals)
    for original, twin in zip(originals, twins):
        expected = re.sub(rf"({re.escape(protocol + os.sep)}(validation-seeds|validation|final))(?=/|\s|$)", r"\1-sgd",
                          original.text())
        expected = expected.replace(f"--lr-from {tuning} ", f"--lr-from {os.path.join(tuning, 'best_sgd_final.json')} ")
        # No statistic reads a twin's EMAs: it trains none (--ema-decays with no values, no flag acting on EMAs).
        expected = re.sub(r"--ema-decays( [0-9.]+)+ --ema-every-steps \d+", "--ema-decays", expected)
        expected = re.sub(r" --(bn-recompute|ema-evaluate) [\w-]+", "", expected)
        assert twin.text() == expected
        assert all(flag not in twin.text() for flag in ("--ema-every-steps", "--bn-recompute", "--ema-evaluate"))
        argv = original.argv
        if original.command == "train":
            # Saved: each epoch's evaluation of the decays on the validation images, and their BN recompute:
            # each epoch's pass over the training and validation images, or the end's (two selections).
            decays = argv.index("--ema-every-steps") - argv.index("--ema-decays") - 1
            epochs = int(reproduce.flag_value(argv, "--epochs"))
            validation = int(reproduce.flag_value(argv, "--limit-validation"))
            train = int(reproduce.flag_value(argv, "--limit-train"))  # of the 80/20 split's training part too
            recompute = epochs if reproduce.flag_value(argv, "--bn-recompute") == "epoch" else 2
            # A final run evaluates each EMA only at its two selected epochs.
            evaluated = 2 if reproduce.flag_value(argv, "--ema-evaluate") == "selected" else epochs
            assert original.forward_images - twin.forward_images == (
                decays * validation * evaluated + decays * (train + validation) * recompute)
            assert twin.train_images == original.train_images
            # Its test evaluation: SGD's last and early-stopped weights, and SWA where it branches.
            assert twin.tested == (2 + ("--swa" in argv), 0 if "--full-train" in argv else validation)
        elif original.command == "evaluate":
            def run_path(step):
                seed, out = reproduce.flag_value(step.argv, "--seeds"), reproduce.flag_value(step.argv, "--out")
                return out if seed is None else os.path.join(out, f"seed-{seed}")

            files, holdout = next(step.tested for step in twins if step.command == "train"
                                  and run_path(step) == twin.argv[0])
            assert twin.forward_images == files * (10000 + holdout)
        else:
            assert twin.forward_images == original.forward_images
    assert any("--bn-recompute epoch" in original.text() for original in originals)  # the validation runs
    assert [step.argv[0] for step in steps["table3"] if step.command == "consistency"] == [
        os.path.join(protocol, "final"), os.path.join(protocol, "final-sgd")]
    # Fig. 1a's and 1b's SGD rows read SGD at its own lr too: the validation runs' twins (fig1a's final ones).
    for claim, keys in (("fig1a", ("validation", "validation-seeds", "final")),
                        ("fig1b", ("validation", "validation-seeds"))):
        twinned = {step.argv[step.argv.index("--out") + 1] for step in steps[claim]
                   if step.command == "train" and "-sgd" in step.text()}
        assert twinned == {os.path.join(protocol, f"{key}-sgd") for key in keys}, claim
    # The noisy claims read their own search, which agrees: no twins there.
    assert not any("-sgd" in step.text() for step in steps["table2"])


def test_dry_run_estimates_the_time_and_says_what_is_done_already(tmp_path, capsys):
    """issue 31: a time beside the images, and how to start from scratch where outputs exist."""
    out = tmp_path / "small"
    (out / "tuning").mkdir(parents=True)
    (out / "tuning" / "best.json").write_text('{"lr": 0.1}', encoding="utf-8")
    result = reproduce.main(["table3", "--budget", "small", "--out", str(tmp_path), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    hours = (result["train_images"] / 420 + result["forward_images"] / 950) / 3600
    assert (f"# about {hours:.1f} h on 2 idle CPU cores (ResNet-20 at 420 training and 950 forward images/s; "
            "longer on loaded cores)") in lines
    assert lines[-1] == (f"# 1 of 7 steps are done already in {out} (their outputs are there: e.g. committed "
                         "results); to reproduce them from scratch, give --out a new directory")
    assert "(done) python -m app.tune" in "\n".join(lines)


def _checkpoint_at_epoch(run, epoch):
    """A checkpoint file whose header says `epoch` epochs are done (all the dry run reads of it)."""
    os.makedirs(os.path.join(run, "checkpoint"))
    np.savez(os.path.join(run, "checkpoint", "last.npz"),
             header=np.array(json.dumps({"meta": {"epoch": epoch, "global_step": 0}})))


def test_dry_run_counts_what_is_left_of_runs_in_progress(tmp_path, capsys):
    """A reproduction takes many sessions: the dry run says how far the search and each run are, and
    estimates what is left of them only."""
    before = reproduce.main(["fig1a", "--budget", "small", "--out", str(tmp_path / "before"), "--dry-run"])
    out = tmp_path / "small"
    for trial, status in (("trial_0", "COMPLETED"), ("trial_1", "RUNNING")):
        os.makedirs(out / "tuning" / trial)
        (out / "tuning" / trial / "trial.json").write_text(json.dumps({"status": status}), encoding="utf-8")
    _checkpoint_at_epoch(out / "tuning" / "trial_1", 30)
    _checkpoint_at_epoch(out / "protocol" / "validation", 75)
    capsys.readouterr()
    after = reproduce.main(["fig1a", "--budget", "small", "--out", str(tmp_path), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("(in progress: 1 of 4 trials finished, one at epoch 30 of 120) python -m app.tune ")
    assert lines[2].startswith("(in progress: 75 of 120 epochs) python -m app.train ")
    steps, _, _ = reproduce.plan("small", str(out), None, (0, 1, 2))
    chain = list(dict.fromkeys(steps["fig1a"]))
    tune, validation = chain[:2]
    assert validation.done_files == (str(out / "protocol" / "validation" / "summary.json"),)
    # Each trial evaluates SGD and the 5 EMAs on 2,000 validation images every epoch.
    assert tune.forward_images == 4 * 6 * 2000 * 120
    # Left: 2.75 of the 4 trials; of the validation run's 150 epochs (120 and its 30-epoch SWA branch) 75.
    for key in ("train_images", "forward_images"):
        left = round(getattr(tune, key) * 2.75 / 4) + round(getattr(validation, key) * 75 / 150)
        assert after[key] == left + sum(getattr(step, key) for step in chain[2:])
        assert before[key] == sum(getattr(step, key) for step in chain)
    # Should the search pick another lr for SGD, every step after it is repeated into -sgd/ (fig1a reads
    # SGD's validation, validation-seeds and final runs): estimated apart, in full (no twin has started),
    # as the twins run them: without EMAs (the plan's twin steps, tested in the test above).
    planned, _, _ = reproduce.plan("small", str(out), None, (0, 1, 2), untuned_sgd_lr_differs=True)
    twin_steps = [step for step in dict.fromkeys(planned["fig1a"]) if "-sgd" in step.text()]
    assert len(twin_steps) == len(chain) - 1
    twins = (sum(step.train_images for step in twin_steps), sum(step.forward_images for step in twin_steps))
    assert twins[0] == sum(step.train_images for step in chain[1:])
    assert twins[1] < sum(step.forward_images for step in chain[1:])
    assert before["sgd_twin_images"] == after["sgd_twin_images"] == twins
    assert lines[-1] == (f"# after tuning: where best_sgd_final.json picks another lr than best.json, the runs the "
                         f"SGD columns read are repeated at it (into <dir>-sgd/): {len(chain) - 1} steps, "
                         f"{twins[0]:,} trained and {twins[1]:,} forward images more, about "
                         f"{(twins[0] / 420 + twins[1] / 950) / 3600:.1f} h more")
    # Every epoch trained, the branch at its 10th epoch, no summary.json yet: in progress, not done.
    (out / "protocol" / "validation" / "checkpoint" / "last.npz").unlink()
    (out / "protocol" / "validation" / "checkpoint").rmdir()
    _checkpoint_at_epoch(out / "protocol" / "validation", 120)
    _checkpoint_at_epoch(out / "protocol" / "validation" / "swa", 100)
    for trial in ("trial_0", "trial_1"):
        (out / "tuning" / trial / "trial.json").write_text(json.dumps({"status": "COMPLETED"}), encoding="utf-8")
    capsys.readouterr()
    late = reproduce.main(["fig1a", "--budget", "small", "--out", str(tmp_path), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("(in progress: 120 of 120 epochs, SWA branch 10 of 30) python -m app.train ")
    assert not any(line.startswith("(done)") for line in lines)  # no best.json, no summary.json
    assert late["train_images"] == (round(tune.train_images * 2 / 4) + round(validation.train_images * 20 / 150)
                                    + sum(step.train_images for step in chain[2:]))


@pytest.mark.parametrize("status", [130, 143])
def test_a_step_stopped_by_ctrl_c_or_sigterm_ends_the_command_with_its_status(status, monkeypatch):
    """The step printed where a rerun resumes; app.reproduce exits with its status (130 Ctrl-C, 143 SIGTERM),
    not as a failed step (exit status 2)."""
    from app import train
    from app.reproduce_plan import Step

    def stopped(argv):
        raise SystemExit(status)

    monkeypatch.setattr(train, "main", stopped)
    with pytest.raises(SystemExit) as ended:
        reproduce._run_step(Step("train", ("--epochs", "1"), ()))
    assert ended.value.code == status
    monkeypatch.setattr(train, "main", lambda argv: (_ for _ in ()).throw(SystemExit(1)))
    with pytest.raises(reproduce.UsageError, match="step failed with exit status 1: python -m app.train --epochs 1"):
        reproduce._run_step(Step("train", ("--epochs", "1"), ()))


def _record_steps(monkeypatch, fails=lambda step: False):
    """`app.reproduce.main` with its steps recorded, not run: each step writes the files that mark it done
    (a search: best_sgd_final.json at 0.2 for the protocol search, 0.1 for the noisy one; best.json at 0.1),
    and a step for which `fails(step)` exits with status 1 instead. Returns the steps run and the pages
    written ((claim, steps run by then)), as lists that fill as main() runs."""
    from app import train, tune
    from utils import quiet

    ran, pages = [], []

    def run_step(step):
        ran.append(step)
        if fails(step):
            monkeypatch.setattr({"tune": tune, "train": train}[step.command], "main",
                                lambda argv: (_ for _ in ()).throw(SystemExit(1)))
            return original(step)  # app.reproduce's own handling of a failed step
        for path in step.done_files:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if step.command == "tune":
                sgd_lr = 0.2 if os.path.basename(os.path.dirname(path)) == "tuning" else 0.1
                for name, lr in (("best_sgd_final.json", sgd_lr), ("best.json", 0.1)):
                    with open(os.path.join(os.path.dirname(path), name), "w", encoding="utf-8") as handle:
                        json.dump({"lr": lr}, handle)
            else:
                with open(path, "w", encoding="utf-8") as handle:
                    json.dump({"wall_time_seconds": 1.0, "seeds": [0, 1]}, handle)

    original = reproduce._run_step
    monkeypatch.setattr(reproduce, "_run_step", run_step)
    monkeypatch.setattr(reproduce, "_check_data", lambda *args: None)
    monkeypatch.setattr(quiet, "import_tensorflow", lambda: None)
    monkeypatch.setattr(reproduce.claim_pages, "write_claim",
                        lambda claim, *args, **kwargs: pages.append((claim, len(ran))) or {"files": [], "headline": ""})
    monkeypatch.setattr(reproduce.claim_pages, "write_index", lambda *args: "index.md")
    return ran, pages


def test_all_runs_each_search_just_before_the_first_claim_that_needs_it_and_plans_again_after_it(
        tmp_path, monkeypatch, capsys):
    """The protocol claims do not wait for (or fail with) the noisy search; a search whose SGD lr differs
    adds the -sgd runs to the claims after it. Steps are recorded here, not run."""
    out = tmp_path / "small"
    ran, pages = _record_steps(monkeypatch)
    reproduce.main(["all", "--budget", "small", "--seeds", "0", "1", "--out", str(tmp_path)])
    tunes = [i for i, step in enumerate(ran) if step.command == "tune"]
    assert [ran[i].done_files[0] for i in tunes] == [str(out / "tuning" / "best.json"),
                                                     str(out / "tuning-noisy" / "best.json")]
    assert tunes[0] == 0
    written = dict(pages)
    protocol = [claim for claim in reproduce.CLAIM_ORDER if claim not in ("fig2", "table2", "adda-constant-lr")]
    assert max(written[claim] for claim in protocol) <= tunes[1] < written["fig2"]  # before fig2's runs
    sgd_twins = [step for step in ran[:written["fig1a"]] if step.command == "train" and "-sgd" in step.argv[-1]]
    assert {step.argv[-1] for step in sgd_twins} == {str(out / "protocol" / name) for name in (
        "validation-sgd", "validation-seeds-sgd", "final-sgd")}
    assert all(step.argv[step.argv.index("--lr-from") + 1] == str(out / "tuning" / "best_sgd_final.json")
               for step in sgd_twins)
    assert not any("noisy" in arg and "-sgd" in arg for step in ran for arg in step.argv)
    assert [claim for claim, _ in pages] == list(reproduce.CLAIM_ORDER)


def test_under_all_a_failed_step_skips_only_the_claims_that_need_it(tmp_path, monkeypatch, capsys):
    """make -k: the noisy search fails; fig2 and table2 (which need it) get no page, every other claim
    runs, the failed step is not run a second time, and the command ends with one line and status 2."""
    noisy = str(tmp_path / "small" / "tuning-noisy")
    ran, pages = _record_steps(monkeypatch, fails=lambda step: step.command == "tune" and noisy in step.argv)
    with pytest.raises(SystemExit) as ended:
        reproduce.main(["all", "--budget", "small", "--seeds", "0", "1", "--out", str(tmp_path)])
    assert ended.value.code == 2
    assert [claim for claim, _ in pages] == [c for c in reproduce.CLAIM_ORDER if c not in ("fig2", "table2")]
    assert sum(noisy in step.argv for step in ran) == 1
    assert not any(step.command == "train" and "noisy" in step.argv[-1] for step in ran)
    out, err = capsys.readouterr()
    assert "[fig2] step failed with exit status 1: python -m app.tune" in out
    assert "[table2] skipped: it needs the step that failed above: python -m app.tune" in out
    assert err.splitlines() == [
        "error: 1 step failed (see above): no new page for fig2, table2 (an earlier one, if any, is unchanged); fig1a, fig1b, table1, table3, table5, swa, "
        "adda-constant-lr ran. Fix what the failed step said and run the same command to continue "
        "(finished steps are kept)"]
    # One claim alone stops at its failed step, as before.
    with pytest.raises(SystemExit) as ended:
        reproduce.main(["table2", "--budget", "small", "--seeds", "0", "1", "--out", str(tmp_path)])
    assert ended.value.code == 2
    assert capsys.readouterr().err.startswith("error: step failed with exit status 1: python -m app.tune")
