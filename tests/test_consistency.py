"""`python -m app.consistency` on two real tiny CIFAR-10 seeds, against a direct NumPy count."""

import json
import os
import shutil

import numpy as np
import pytest

import models
from app import consistency, evaluate
from evaluation import predictions
from tests.conftest import TINY_SEEDS, normalized_test_images

LIMIT_TEST = 100


def _probabilities(model, run_path, name, images):
    model.load_weights(os.path.join(run_path, "weights", f"{name}.weights.h5"))
    logits = model.predict(images, batch_size=128, verbose=0).astype(np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    return probabilities / probabilities.sum(1, keepdims=True)


def _js(p, q, base=np.e):
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m) / np.log(base), 0.0).sum(1)
        kl_q = np.where(q > 0, q * np.log(q / m) / np.log(base), 0.0).sum(1)
    return np.mean(kl_p / 2 + kl_q / 2)


def test_churn_and_js_equal_a_direct_count_between_the_seeds(tiny_seed_runs):
    result = consistency.main([tiny_seed_runs, "--limit-test", str(LIMIT_TEST)])
    assert json.load(open(os.path.join(tiny_seed_runs, "consistency.json"))) == json.loads(json.dumps(result))
    assert result["split"] == "test" and result["seeds"] == list(TINY_SEEDS) and result["pairs"] == 1
    # SGD early-stopped on validation beside them: the early-stopped EMA's comparator (docs/analysis-plan.md).
    assert list(result["models"]) == ["baseline", "sgd_early", "ema_loss"]
    assert result["models"]["ema_loss"]["weights"] == "ema_0.9_loss_bn"  # paper Table 3: BN recomputed
    images, labels, _ = normalized_test_images(os.path.join(tiny_seed_runs, "seed-0"), LIMIT_TEST)
    model = models.build_model("resnet20", 10, image_size=32)
    for method, entry in result["models"].items():
        first, second = (
            _probabilities(model, os.path.join(tiny_seed_runs, f"seed-{seed}"), entry["weights"], images)
            for seed in TINY_SEEDS
        )
        assert entry["churn"] == np.count_nonzero(first.argmax(1) != second.argmax(1)) / LIMIT_TEST
        assert entry["js_divergence"] == pytest.approx(_js(first, second), rel=1e-3, abs=1e-6)
        assert entry["js_divergence_bits"] == pytest.approx(_js(first, second, base=2), rel=1e-3, abs=1e-6)
        accuracies = [np.mean(p.argmax(1) == labels) for p in (first, second)]
        assert entry["accuracy_by_seed"] == accuracies
        assert entry["accuracy"] == pytest.approx(np.mean(accuracies))


def test_criterion_flag_compares_the_best_accuracy_ema(tiny_seed_runs):
    result = consistency.main([tiny_seed_runs, "--limit-test", "32", "--criterion", "accuracy"])
    assert list(result["models"]) == ["baseline", "sgd_early", "ema_acc"]
    assert result["models"]["ema_acc"]["weights"] == "ema_0.9_acc_bn" and result["criterion"] == "accuracy"


def test_each_prediction_shows_progress_in_plain_lines(tiny_seed_runs, capsys):
    consistency.main([tiny_seed_runs, "--limit-test", "32"])
    printed = capsys.readouterr().out
    assert "\r" not in printed and "\x1b" not in printed
    lines = printed.splitlines()
    start = lines.index(f"{tiny_seed_runs}: loading the cifar10 data ...")
    labels = [(seed, label) for seed in TINY_SEEDS
              for label in ("SGD (final)", "SGD (early-stopped, acc.)", "EMA 0.9 (loss) + BN recomputed")]
    assert lines[start + 1:start + 7] == [
        f"predicting 32 test images with 6 models: seed {seed} {label} {number}/6 ..."
        for number, (seed, label) in enumerate(labels, 1)
    ]


@pytest.mark.parametrize("case", ["one_run", "one_seed", "bad_decay", "bad_criterion"])
def test_bad_input_is_one_line_and_exit_2(tiny_seed_runs, tmp_path, capsys, case):
    single_seed = tmp_path / "single"
    single_seed.mkdir()
    os.symlink(os.path.join(tiny_seed_runs, "seed-0"), single_seed / "seed-0")
    argv, expected = {
        "one_run": ([os.path.join(tiny_seed_runs, "seed-0")], "not a directory of seed-<k>/ runs"),
        "one_seed": ([str(single_seed)], "holds 1 seed; train at least 2"),
        "bad_decay": ([tiny_seed_runs, "--ema-decay", "0.99"], "choose from 0.9"),
        "bad_criterion": ([tiny_seed_runs, "--criterion", "best"], "invalid choice"),
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        consistency.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and expected in error[0]


def _copy_without_weights(source, destination):
    """A copy of the seed runs' text files only: what a committed reproduction keeps."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("weights", "checkpoint", "tensorboard",
                                                                       "*.keras", "*.lock"))


def test_seeds_whose_weights_are_gone_are_compared_from_the_logits_app_evaluate_saved(
        tiny_seed_runs, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_seed_runs, runs, ignore=shutil.ignore_patterns("tensorboard", "*.lock"))
    for seed in TINY_SEEDS:
        evaluate.main([str(runs / f"seed-{seed}"), "--limit-test", str(LIMIT_TEST)])
    from_weights = consistency.main([str(runs), "--limit-test", str(LIMIT_TEST)])
    gone = tmp_path / "committed"
    _copy_without_weights(runs, gone)
    capsys.readouterr()
    from_logits = consistency.main([str(gone), "--limit-test", str(LIMIT_TEST)])
    assert from_logits == from_weights  # the same float32 logits, so the same churn, JS and accuracy
    printed = capsys.readouterr().out
    assert "loading the cifar10 data" not in printed and "predicting" not in printed
    for seed in TINY_SEEDS:
        assert (f"seed {seed}: its weights are gone; using the test logits app.evaluate saved in "
                f"{gone / f'seed-{seed}' / 'test_logits.npz'}") in printed
    assert consistency.main([str(gone), "--limit-test", "40"])["test_examples"] == 40  # the first rows
    # Only one seed's weights gone: that seed from its logits, the other predicted again.
    shutil.rmtree(runs / "seed-1" / "weights")
    assert consistency.main([str(runs), "--limit-test", str(LIMIT_TEST)]) == from_weights


@pytest.mark.parametrize("case", ["no_logits", "too_few", "whole_split"])
def test_missing_weights_without_usable_logits_is_one_line_naming_the_fix(tiny_seed_runs, tmp_path, capsys, case):
    gone = tmp_path / "committed"
    _copy_without_weights(tiny_seed_runs, gone)
    (gone / "consistency.json").write_text('{"kept": true}\n')
    argv, expected = [str(gone)], "run `python -m app.evaluate"
    if case != "no_logits":
        for seed in TINY_SEEDS:  # what evaluating on 50 test images saves: baseline, ema_acc, ema_loss
            names = ["final", "ema_0.9_acc_bn", "ema_0.9_loss_bn"]
            predictions.save_test_logits(str(gone / f"seed-{seed}"), {name: np.zeros((50, 10)) for name in names},
                                         np.zeros(50), limit_test=50)
        argv, expected = {
            "too_few": (argv + ["--limit-test", "60"], "holds the first 50 test examples, not 60 test examples; "
                                                       "pass --limit-test 50 or run `python -m app.evaluate"),
            "whole_split": (argv, "holds the first 50 test examples, not the whole test split"),
        }[case]
    with pytest.raises(SystemExit) as exit_info:
        consistency.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and expected in error, error
    assert (gone / "consistency.json").read_text() == '{"kept": true}\n'


def test_runs_without_emas_compare_sgds_models_only(tiny_seed_runs, tmp_path, capsys):
    """app.reproduce's SGD twins train no EMA: their table is SGD's last and early-stopped models,
    counted here directly from the logits each seed saved."""
    runs = tmp_path / "sgd-only"
    _copy_without_weights(tiny_seed_runs, runs)
    rng = np.random.default_rng(0)
    logits, labels = {}, rng.integers(0, 10, 40)
    for seed in TINY_SEEDS:
        path = runs / f"seed-{seed}"
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "ema_decays": []}))
        summary = json.loads((path / "summary.json").read_text())
        summary.pop("ema", None), summary.pop("ema_final", None)
        (path / "summary.json").write_text(json.dumps(summary))
        logits[seed] = {name: rng.normal(size=(40, 10)) * 3 for name in ("final", "sgd_early")}
        predictions.save_test_logits(str(path), logits[seed], labels, limit_test=40)
    result = consistency.main([str(runs), "--limit-test", "40"])
    assert list(result["models"]) == ["baseline", "sgd_early"] and result["criterion"] is None
    for method, name in (("baseline", "final"), ("sgd_early", "sgd_early")):
        first, second = (logits[seed][name].astype(np.float32).astype(np.float64) for seed in TINY_SEEDS)
        assert result["models"][method]["churn"] == np.count_nonzero(first.argmax(1) != second.argmax(1)) / 40
        softmax = [np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)
                   for x in (first, second)]
        assert result["models"][method]["js_divergence"] == pytest.approx(_js(*softmax), rel=1e-9)
    assert "SGD (early-stopped)" in capsys.readouterr().out
    for flag in (["--criterion", "loss"], ["--ema-decay", "0.9"]):
        with pytest.raises(SystemExit) as exit_info:
            consistency.main([str(runs), "--limit-test", "40", *flag])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == (f"error: the runs in {runs} kept no EMA, so {flag[0]} has "
                                                   f"nothing to choose; drop {flag[0]}")
