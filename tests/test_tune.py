"""app.tune and tuning/: the search's result against the trials' own records.

Every check reads back what the search wrote (KerasTuner's trial.json, each
trial's history.csv, TensorBoard event files) independently of the code that
wrote it. Data: synthetic 8x8 images whose class is their brightest channel
(`synthetic_arrays`), put in place of data.loading's loader, so no dataset is
needed; ResNet-20, 2 epochs of 4 steps.
"""

import contextlib
import csv
import glob
import io
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from data import availability
from data import loading
from app import tune
from utils.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = [
    "--dataset", "cifar10", "--model", "resnet20", "--epochs", "2", "--batch-size", "16",
    "--ema-every", "1", "--ema-decays", "0.9", "0.99",
]
LRS = [0.05, 1e6, 0.2]  # the middle one diverges
GRID = ["--lrs", "0.05", "1e6", "0.2"]


def synthetic_arrays(num_train=64, num_validation=32, size=8, seed=0):
    rng = np.random.default_rng(seed)

    def split(num_examples):
        labels = rng.integers(0, 3, num_examples).astype(np.int32)
        images = rng.integers(0, 128, (num_examples, size, size, 3))
        for channel in range(3):
            images[labels == channel, :, :, channel] += 127
        return images.astype(np.uint8), labels

    train_images, train_labels = split(num_train)
    validation_images, validation_labels = split(num_validation)
    test_images, test_labels = split(8)
    mean, std = loading.channel_stats(train_images)
    return loading.Arrays(
        train_images, train_labels, validation_images, validation_labels,
        test_images, test_labels, 10, "validation", mean, std,
    )


@contextlib.contextmanager
def synthetic_data():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(availability, "check", lambda config: None)
        patch.setattr(loading, "check_data_available", lambda config: None)
        patch.setattr(loading, "load_arrays", lambda config: synthetic_arrays())
        yield


def run_with_synthetic_data(argv):
    """Entry point of the subprocesses of the distributed test."""
    with synthetic_data():
        return tune.main(argv)


def read_trials(tuner_dir):
    """KerasTuner's own records: {trial_id: trial.json as a dict}."""
    trials = {}
    for path in glob.glob(os.path.join(tuner_dir, "trial_*", "trial.json")):
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        trials[record["trial_id"]] = record
    return trials


def read_history(trial_dir):
    with open(os.path.join(trial_dir, "history.csv"), newline="", encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(handle)]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def searched_with_output(tmp_path_factory):
    """The search, and what it printed (to a pipe, as when redirected to a file)."""
    tuner_dir = str(tmp_path_factory.mktemp("search") / "c10")
    printed = io.StringIO()
    write = tune.atomic_write_text

    def recorded(path, text):  # the order app.tune writes its files in (WRITTEN)
        WRITTEN.append(os.path.basename(path))
        return write(path, text)

    with synthetic_data(), contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune, "atomic_write_text", recorded)
        returned = tune.main(TRAIN_FLAGS + GRID + ["--out", tuner_dir])
    return tuner_dir, returned, printed.getvalue()


WRITTEN = []  # the files searched_with_output's search wrote with atomic_write_text, in order


@pytest.fixture(scope="module")
def searched(searched_with_output):
    return searched_with_output[:2]


def test_best_json_names_the_trial_with_the_highest_objective(searched):
    tuner_dir, returned = searched
    best = read_json(os.path.join(tuner_dir, "best.json"))
    assert best == json.loads(json.dumps(returned))
    trials = read_trials(tuner_dir)
    assert sorted(t["hyperparameters"]["values"]["lr"] for t in trials.values()) == sorted(LRS)
    scores = {
        t["hyperparameters"]["values"]["lr"]: t["score"]
        for t in trials.values()
        if t["status"] == "COMPLETED"
    }
    assert best["objective"] == max(scores.values())
    assert scores[best["lr"]] == max(scores.values())
    assert best["objective_name"] == "ema"
    trial_dir = os.path.join(tuner_dir, f"trial_{best['trial_id']}")
    assert best["command"] == (
        "python -m app.train " + " ".join(TRAIN_FLAGS) + f" --lr {best['lr']!r}"
        f" --stop-epochs-from {trial_dir} --full-train"
    )
    # The final command parses: the trial's validation-selected epochs are taken.
    from app import cli

    config = cli.parse_config(best["command"].split()[3:])
    summary = read_json(os.path.join(trial_dir, "summary.json"))
    for key, entry in summary["ema"].items():
        assert config.ema_select_epochs[key]["accuracy"] == entry["best_val_accuracy"]["epoch"]
    # Every trial records the code it ran (issue 27): this checkout's commit, as git reports it.
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    trial_provenance = read_json(os.path.join(trial_dir, "config.json"))["provenance"]
    assert trial_provenance["git_commit"] == (head or None)


def test_trials_print_app_train_lines_in_a_log_with_the_warm_up_note(searched_with_output):
    tuner_dir, _, printed = searched_with_output
    assert "\r" not in printed and "\x1b" not in printed and "\b" not in printed  # no Keras progress bar
    lines = printed.splitlines()
    # 2 epochs of 4 steps: both decays stay under min(a, (t+1)/(t+10)) (released after steps 81 and 891).
    note = ("note: EMA decays 0.9, 0.99 never leave the decay warm-up min(a, (t+1)/(t+10)) in this run "
            "(released after step 81, 891; the run has 8 steps); they hold one and the same average")
    assert lines.count(note) == len(LRS)
    for history in sorted(glob.glob(os.path.join(tuner_dir, "trial_*", "history.csv"))):
        for row in read_history(os.path.dirname(history)):  # app.train's line for every epoch the trial logged
            epoch, lr = int(row["epoch"]), re.escape(f"{row['lr']:.4g}")
            assert any(re.fullmatch(rf"epoch {epoch}/2 \| lr {lr} \| .* \| "
                                    rf"\d+s \(train \d+ img/s, eval \d+s\) \| ETA \d+m\d\ds", line)
                       for line in lines), (history, epoch)


def test_the_objective_is_the_max_over_epochs_of_ema_best_val_accuracy(searched):
    tuner_dir, _ = searched
    best = read_json(os.path.join(tuner_dir, "best.json"))
    for trial_id, record in read_trials(tuner_dir).items():
        if record["status"] != "COMPLETED":
            continue
        rows = read_history(os.path.join(tuner_dir, f"trial_{trial_id}"))
        assert len(rows) == 2
        for row in rows:  # MultiEMA's maximum over decays, re-derived
            assert row["ema_best_val_accuracy"] == max(row["ema_0.9_val_accuracy"], row["ema_0.99_val_accuracy"])
        curve = [row["ema_best_val_accuracy"] for row in rows]
        assert record["score"] == max(curve)
        if trial_id == best["trial_id"]:
            epoch = curve.index(max(curve))  # the first epoch reaching it
            assert best["epoch"] == epoch + 1
            assert best["decay"] == min(
                d for d in (0.9, 0.99) if rows[epoch][f"ema_{d:g}_val_accuracy"] == max(curve)
            )
            weights = os.path.join(tuner_dir, f"trial_{trial_id}", "weights")
            assert os.listdir(weights) == [f"ema_{best['decay']:g}_acc.weights.h5"]


def test_best_sgd_final_json_ranks_the_same_trials_by_sgds_last_epoch(searched_with_output):
    """The plan's second lr objective (issue 27), re-derived from the trials' histories."""
    tuner_dir, _, printed = searched_with_output
    best = read_json(os.path.join(tuner_dir, "best_sgd_final.json"))
    last = {}
    for trial_id, record in read_trials(tuner_dir).items():
        if record["status"] == "COMPLETED":
            last[record["hyperparameters"]["values"]["lr"]] = read_history(
                os.path.join(tuner_dir, f"trial_{trial_id}"))[-1]["val_accuracy"]
    top = max(last.values())
    assert best["lr"] == min(lr for lr, accuracy in last.items() if accuracy == top)
    assert best["objective"] == top and best["objective_name"] == "sgd-final" and best["epoch"] == 2
    assert best["command"] == "python -m app.train " + " ".join(TRAIN_FLAGS) + f" --lr {best['lr']!r} --full-train"
    assert f"picks lr {best['lr']:g} ({top:.4f}): {os.path.join(tuner_dir, 'best_sgd_final.json')}" in printed
    # Written before best.json, which marks the search done for app.reproduce: a stop between the two
    # writes must not leave a "done" search whose SGD lr is missing (the -sgd runs would not be planned).
    assert [name for name in WRITTEN if name.startswith("best")] == ["best_sgd_final.json", "best.json"]
    # --lr-from takes the file as well as the search's directory.
    from app import cli

    config = cli.parse_config(TRAIN_FLAGS + ["--lr-from", os.path.join(tuner_dir, "best_sgd_final.json")])
    assert config.lr == best["lr"]


def test_a_diverging_trial_is_failed_and_the_search_goes_on(searched):
    tuner_dir, returned = searched
    by_lr = {t["hyperparameters"]["values"]["lr"]: t for t in read_trials(tuner_dir).values()}
    diverged = by_lr[1e6]
    assert diverged["status"] == "FAILED"
    # app.train's DivergenceGuard (training/recipe.py fit_callbacks): it stops at the step, before an epoch row
    # or an average takes the diverged weights in (Keras's TerminateOnNaN let the epoch end first).
    assert re.fullmatch(r"training diverged at epoch \d+, step \d+: (the training loss is (nan|inf|-inf)|a weight is "
                        r"not finite \(NaN or Inf\)) with lr 1e\+06", diverged["message"]), diverged["message"]
    assert diverged["score"] is None
    history = os.path.join(tuner_dir, f"trial_{diverged['trial_id']}", "history.csv")
    losses = [row["train_loss"] for row in read_history(os.path.dirname(history))] if os.path.exists(history) else []
    assert np.all(np.isfinite(losses))
    # The trial after it ran to the end.
    assert int(by_lr[0.2]["trial_id"]) > int(diverged["trial_id"])
    assert by_lr[0.2]["status"] == "COMPLETED"
    assert returned["trials"] == {"completed": 2, "failed": 1, "other": 0}


def test_hparams_summaries_are_in_the_event_files(searched):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    tuner_dir, _ = searched

    def hparams_data(logdir, tag):
        accumulator = EventAccumulator(logdir)
        accumulator.Reload()
        content = accumulator.PluginTagToContent("hparams")[tag]
        return accumulator, plugin_data_pb2.HParamsPluginData.FromString(content)

    _, experiment = hparams_data(tuner_dir, "_hparams_/experiment")
    (info,) = experiment.experiment.hparam_infos
    assert info.name == "lr"
    assert [value.number_value for value in info.domain_discrete.values] == sorted(LRS)
    metric_tags = [metric.name.tag for metric in experiment.experiment.metric_infos]
    assert metric_tags[0] == "tuning/objective"
    for trial_id, record in read_trials(tuner_dir).items():
        logdir = os.path.join(tuner_dir, f"trial_{trial_id}", "tensorboard")
        accumulator, session = hparams_data(logdir, "_hparams_/session_start_info")
        lr = record["hyperparameters"]["values"]["lr"]
        assert session.session_start_info.hparams["lr"].number_value == lr
        if record["status"] == "COMPLETED":
            (objective,) = accumulator.Scalars("tuning/objective")
            assert objective.value == pytest.approx(record["score"], rel=1e-6)
        else:
            assert "tuning/objective" not in accumulator.Tags()["scalars"]


def test_an_interrupted_search_resumes_to_the_same_best(searched, tmp_path, monkeypatch):
    """Killed during its second trial, then resumed: the same result as `searched`.

    The grid leaves out the diverging rate of `searched`, which failed there.
    """
    from tuning.hypermodel import OneShotHyperModel

    tuner_dir = str(tmp_path / "c10")
    argv = TRAIN_FLAGS + ["--lrs", "0.05", "0.2", "--out", tuner_dir]
    fit = OneShotHyperModel.fit

    def killed_in_the_second_trial(self, hp, model, *args, **kwargs):
        if hp.values["lr"] == 0.2:
            raise KeyboardInterrupt  # not an Exception: KerasTuner does not catch it
        return fit(self, hp, model, *args, **kwargs)

    with synthetic_data():
        monkeypatch.setattr(OneShotHyperModel, "fit", killed_in_the_second_trial)
        with pytest.raises(KeyboardInterrupt):
            tune.main(argv)
        monkeypatch.setattr(OneShotHyperModel, "fit", fit)
        assert [t["status"] for _, t in sorted(read_trials(tuner_dir).items())] == ["COMPLETED", "RUNNING"]
        first_history = os.path.join(tuner_dir, "trial_0", "history.csv")
        stamp = os.stat(first_history).st_mtime_ns
        resumed = tune.main(argv)
    uninterrupted = read_json(os.path.join(searched[0], "best.json"))
    for key in ("lr", "objective", "epoch", "decay"):
        assert resumed[key] == uninterrupted[key]
    # The same command, up to the tuner directory it names (--stop-epochs-from).
    assert resumed["command"].replace(tuner_dir, "DIR") == uninterrupted["command"].replace(searched[0], "DIR")
    assert {t["status"] for t in read_trials(tuner_dir).values()} == {"COMPLETED"}
    assert os.stat(first_history).st_mtime_ns == stamp  # the finished trial did not rerun


def assert_same_history(trial, whole):
    """Every history row of `trial` as the uninterrupted trial `whole`'s, wall-clock columns aside."""
    untimed = ("epoch_seconds", "evaluation_seconds", "train_images_per_second", "train_seconds")
    got, want = read_history(trial), read_history(whole)
    assert [sorted(row) for row in got] == [sorted(row) for row in want]
    for got_row, want_row in zip(got, want):
        for key in want_row:
            if key not in untimed:
                assert got_row[key] == pytest.approx(want_row[key], rel=1e-5, abs=1e-6), key


# Another kill point of the resume from the epoch-1 checkpoint that the SIGTERM test below runs end to end.
@pytest.mark.extended
def test_a_trial_killed_between_epochs_resumes_at_its_checkpoint(searched, tmp_path, monkeypatch):
    """A trial is hours at the small budget and a session's end kills it: the rerun resumes the trial at
    its last epoch end (as app.train does) and ends where the uninterrupted trial of `searched` ended."""
    import keras

    from tuning import hypermodel

    tuner_dir = str(tmp_path / "c10")
    argv = TRAIN_FLAGS + ["--lrs", "0.2", "--out", tuner_dir]
    fit_callbacks, begun = hypermodel.recipe.fit_callbacks, []

    class KilledInTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            begun.append(epoch)
            if len(begun) == 2:
                raise KeyboardInterrupt

    with synthetic_data():
        monkeypatch.setattr(hypermodel.recipe, "fit_callbacks",
                            lambda *args, **kwargs: [*fit_callbacks(*args, **kwargs), KilledInTheSecondEpoch()])
        with pytest.raises(KeyboardInterrupt):
            tune.main(argv)
        trial = os.path.join(tuner_dir, "trial_0")
        assert os.path.exists(os.path.join(trial, "checkpoint", "last.npz")) and len(read_history(trial)) == 1
        resumed = tune.main(argv)
    assert begun == [0, 1, 1]  # the rerun started at the second epoch, not the first
    assert not os.path.exists(os.path.join(trial, "checkpoint"))  # a finished trial keeps no checkpoint
    whole = os.path.join(searched[0], "trial_2")  # lr 0.2 there
    assert read_json(os.path.join(whole, "config.json"))["lr"] == 0.2
    assert_same_history(trial, whole)
    # KerasTuner's result covers both epochs: the same objective, epoch and decay as the uninterrupted trial's.
    assert read_json(os.path.join(trial, "summary.json"))["objective"] == read_json(
        os.path.join(whole, "summary.json"))["objective"]
    assert (resumed["objective"], resumed["epoch"], resumed["decay"]) == (
        read_json(os.path.join(whole, "summary.json"))["objective"]["value"],
        read_json(os.path.join(whole, "summary.json"))["objective"]["epoch"],
        read_json(os.path.join(whole, "summary.json"))["objective"]["decay"])


@pytest.mark.parametrize("last_batch, line, rerun_begins", [
    # Noted after the first step of epoch 2: the trial stops there; the rerun redoes epoch 2.
    (False, r"terminated at epoch 2 step \d+; run the same command to resume from {last}, saved at the end of "
            r"epoch 1 \(1 step to redo\)", [1]),
    # Noted in the last epoch's last step: its evaluation and checkpoint first (the line then says it stopped
    # after that epoch, as app.train's does); the rerun trains nothing and only records the trial.
    pytest.param(True, r"terminated after epoch 2; run the same command to resume from {last}, saved at the "
                       r"end of epoch 2 \(nothing to redo\)", [], marks=pytest.mark.extended),
], ids=["mid-epoch", "last-evaluation"])
def test_sigterm_in_a_trial_is_one_line_exit_143_and_the_rerun_resumes_the_trial(
        searched, tmp_path, monkeypatch, capsys, last_batch, line, rerun_begins):
    """SIGTERM (a session's end, Slurm) during a trial: KerasTuner would record any exception as a failed
    trial and go on; the search ends instead, with the line naming the checkpoint, and the trial resumes to
    the uninterrupted trial's result (`searched`, lr 0.2)."""
    import keras

    from training import stopping
    from tuning import hypermodel

    tuner_dir = str(tmp_path / "c10")
    argv = TRAIN_FLAGS + ["--lrs", "0.2", "--out", tuner_dir]
    fit_callbacks, begun = hypermodel.recipe.fit_callbacks, []

    class TerminatedInTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            begun.append(epoch)

        def on_train_batch_end(self, batch, logs=None):
            at = self.params["steps"] - 1 if last_batch else 0
            if len(begun) == 2 and batch == at:
                stopping.POSITION.stop_requested = True  # what app/signals.py's thread does on SIGTERM

    def counted(*args, **kwargs):
        return [*fit_callbacks(*args, **kwargs), TerminatedInTheSecondEpoch()]

    with synthetic_data():
        monkeypatch.setattr(hypermodel.recipe, "fit_callbacks", counted)
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            tune.main(argv)
        assert stopped.value.code == 143
        trial = os.path.join(tuner_dir, "trial_0")
        last = os.path.join(trial, "checkpoint", "last.npz")
        assert re.fullmatch(line.format(last=re.escape(last)) + "\n", capsys.readouterr().err)
        assert [t["status"] for t in read_trials(tuner_dir).values()] == ["RUNNING"]
        assert len(read_history(trial)) == 2 - len(rerun_begins)  # the epochs the checkpoint holds
        assert stopping.POSITION.checkpoint_files is None  # the trial's position ended with it
        begun.clear()
        monkeypatch.setattr(TerminatedInTheSecondEpoch, "on_train_batch_end", lambda *args, **kwargs: None)
        resumed = tune.main(argv)
    assert begun == rerun_begins
    assert len(read_history(trial)) == 2 and not os.path.exists(os.path.join(trial, "checkpoint"))
    assert {t["status"] for t in read_trials(tuner_dir).values()} == {"COMPLETED"}
    whole = read_json(os.path.join(searched[0], "trial_2", "summary.json"))["objective"]  # lr 0.2 there
    assert read_json(os.path.join(searched[0], "trial_2", "config.json"))["lr"] == 0.2
    assert_same_history(trial, os.path.join(searched[0], "trial_2"))
    # The trial's own summary.json: the uninterrupted trial's objective.
    objective = read_json(os.path.join(trial, "summary.json"))["objective"]
    assert (objective["epoch"], objective["decay"]) == (whole["epoch"], whole["decay"])
    assert objective["value"] == pytest.approx(whole["value"], rel=1e-5)
    assert (resumed["objective"], resumed["epoch"], resumed["decay"]) == pytest.approx(
        (whole["value"], whole["epoch"], whole["decay"]), rel=1e-5)
    assert stopping.message("terminated") == stopping.start_up_line("terminated")  # outside app.tune again


def test_grid_oracle_resumes_after_finished_trials(tmp_path):
    """KerasTuner 1.4.8's GridSearchOracle stops here (keras-tuner#1055)."""
    import keras_tuner

    from tuning.oracles import build_oracle

    ran = []

    class Quadratic(keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            x = trial.hyperparameters.Choice("x", [3.0, 1.0, 2.0])
            ran.append(x)
            return {"score": -((x - 2.0) ** 2)}

    def search(max_trials):
        tuner = Quadratic(
            oracle=build_oracle("grid", "score", max_trials, seed=0),
            directory=str(tmp_path), project_name="grid",
        )
        tuner.search(verbose=0)
        return tuner

    search(max_trials=1)
    tuner = search(max_trials=3)
    assert ran == [3.0, 1.0, 2.0]
    assert tuner.get_best_hyperparameters()[0].values == {"x": 2.0}


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_distributed_search_with_a_chief_and_two_workers(tmp_path):
    tuner_dir = str(tmp_path / "c10")
    argv = TRAIN_FLAGS[:5] + ["1"] + TRAIN_FLAGS[6:] + ["--lrs", "0.05", "0.2", "--out", tuner_dir]
    code = "import sys; from tests.test_tune import run_with_synthetic_data; run_with_synthetic_data(sys.argv[1:])"
    port = str(_free_port())
    processes = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        environ = dict(
            os.environ, KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=port, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1",
        )
        processes[tuner_id] = subprocess.Popen(
            [sys.executable, "-c", code, *argv], cwd=ROOT, env=environ,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    outputs = {}
    try:
        for tuner_id, process in processes.items():
            outputs[tuner_id] = process.communicate(timeout=240)[0]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for tuner_id, process in processes.items():
        assert process.returncode == 0, f"{tuner_id}:\n{outputs[tuner_id][-3000:]}"
    ran = {}
    for worker in ("tuner0", "tuner1"):
        line = next(l for l in outputs[worker].splitlines() if l.startswith(f"worker {worker} finished"))
        ran[worker] = line.split("ran trials: ")[1].split(";")[0].split()
    assert sorted(ran["tuner0"] + ran["tuner1"]) == ["0", "1"]  # each trial ran once
    trials = read_trials(tuner_dir)
    assert {t["status"] for t in trials.values()} == {"COMPLETED"}
    best = read_json(os.path.join(tuner_dir, "best.json"))
    scores = {t["hyperparameters"]["values"]["lr"]: t["score"] for t in trials.values()}
    assert best["objective"] == max(scores.values()) == scores[best["lr"]]
    assert "Best learning rate" in outputs["chief"]
    assert "Epoch 1/1" not in outputs["chief"]  # the chief trains nothing


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lrs", "0.1", "0"], "--lrs must be > 0; got 0.0"),
        (["--lrs", "-0.1"], "--lrs must be > 0; got -0.1"),
        (["--full-train"], "drop --full-train"),
        (["--lr", "0.1"], "app.tune does not take --lr; use --lrs"),
        (["--seeds", "1", "2"], "give --seed, not --seeds"),
        (["--ema-select", "final", "--ema-evaluate", "selected"], "drop --ema-evaluate selected"),
        (["--oracle", "random", "--lrs", "0.1"], "give its ends, two values > 0"),
        (["--oracle", "hyperband"], "unknown --oracle 'hyperband'"),
        (["--objective", "swa"], "unknown --objective 'swa'"),
        (["--ema-decays"], "--objective ema needs --ema-decays"),
        (["--lrs", "0.1", "0.1"], "--lrs has duplicates"),
        (["--max-trials", "0"], "--max-trials must be >= 1"),
        (["--batch-size", "64", "--batch-sizes", "64", "128"], "give either --batch-size or --batch-sizes"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_loading_data(flags, message, tmp_path, monkeypatch, capsys):
    def never(config):
        raise AssertionError("data loaded before the input was checked")

    monkeypatch.setattr(loading, "load_arrays", never)
    monkeypatch.setattr(loading, "check_data_available", never)
    monkeypatch.setattr(availability, "check", never)
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--model", "resnet20", "--out", str(tmp_path / "t")] + flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert message in error


def test_resuming_with_other_settings_exits_2(searched, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_arrays", lambda config: pytest.fail("data loaded"))
    argv = TRAIN_FLAGS[:5] + ["3"] + TRAIN_FLAGS[6:] + GRID + ["--out", searched[0]]
    with pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert exit_info.value.code == 2
    assert "differs in: epochs, warmup_epochs); pass --overwrite" in capsys.readouterr().err


def test_an_older_search_resumes_under_out_and_tuner_dir(searched, tmp_path):
    from app import tune_cli

    tuning_file = os.path.join(searched[0], tune_cli.TUNING_FILE)
    saved = read_json(tuning_file)
    argv = TRAIN_FLAGS + GRID
    for flag in ("--out", "--tuner-dir"):
        config = tune_cli.parse_config(argv + [flag, searched[0]])
        assert config.out == searched[0]
        tune_cli.check_out(config)  # the same search: resumable
    # A tuning.json written before the flag was renamed (its key "tuner_dir").
    old = dict(saved)
    old["tuner_dir"] = old.pop("out")
    (tmp_path / "old").mkdir()
    with open(tmp_path / "old" / tune_cli.TUNING_FILE, "w") as handle:
        json.dump(old, handle)
    tune_cli.check_out(tune_cli.parse_config(argv + ["--out", str(tmp_path / "old")]))


def test_a_search_saved_before_a_setting_existed_resumes_at_its_default(searched, tmp_path):
    from app import tune_cli

    saved = read_json(os.path.join(searched[0], tune_cli.TUNING_FILE))
    del saved["train"]["swa_include_start"]  # written before the setting existed
    (tmp_path / "older").mkdir()
    with open(tmp_path / "older" / tune_cli.TUNING_FILE, "w") as handle:
        json.dump(saved, handle)
    out = ["--out", str(tmp_path / "older")]
    tune_cli.check_out(tune_cli.parse_config(TRAIN_FLAGS + GRID + out))  # the default: resumable
    swa = ["--swa", "--no-swa-include-start"]
    with pytest.raises(UsageError, match=r"differs in: .*swa_include_start"):
        tune_cli.check_out(tune_cli.parse_config(TRAIN_FLAGS + GRID + out + swa))


def test_trials_too_short_for_any_ema_update_are_refused(tmp_path, capsys):
    # 64 synthetic images, batch 16: 4 steps x 2 epochs = 8 steps < --ema-every 9.
    argv = TRAIN_FLAGS[:-5] + ["--ema-every", "9", "--ema-decays", "0.9", "0.99",
                               "--lrs", "0.1", "--out", str(tmp_path / "t")]
    with synthetic_data(), pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "each trial runs 8 optimizer steps, fewer than --ema-every-steps 9" in error
    assert not (tmp_path / "t").exists()


def test_a_best_ema_below_its_trials_sgd_gets_a_note(tmp_path):
    """issue 31: the search says when the winning EMA scores below SGD in its own trial (history.csv)."""
    (tmp_path / "history.csv").write_text("epoch,val_accuracy\n1,0.20\n2,0.258\n", encoding="utf-8")
    best = {"objective_name": "ema", "objective": 0.234}
    assert tune.ema_below_sgd_note(best, str(tmp_path)) == (
        "note: the chosen trial's best EMA (0.2340) scores below its SGD model (0.2580 at epoch 2): the learning "
        "rates were ranked by averages that had not caught up with training; lengthen the trials (--epochs, "
        "--limit-train) or rank by SGD (--objective sgd)")
    assert tune.ema_below_sgd_note({**best, "objective": 0.258}, str(tmp_path)) is None
    assert tune.ema_below_sgd_note({**best, "objective_name": "sgd"}, str(tmp_path)) is None


def test_help_leaves_out_the_flags_app_tune_refuses(capsys):
    with pytest.raises(SystemExit) as exited:
        tune.main(["--help"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    usage = printed.split("\n\n")[0]
    for flag in ("--lr ", "--seeds", "--full-train"):
        assert flag not in usage and f"  {flag.strip()} " not in printed
    assert "--lrs" in usage and "--lr-from" in printed and "--epochs" in usage
