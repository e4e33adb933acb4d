"""`python -m app.evaluate` on real tiny CIFAR-10 runs, against recomputation from the saved weights."""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest

import models
from app import evaluate
from evaluation import metrics
from tests.conftest import TINY_SEEDS, normalized_test_images

LIMIT_TEST = 100
NAMES = ["final", "sgd_early", "ema_0.9_acc", "ema_0.9_acc_bn", "ema_0.9_loss", "ema_0.9_loss_bn", "ema_0.9_final",
         "ema_0.9_final_bn"]


@pytest.fixture(scope="module")
def evaluated_with_output(tiny_seed_runs):
    """app.evaluate's result and what it printed (to a pipe, as when redirected to a file)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = evaluate.main([tiny_seed_runs, "--limit-test", str(LIMIT_TEST)])
    return result, printed.getvalue()


@pytest.fixture(scope="module")
def evaluated(evaluated_with_output):
    return evaluated_with_output[0]


def _arrays(run_path, name):
    import h5py

    found = {}
    with h5py.File(os.path.join(run_path, "weights", f"{name}.weights.h5"), "r") as handle:
        handle.visititems(lambda key, item: found.update({key: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def _logits(model, run_path, name, images):
    model.load_weights(os.path.join(run_path, "weights", f"{name}.weights.h5"))
    return model.predict(images, batch_size=128, verbose=0)


def test_every_seed_is_evaluated_and_written(tiny_seed_runs, evaluated):
    paths = [os.path.join(tiny_seed_runs, f"seed-{seed}") for seed in TINY_SEEDS]
    assert sorted(evaluated) == paths
    for path in paths:
        on_disk = json.load(open(os.path.join(path, "evaluation.json")))
        assert on_disk == json.loads(json.dumps(evaluated[path]))
        assert on_disk["split"] == "test" and on_disk["test_examples"] == LIMIT_TEST
        assert on_disk["temperature_fitted_on"] == "validation" and on_disk["validation_examples"] == 128
        assert on_disk["ece_bins"] == 100 and on_disk["ema_decay"] == "0.9"
        assert list(on_disk["by_weights"]) == NAMES
        models_ = on_disk["models"]
        assert list(models_) == ["baseline", "sgd_early", "ema_acc", "ema_loss", "ema_final"]  # no SWA in this run
        assert models_["sgd_early"]["weights"] == "weights/sgd_early.weights.h5"
        assert models_["ema_final"]["weights"] == "weights/ema_0.9_final_bn.weights.h5"
        assert models_["baseline"]["weights"] == "weights/final.weights.h5"
        # The paper's tables use the EMA with BatchNorm recomputed once (App. B has both).
        assert models_["ema_loss"]["weights"] == "weights/ema_0.9_loss_bn.weights.h5"
        assert models_["ema_loss"]["bn_recomputed"] is True and models_["ema_loss"]["decay"] == 0.9
        for method, entry in models_.items():
            name = entry["weights"][len("weights/"):-len(".weights.h5")]
            numbers = {k: v for k, v in entry.items() if k not in ("decay", "bn_recomputed")}
            assert numbers == on_disk["by_weights"][name]
            assert set(numbers) == {"weights", "accuracy", "loss", "ece", "temperature", "ece_temperature_scaled",
                                    "loss_temperature_scaled", "ece_temperature_scaled_excess", "test_half"}


def test_each_model_shows_progress_in_plain_lines_and_the_table_column_is_explained(tiny_seed_runs,
                                                                                    evaluated_with_output):
    _, printed = evaluated_with_output
    assert "\r" not in printed and "\x1b" not in printed
    lines = printed.splitlines()
    labels = ["SGD (final)", "SGD (early-stopped, acc.)", "EMA 0.9 (acc.)", "EMA 0.9 (acc.) + BN recomputed",
              "EMA 0.9 (loss)", "EMA 0.9 (loss) + BN recomputed", "EMA 0.9 (last epoch)",
              "EMA 0.9 (last epoch) + BN recomputed"]
    for seed in TINY_SEEDS:
        path = os.path.join(tiny_seed_runs, f"seed-{seed}")
        start = lines.index(f"{path}: loading the cifar10 data ...")
        # A file holding the same arrays as an earlier one is not evaluated again (issue 31): e.g. an EMA whose
        # accuracy and loss selections are one epoch, SGD early-stopped at the last epoch.
        arrays = [_arrays(path, name) for name in NAMES]
        same = [next((labels[j] for j in range(i) if _equal(arrays[j], arrays[i])), None) for i in range(len(NAMES))]
        assert lines[start + 1:start + 1 + len(NAMES)] == [
            f"evaluating 8 models on {LIMIT_TEST} test + 128 validation (for T) images: {label} {number}/8"
            + (f": the same weights as {earlier}, its numbers" if earlier else " ...")
            for number, (label, earlier) in enumerate(zip(labels, same), 1)
        ]
        table = lines[lines.index(f"{path}: {LIMIT_TEST} test examples, ECE with 100 equal-mass bins, "
                                  "temperature fitted on validation"):]
        # The decay of the ema_* rows, and why that one (the only one this run kept: also the largest).
        assert table[2 + len(NAMES)].startswith("table: the rows app.report's tables take (paper Table 5); "
                                                "ema_acc and ema_loss are EMA 0.9: --ema-decay, by default "
                                                "the largest decay kept")


def test_numbers_equal_a_numpy_recomputation_from_the_saved_weights(tiny_seed_runs, evaluated):
    path = os.path.join(tiny_seed_runs, "seed-0")
    images, labels, arrays = normalized_test_images(path, LIMIT_TEST)
    pixels = arrays.train_images.reshape(-1, 3).astype(np.float64) / 255.0
    holdout = ((arrays.validation_images / 255.0 - pixels.mean(0)) / pixels.std(0)).astype(np.float32)
    model = models.build_model("resnet20", 10, image_size=32)
    for name in NAMES:
        entry = evaluated[path]["by_weights"][name]
        logits = _logits(model, path, name, images).astype(np.float64)
        log_probabilities = logits - logits.max(1, keepdims=True)
        log_probabilities -= np.log(np.exp(log_probabilities).sum(1, keepdims=True))
        assert entry["accuracy"] == np.mean(np.argmax(logits, 1) == labels)
        assert entry["loss"] == pytest.approx(-np.mean(log_probabilities[np.arange(len(labels)), labels]), rel=1e-4)
        assert entry["ece"] == pytest.approx(
            metrics.expected_calibration_error(np.exp(log_probabilities), labels), abs=1e-4)
        temperature = metrics.fit_temperature(_logits(model, path, name, holdout), arrays.validation_labels)
        assert entry["temperature"] == pytest.approx(temperature, rel=1e-3)
        assert entry["ece_temperature_scaled"] == pytest.approx(
            metrics.expected_calibration_error(metrics.softmax(logits / temperature), labels), abs=1e-3)
        # Table 5's secondaries: the test NLL at that T, and T refitted on the test split's first half.
        scaled = logits / temperature
        scaled -= scaled.max(1, keepdims=True)
        scaled -= np.log(np.exp(scaled).sum(1, keepdims=True))
        assert entry["loss_temperature_scaled"] == pytest.approx(
            -np.mean(scaled[np.arange(len(labels)), labels]), rel=1e-3)
        half = len(labels) // 2
        assert entry["test_half"]["temperature"] == pytest.approx(
            metrics.fit_temperature(logits[:half], labels[:half]), rel=1e-3)


def test_full_train_run_leaves_temperature_scaling_out(tiny_seed_runs, tmp_path, capsys):
    # The same weights, declared a --full-train run: there is no hold-out to fit T on.
    path = str(tmp_path / "full")
    shutil.copytree(os.path.join(tiny_seed_runs, "seed-0"), path)
    config = json.load(open(os.path.join(path, "config.json")))
    config.update(full_train=True, evaluation_split="test", limit_validation=None)
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    result = evaluate.main([path, "--limit-test", "64"])[path]
    assert result["temperature_fitted_on"] is None and "full-train" in result["note"]
    # Recomputed in NumPy from the run's weights and its (full-train) normalization.
    images, labels, _ = normalized_test_images(path, 64)
    model = models.build_model("resnet20", 10, image_size=32)
    for name, entry in result["by_weights"].items():
        assert entry["temperature"] is None and entry["ece_temperature_scaled"] is None
        assert entry["loss_temperature_scaled"] is None and entry["test_half"]["temperature"] > 0
        logits = _logits(model, path, name, images).astype(np.float64)
        log_probabilities = logits - logits.max(1, keepdims=True)
        log_probabilities -= np.log(np.exp(log_probabilities).sum(1, keepdims=True))
        assert entry["accuracy"] == np.mean(np.argmax(logits, 1) == labels)
        assert entry["loss"] == pytest.approx(-np.mean(log_probabilities[np.arange(64), labels]), rel=1e-4)
        assert entry["ece"] == pytest.approx(
            metrics.expected_calibration_error(np.exp(log_probabilities), labels), abs=1e-4)
    assert "no hold-out" in capsys.readouterr().out


def test_identical_weights_are_evaluated_once(tiny_seed_runs, tmp_path, capsys, monkeypatch):
    """An EMA whose accuracy and loss selections are one epoch saves one model twice (issue 31):
    app.evaluate predicts with it once and gives the second file the first one's numbers."""
    from evaluation import predictions

    path = str(tmp_path / "same")
    shutil.copytree(os.path.join(tiny_seed_runs, "seed-0"), path)
    for suffix in ("", "_bn"):  # as app.train writes them when both criteria pick one epoch
        shutil.copyfile(os.path.join(path, "weights", f"ema_0.9_acc{suffix}.weights.h5"),
                        os.path.join(path, "weights", f"ema_0.9_loss{suffix}.weights.h5"))
    loaded = []
    original = predictions.load_weights
    monkeypatch.setattr(predictions, "load_weights", lambda model, run, name: (loaded.append(name),
                                                                                original(model, run, name)))
    result = evaluate.main([path, "--limit-test", "64"])[path]
    assert "ema_0.9_loss" not in loaded and "ema_0.9_loss_bn" not in loaded
    assert sorted(set(loaded)) == sorted(set(NAMES) - {"ema_0.9_loss", "ema_0.9_loss_bn"})
    for suffix in ("", "_bn"):
        loss, acc = result["by_weights"][f"ema_0.9_loss{suffix}"], result["by_weights"][f"ema_0.9_acc{suffix}"]
        assert loss == {**acc, "weights": f"weights/ema_0.9_loss{suffix}.weights.h5"}
    printed = capsys.readouterr().out
    assert ("evaluating 8 models on 64 test + 128 validation (for T) images: EMA 0.9 (loss) 5/8: the same weights "
            "as EMA 0.9 (acc.), its numbers") in printed
    # The test logits app.consistency reads are there for every cached model.
    with np.load(os.path.join(path, "test_logits.npz")) as cached:
        np.testing.assert_array_equal(cached["ema_0.9_loss_bn"], cached["ema_0.9_acc_bn"])


def _fails(argv, capsys, monkeypatch):
    from data import loading

    def expensive(*args, **kwargs):
        raise AssertionError("data was read before the input was checked")

    monkeypatch.setattr(loading, "load_arrays", expensive)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    return error[0]


def test_bad_input_is_one_line_and_exit_2_before_any_data(tiny_seed_runs, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "seed-<k>" in _fails([str(empty)], capsys, monkeypatch)
    assert "does not exist" in _fails([str(tmp_path / "nowhere")], capsys, monkeypatch)
    assert "choose from 0.9" in _fails([tiny_seed_runs, "--ema-decay", "0.5"], capsys, monkeypatch)
    assert "at most 10000" in _fails([tiny_seed_runs, "--limit-test", "20000"], capsys, monkeypatch)
    broken = str(tmp_path / "broken")
    shutil.copytree(os.path.join(tiny_seed_runs, "seed-0"), broken)
    os.remove(os.path.join(broken, "weights", "ema_0.9_loss_bn.weights.h5"))
    assert "ema_0.9_loss_bn.weights.h5 is missing" in _fails([broken], capsys, monkeypatch)
    os.remove(os.path.join(broken, "summary.json"))
    assert "no summary.json" in _fails([broken], capsys, monkeypatch)
