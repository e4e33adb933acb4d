"""`python -m app.train` end to end on the real CIFAR-10 data (tiny budget)."""

import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app import train
from training.run_dir import load_config, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")), reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)"
)
SMALL = [
    "--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR,
    "--limit-train", "256", "--limit-validation", "256", "--batch-size", "64",
    "--epochs", "3", "--ema-decays", "0.9", "0.99", "--ema-every", "2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "run")
    argv = SMALL + ["--swa", "--swa-start-epoch", "2", "--track-stability", "--keep-checkpoint", "--out", out]
    summary = train.main(argv)
    return out, argv, summary


def test_run_directory_holds_everything(run):
    out, argv, _ = run
    assert sorted(os.listdir(out)) == [
        "attempts.jsonl", "best.keras", "checkpoint", "command.txt", "config.json", "history.csv", "run.lock",
        "summary.json", "swa", "tensorboard", "weights",
    ]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["lr"] == 0.1 and config["ema_decays"] == [0.9, 0.99]
    assert config["evaluation_split"] == "validation"
    # Provenance: the versions, backend and code that produced the run.
    import subprocess

    import keras

    provenance = config["provenance"]
    assert provenance["versions"]["keras"] == keras.__version__
    assert provenance["keras_backend"] == keras.backend.backend() and provenance["devices"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert provenance["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    # git_dirty: tests/test_provenance.py checks it on repositories in known states.
    (attempt,) = [json.loads(line) for line in open(os.path.join(out, "attempts.jsonl"))]
    assert attempt["resumed_at"] is None and attempt["git_commit"] == provenance["git_commit"]
    assert open(os.path.join(out, "command.txt")).read().split()[3:] == argv
    assert sorted(os.listdir(os.path.join(out, "weights"))) == sorted(
        ["final.weights.h5", "swa.weights.h5", "sgd_early.weights.h5"]
        + [f"ema_{d}_{c}{bn}.weights.h5" for d in ("0.9", "0.99") for c in ("acc", "loss") for bn in ("", "_bn")]
        + ["ema_0.99_final.weights.h5", "ema_0.99_final_bn.weights.h5"]  # the largest decay at the last epoch
    )  # and no temporary file of the atomic writes left behind


def test_history_has_one_row_per_epoch_and_a_column_per_model(run):
    out, _, _ = run
    rows = read_history(os.path.join(out, "history.csv"))
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    header = open(os.path.join(out, "history.csv")).readline().strip().split(",")
    assert header[:6] == ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    for column in ("ema_0.9_val_loss", "ema_0.99_val_accuracy", "ema_best_val_accuracy"):
        assert column in header
    assert "swa_val_accuracy" not in header  # SWA is a branch with its own history
    for row in rows:
        assert row["ema_best_val_accuracy"] == max(row["ema_0.9_val_accuracy"], row["ema_0.99_val_accuracy"])
    assert all(row["ema_0.99_weight_distance"] > 0 for row in rows)


def test_prediction_stability_is_recomputed_from_the_kept_checkpoints(run):
    """--track-stability (Adda et al.): NaN at the first epoch; after epoch 3, the fraction
    of validation examples whose correctness is that of epoch 2, recomputed from the
    models in checkpoint/previous.npz (epoch 2) and last.npz (epoch 3)."""
    import models
    from data import loading
    from training import checkpoint
    from training.run_dir import load_config

    out, _, _ = run
    rows = read_history(os.path.join(out, "history.csv"))
    assert np.isnan(rows[0]["prediction_stability"]) and np.isnan(rows[0]["ema_0.9_prediction_stability"])
    data = loading.load_data(load_config(out))
    labels = np.concatenate([np.asarray(y) for _, y in data.validation])
    model = models.build_model("resnet20", 10)
    correct = []
    for name, epoch in (("previous.npz", 2), ("last.npz", 3)):
        meta, contents = checkpoint.read(os.path.join(out, "checkpoint", name))
        assert meta["epoch"] == epoch
        model.set_weights(contents["model"])
        correct.append(np.argmax(model.predict(data.validation, verbose=0), axis=1) == labels)
    # history.csv holds 7 significant digits (training/run_dir.rounded): e.g. 195/256 = 0.76171875 -> 0.7617188.
    assert rows[2]["prediction_stability"] == float(f"{np.mean(correct[0] == correct[1]):.7g}")


def test_summary_selects_the_epochs_history_shows(run):
    out, _, summary = run
    assert summary == json.load(open(os.path.join(out, "summary.json")))
    rows = read_history(os.path.join(out, "history.csv"))
    accuracy = [row["val_accuracy"] for row in rows]
    assert summary["sgd"]["best_val_accuracy"]["epoch"] == int(np.argmax(accuracy)) + 1
    assert summary["sgd"]["final"]["val_loss"] == rows[-1]["val_loss"]
    # SGD's own early stopping (docs/analysis-plan.md): its weights at that epoch are kept.
    early = summary["sgd"]["early_stopped"]
    assert early["epoch"] == int(np.argmax(accuracy)) + 1 and early["selected_on"] == "validation"
    assert early["val_accuracy"] == max(accuracy)
    assert os.path.isfile(os.path.join(out, early["weights"]))
    for decay in ("0.9", "0.99"):
        entry = summary["ema"][decay]
        losses = [row[f"ema_{decay}_val_loss"] for row in rows]
        assert entry["lowest_val_loss"]["epoch"] == int(np.argmin(losses)) + 1
        assert entry["lowest_val_loss"]["val_loss"] == pytest.approx(min(losses))
        assert entry["effective_per_step_decay"] == pytest.approx(float(decay) ** 0.5)
    # The branch's starting point (SWA paper Algorithm 1), then epochs 2 and 3.
    assert summary["swa"]["models_averaged"] == 3 and summary["swa"]["start_epoch"] == 2
    assert summary["swa"]["start_included"]


def test_swa_branches_off_the_baseline_at_a_constant_rate(run):
    """SWA paper §4.1: from the baseline's weights after epoch 1, epochs 2-3 at the SWA lr."""
    from training import checkpoint

    out, _, summary = run
    meta, contents = checkpoint.read(os.path.join(out, "checkpoint", "swa-branch.npz"))
    assert meta["epoch"] == 1
    baseline = read_history(os.path.join(out, "history.csv"))
    keys = ("epoch", "lr", "val_loss", "val_accuracy", "ema_0.99_val_accuracy")
    assert [{k: r[k] for k in keys} for r in meta["rows"]] == [{k: baseline[0][k] for k in keys}]
    branch = read_history(os.path.join(out, "swa", "history.csv"))
    assert [row["epoch"] for row in branch] == [2, 3]
    assert [row["lr"] for row in branch] == pytest.approx([0.01, 0.01])  # SWA paper App. A, CIFAR-10
    assert branch[0]["val_accuracy"] != baseline[1]["val_accuracy"]  # a different trajectory
    assert summary["swa"]["branch"]["from_epoch"] == 1
    assert (summary["swa"]["branch"]["epochs"], summary["swa"]["branch"]["last_epoch"]) == (2, 3)
    assert summary["swa"]["branch"]["final_sgd_val_accuracy"] == branch[-1]["val_accuracy"]
    # The baseline's own schedule is untouched: still the cosine decay.
    assert baseline[2]["lr"] < baseline[1]["lr"] and baseline[2]["lr"] != pytest.approx(0.01)


def test_swa_average_is_the_mean_of_the_start_and_the_branch_epochs(run):
    """Algorithm 1's average, from the kept checkpoints: the baseline after epoch 1
    (swa-branch.npz), the branch after epoch 2 (previous.npz) and 3 (last.npz)."""
    from training import checkpoint

    out, _, _ = run
    models = [checkpoint.read(os.path.join(out, *path))[1]["model"] for path in (
        ("checkpoint", "swa-branch.npz"), ("swa", "checkpoint", "previous.npz"), ("swa", "checkpoint", "last.npz"))]
    state = checkpoint.read(os.path.join(out, "swa", "checkpoint", "last.npz"))[1]["states"]["swa"]
    assert state["count"] == 3 and state["start_included"]
    floats = [k for k, w in enumerate(models[0]) if w.dtype.kind == "f"]
    average = [state[f"average/{k}"] for k in range(sum(key.startswith("average/") for key in state))]
    assert len(average) == len(floats)
    for got, k in zip(average, floats):
        want = np.mean([np.asarray(m[k], np.float64) for m in models], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    without_start = np.mean([np.asarray(m[floats[0]], np.float64) for m in models[1:]], axis=0)
    assert not np.allclose(average[0], without_start, rtol=1e-5, atol=1e-6)


def test_tensorboard_scalars_equal_history(run):
    out, _, _ = run
    rows = read_history(os.path.join(out, "history.csv"))
    # One TensorBoard run per model, the same tags in each (Scalars overlays them).
    assert sorted(os.listdir(os.path.join(out, "tensorboard"))) == [
        "ema_0.9", "ema_0.99", "ema_best", "sgd"]
    pairs = {("sgd", "val_accuracy"): "val_accuracy", ("ema_0.99", "val_accuracy"): "ema_0.99_val_accuracy",
             ("ema_best", "val_accuracy"): "ema_best_val_accuracy", ("sgd", "learning_rate"): "lr",
             ("sgd", "train_loss"): "train_loss", ("ema_0.9", "weight_distance"): "ema_0.9_weight_distance",
             ("sgd", "time/epoch_seconds"): "epoch_seconds"}
    for (run_name, tag), column in pairs.items():
        events = EventAccumulator(os.path.join(out, "tensorboard", run_name))
        events.Reload()
        scalars = events.Scalars(tag)
        assert [event.step for event in scalars] == [1, 2, 3]
        np.testing.assert_allclose([e.value for e in scalars], [row[column] for row in rows], rtol=1e-6)


def test_saved_ema_weights_reproduce_the_logged_metric(run):
    import keras

    import models
    from data import loading
    from training.run_dir import load_config

    out, _, summary = run
    config = load_config(out)
    data = loading.load_data(config)
    model = models.build_model("resnet20", 10)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    _load_model_weights(model, os.path.join(out, "weights", "ema_0.99_loss.weights.h5"))
    metrics = model.evaluate(data.validation, verbose=0, return_dict=True)
    assert metrics["loss"] == pytest.approx(summary["ema"]["0.99"]["lowest_val_loss"]["val_loss"], rel=1e-4)
    # The BatchNorm-recomputed selection: its saved weights give the numbers summary.json reports.
    _load_model_weights(model, os.path.join(out, "weights", "ema_0.99_acc_bn.weights.h5"))
    metrics = model.evaluate(data.validation, verbose=0, return_dict=True)
    recomputed = summary["ema"]["0.99"]["best_val_accuracy"]["bn_recomputed"]
    assert metrics["loss"] == pytest.approx(recomputed["val_loss"], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(recomputed["val_accuracy"], abs=1e-6)
    # The largest decay at the last epoch (docs/analysis-plan.md, fig1a): the last row's logged metrics.
    assert summary["ema_final"] == {"decay": "0.99", "epoch": 3, "weights": ["ema_0.99_final", "ema_0.99_final_bn"]}
    last = read_history(os.path.join(out, "history.csv"))[-1]
    _load_model_weights(model, os.path.join(out, "weights", "ema_0.99_final.weights.h5"))
    metrics = model.evaluate(data.validation, verbose=0, return_dict=True)
    assert metrics["loss"] == pytest.approx(last["ema_0.99_val_loss"], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(last["ema_0.99_val_accuracy"], abs=1e-6)
    _load_model_weights(model, os.path.join(out, "weights", "ema_0.99_final_bn.weights.h5"))
    recomputed_weights = [np.array(w) for w in model.weights]
    _load_model_weights(model, os.path.join(out, "weights", "ema_0.99_final.weights.h5"))
    for tracked, recomputed_weight, weight in zip(model.get_weights(), recomputed_weights, model.weights):
        if "moving" in weight.path:  # BN statistics recomputed, every other weight the same average
            assert not np.allclose(tracked, recomputed_weight)
        else:
            np.testing.assert_array_equal(tracked, recomputed_weight)


def _load_model_weights(model, path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file also holds optimizer variables
        model.load_weights(path)


def test_rerunning_into_a_finished_run_is_refused(run, capsys):
    out, argv, _ = run
    before = open(os.path.join(out, "history.csv")).read()
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --out")
    with pytest.raises(SystemExit):
        train.main([a if a != "0.99" else "0.995" for a in argv])
    assert "holds a different run (differs in: ema_decays)" in capsys.readouterr().err
    assert open(os.path.join(out, "history.csv")).read() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit-train", "40001"], "--limit-train 40001 is larger than the 80% training split of cifar10 (40000 examples); use at most 40000"),
        (["--limit-validation", "10001"], "--limit-validation 10001 is larger than the 10000 examples"),
    ],
)
def test_limits_above_the_split_fail_before_writing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(SMALL + extra + ["--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_a_final_run_on_the_test_set_with_copied_statistics_bootstrap_and_a_cyclic_swa(tmp_path):
    """--full-train, --ema-bn-mode copy, --bn-recompute epoch, --bootstrap-every-epochs,
    --swa-lr and --swa-cycle-epochs through app.train, checked by an independent evaluation."""
    import keras

    import models
    from tests.conftest import normalized_test_images

    out = str(tmp_path / "final")
    argv = [a if a != "3" else "4" for a in SMALL] + [
        "--full-train", "--ema-bn-mode", "copy", "--bn-recompute", "epoch", "--bootstrap-every-epochs", "1",
        "--swa", "--swa-start-epoch", "3", "--swa-lr", "0.02", "--swa-cycle-epochs", "2",
        "--no-swa-include-start", "--out", out]
    summary = train.main(argv)
    config = json.load(open(os.path.join(out, "config.json")))
    assert (config["evaluation_split"], config["ema_bn_mode"], config["bootstrap_every_epochs"]) == ("test", "copy", 1)
    assert summary["ema"]["0.99"]["lowest_val_loss"]["selected_on"] == "test"
    rows = read_history(os.path.join(out, "history.csv"))
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert all(row["ema_0.9_bn_val_accuracy"] is not None for row in rows)  # recomputed every epoch
    # Bootstrap: after the last epoch's logs the SGD model became the EMA of the largest
    # decay, with the trained model's BatchNorm statistics (copy): final.weights.h5 scores
    # on the test images exactly what that EMA logged.
    images, labels, _ = normalized_test_images(out, 256)
    model = models.build_model("resnet20", 10)
    _load_model_weights(model, os.path.join(out, "weights", "final.weights.h5"))
    logits = keras.ops.convert_to_numpy(model(images, training=False)).astype("float64")
    logits -= logits.max(axis=1, keepdims=True)
    loss = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(labels)), labels])
    assert loss == pytest.approx(rows[-1]["ema_0.99_val_loss"], rel=2e-4)
    assert loss != pytest.approx(rows[-1]["val_loss"], rel=2e-4)
    # SWA: one cycle of 2 epochs (3-4) from the baseline after epoch 2, down to --swa-lr;
    # --no-swa-include-start: the cycle's end only.
    branch = read_history(os.path.join(out, "swa", "history.csv"))
    assert [row["epoch"] for row in branch] == [3, 4]
    assert summary["swa"]["models_averaged"] == 1 and summary["swa"]["branch"]["from_epoch"] == 2
    assert not summary["swa"]["start_included"] and config["swa_include_start"] is False
    assert branch[0]["lr"] > branch[1]["lr"] == pytest.approx(0.02)  # the cycle ends at --swa-lr


def test_noisy_labels_and_mixed_precision_through_app_train(tmp_path):
    """--dataset cifar10n --label-noise aggre --precision mixed_bfloat16: the run trains on
    TFDS's aggre_label (read independently here) with float32 weights."""
    import h5py
    import tensorflow_datasets as tfds

    from data import loading
    from evaluation import predictions
    from training.run_dir import load_config

    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10_n")):
        pytest.skip("needs the prepared cifar10_n in ../shared/data/tfds (see README, Test)")
    out = str(tmp_path / "noisy")
    train.main(["--dataset", "cifar10n", "--label-noise", "aggre", "--precision", "mixed_bfloat16",
                "--model", "resnet20", "--data-dir", TFDS_DIR, "--limit-train", "128", "--limit-validation",
                "128", "--batch-size", "64", "--epochs", "1", "--ema-decays", "0.9", "--out", out])
    config = load_config(out)
    assert (config.label_noise, config.precision) == ("aggre", "mixed_bfloat16")
    # The labels alone (TFDS's PartialDecoding: no image is read into the result).
    labels_only = tfds.decode.PartialDecoding({"aggre_label": True, "worse_label": True})
    train_split = tfds.as_numpy(tfds.load("cifar10_n", split="train", data_dir=TFDS_DIR, batch_size=-1,
                                          shuffle_files=False, decoders=labels_only))
    kept, _ = loading.split_indices(50_000, 0.2, config.split_seed)
    arrays = predictions.load_arrays(config)
    np.testing.assert_array_equal(arrays.train_labels, train_split["aggre_label"][kept[:128]])
    assert not np.array_equal(arrays.train_labels, train_split["worse_label"][kept[:128]])
    with h5py.File(os.path.join(out, "weights", "final.weights.h5")) as weights:
        dtypes = set()
        weights.visititems(lambda name, item: dtypes.add(str(item.dtype)) if hasattr(item, "dtype") else None)
    assert "float32" in dtypes and not dtypes & {"bfloat16", "float16"}
    assert len(read_history(os.path.join(out, "history.csv"))) == 1
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # the run's policy did not leak


def _files(path):
    return {name: open(os.path.join(path, name), "rb").read()
            for name in ("config.json", "history.csv", "summary.json")}


def test_a_seeds_batch_rerun_keeps_its_finished_seeds_and_trains_the_rest(tiny_seed_runs, tmp_path, capsys):
    """`--seeds` interrupted after a seed finished: the same command (here with another
    seed list, as app.reproduce's per-seed steps give) trains only the missing seeds."""
    import shutil

    from tests.conftest import TINY_RUN_ARGS

    out = tmp_path / "batch"
    shutil.copytree(os.path.join(tiny_seed_runs, "seed-0"), out / "seed-0")  # saved with seeds (0, 1)
    before = _files(out / "seed-0")
    summaries = train.main(TINY_RUN_ARGS + ["--seeds", "0", "2", "--out", str(out)])
    assert "seeds 0 finished already (kept); training seeds 2" in capsys.readouterr().out
    assert _files(out / "seed-0") == before
    assert sorted(summaries) == [0, 2]
    assert summaries[0] == json.loads(before["summary.json"])
    assert summaries[2] == json.load(open(out / "seed-2" / "summary.json"))
    assert load_config(str(out / "seed-2")).seed == 2
    # Every seed finished: the same command is refused, nothing rewritten.
    with pytest.raises(SystemExit) as exit:
        train.main(TINY_RUN_ARGS + ["--seeds", "0", "2", "--out", str(out)])
    assert exit.value.code == 2
    assert "holds every seed's run finished with this config" in capsys.readouterr().err
    assert _files(out / "seed-0") == before



def test_a_different_seed_gives_different_weights(tiny_seed_runs):
    """The seeds of one batch differ only in --seed (app.train --seeds): their trained weights differ."""
    import h5py

    def kernels(seed):
        path = os.path.join(tiny_seed_runs, f"seed-{seed}", "weights", "final.weights.h5")
        found = {}
        with h5py.File(path, "r") as contents:
            contents.visititems(lambda name, item: found.__setitem__(name, item[()])
                                if isinstance(item, h5py.Dataset) else None)
        return found

    first, second = kernels(0), kernels(1)
    assert sorted(first) == sorted(second) and len(first) > 50
    configs = [load_config(os.path.join(tiny_seed_runs, f"seed-{seed}")) for seed in (0, 1)]
    assert [config.seed for config in configs] == [0, 1]
    assert not any(np.array_equal(first[key], second[key]) for key in first if first[key].ndim == 4)  # every conv
