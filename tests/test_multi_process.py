"""Two JAX processes on 127.0.0.1 train one run with the same weights and averages as one process.

Each process (tests/multi_process.py) has one CPU device, so every gradient
all-reduce crosses processes (gloo, JAX's CPU collectives); it joins through
the KERAS_DISTRIBUTION_* variables that `training.distribution` reads, as a
cluster job would set them. The one-process reference is the same script
without them: for the toy fit one process on one device; for `app.train`
(ResNet-20 on CIFAR-10, BatchNorm recomputed for the EMAs) one process on 2
CPU devices, since 2 processes x 1 device is 2-device data parallelism. The
chief's run directory must hold the reference's files with the same arrays
(measured here: bit for bit), and process 1's copy in `process-1/` the
chief's, bit for bit. The processes are started here with KERAS_BACKEND=jax
whatever this test process runs on. If this JAX build cannot gather across
processes on CPU, the processes say why (exit status 75) and the test skips
with that reason.

Also here: the one-line errors of what several processes cannot do (batches
that do not split over the devices, --track-stability, no --out), the run
directory's process copies, and the choice of the step they resume at.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time
import types

import h5py
import keras
import numpy as np
import pytest

from app import cli, train
from app.errors import flag_words
from tests import multi_process
from training import checkpoint, distribution
from training import run_dir as run_directory
from training.config import TrainConfig
from utils.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfds")
PROCESSES = 2
TIMEOUT_SECONDS = 300


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(**variables):
    env = {key: value for key, value in os.environ.items()
           if key not in distribution.PROCESS_VARIABLES and key != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               **variables)
    return env


def _run_all(runs, tmp_path):
    """Runs `tests.multi_process` with each `(arguments, environment)`, all at once; returns [(status, output)].

    None stay running.
    """
    running = []
    try:
        for i, (arguments, env) in enumerate(runs):
            log = open(tmp_path / f"{i}.log", "w+")
            command = [sys.executable, "-m", "tests.multi_process", *arguments]
            running.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log), log))
        deadline = time.monotonic() + TIMEOUT_SECONDS
        results = []
        for process, log in running:
            try:
                status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = "timed out"
            log.seek(0)
            results.append((status, log.read()))
        return results
    finally:
        for process, log in running:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def _process_environments():
    address = f"127.0.0.1:{_free_port()}"
    return [_environment(KERAS_DISTRIBUTION_JOB_ADDRESSES=address, KERAS_DISTRIBUTION_NUM_PROCESSES=str(PROCESSES),
                         KERAS_DISTRIBUTION_PROCESS_ID=str(index))
            for index in range(PROCESSES)]


def _check_finished(results):
    """Skips if the processes could not gather across processes; fails unless every run exited 0."""
    reasons = [line for status, log in results if status == multi_process.CANNOT
               for line in log.splitlines() if line.startswith("cannot: ")]
    if reasons:
        pytest.skip(f"this JAX build cannot run cross-process collectives on CPU: {reasons[0][len('cannot: '):]}")
    for i, (status, log) in enumerate(results):
        assert status == 0, f"run {i}: {status}\n{log[-3000:]}"


def _arrays(path):
    if str(path).endswith(".h5"):
        found = {}
        with h5py.File(path, "r") as contents:
            contents.visititems(lambda name, item: found.__setitem__(name, item[()])
                                if isinstance(item, h5py.Dataset) else None)
        return found
    with np.load(path) as contents:
        return {key: contents[key] for key in contents.files}


def test_two_processes_train_the_run_of_one(tmp_path):
    environments = [_environment()] + _process_environments()
    _check_finished(_run_all([(["toy", str(tmp_path / f"run{i}")], env) for i, env in enumerate(environments)],
                             tmp_path))

    reference = _arrays(tmp_path / "run0.0.npz")
    runs = [_arrays(tmp_path / f"run{index + 1}.{index}.npz") for index in range(PROCESSES)]
    assert (int(reference.pop("processes")), int(reference.pop("devices"))) == (1, 1)
    for run in runs:
        assert (int(run.pop("processes")), int(run.pop("devices"))) == (PROCESSES, PROCESSES)
        assert sorted(run) == sorted(reference)
    assert any(key.startswith("ema/average/") for key in reference)
    assert any(key.startswith("swa/") for key in reference)
    assert any(key.startswith("ema/selected/") for key in reference)
    for key, expected in reference.items():
        # Every process holds the whole replicated result, bit for bit.
        for run in runs[1:]:
            np.testing.assert_array_equal(run[key], runs[0][key], err_msg=key)
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(runs[0][key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(runs[0][key], expected, err_msg=key)


TRAIN = [
    "--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR, "--limit-train", "128",
    "--limit-validation", "64", "--batch-size", "32", "--eval-batch-size", "32", "--epochs", "2", "--lr", "0.0001",
    "--ema-decays", "0.9", "0.99", "--ema-every-steps", "2", "--ema-warmup", "none", "--deterministic",
    "--keep-checkpoint",
]
# What may differ between two runs of one command: where, when, how fast, on which devices.
UNCOMPARED = {"out", "provenance", "timing", "wall_time_seconds", "epoch_seconds", "train_images_per_second",
              "evaluation_seconds"}


def _files(run):
    """The run directory's files (its process-<k>/ copies left out); TensorBoard's named up to the host and time
    (a resumed run has one event file per session)."""
    found = set()
    for folder, folders, files in os.walk(run):
        folders[:] = [name for name in folders if not name.startswith("process-")]
        found |= {os.path.relpath(os.path.join(folder, name), run).split(".out.tfevents.")[0] for name in files}
    return sorted(found)


def _comparable(run, name):
    """A run's JSON or CSV file as {key: value}, without the keys in UNCOMPARED."""
    path = os.path.join(run, name)
    if name.endswith(".csv"):
        rows = list(csv.DictReader(open(path)))
        return {f"{row['epoch']}/{key}": float(value) if value else None for row in rows
                for key, value in row.items() if key not in UNCOMPARED}

    def flat(value, prefix):
        if isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            return {key: item for name, inner in items if name not in UNCOMPARED
                    for key, item in flat(inner, f"{prefix}/{name}").items()}
        return {prefix: value}

    return flat(json.load(open(path)), "")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """2 processes x 1 device is 2-device data parallelism: the reference is 1 process on 2 devices."""
    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
    root = tmp_path_factory.mktemp("reference")
    two_devices = dict(_environment(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    _check_finished(_run_all([(["train", *TRAIN, "--devices", "2", "--out", str(root / "run")], two_devices)],
                             root))
    return str(root / "run")


@pytest.mark.skipif(not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")),
                    reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
@pytest.mark.extended  # CI: test_two_processes_train_the_run_of_one (the same processes, a small model)
def test_two_processes_run_app_train_as_one_process_on_two_devices(reference, tmp_path):
    run = str(tmp_path / "run")
    _check_finished(_run_all([(["train", *TRAIN, "--out", run], env) for env in _process_environments()],
                             tmp_path))
    _assert_the_run_of_one_process(run, reference)


def _assert_the_run_of_one_process(run, reference, resumed=False):
    """The chief's run directory equals the one-process `reference`; process 1's copy equals the chief's.

    A `resumed` run's previous.npz is the checkpoint it stopped at, not the reference's: left out.
    """
    copy = os.path.join(run, "process-1")
    assert _files(run) == _files(reference) == _files(copy)
    assert set(os.listdir(run)) - set(os.listdir(reference)) == {"process-1"}
    weights = [name for name in _files(run) if name.endswith((".npz", ".h5"))
               and not (resumed and name == "checkpoint/previous.npz")]
    assert "checkpoint/last.npz" in weights and "weights/ema_0.99_acc_bn.weights.h5" in weights
    for name in weights:
        expected, chief, other = (_arrays(os.path.join(where, name)) for where in (reference, run, copy))
        header = json.loads(str(chief.pop("header"))) if "header" in chief else None
        if header is not None:
            assert header["meta"]["global_step"] == json.loads(str(expected.pop("header")))["meta"]["global_step"]
            other.pop("header")
        assert sorted(chief) == sorted(expected) == sorted(other), name
        for key, value in expected.items():
            # Every process holds the whole replicated state, bit for bit.
            np.testing.assert_array_equal(other[key], chief[key], err_msg=f"{name} {key}")
            if value.dtype.kind == "f":
                np.testing.assert_allclose(chief[key], value, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
            else:
                np.testing.assert_array_equal(chief[key], value, err_msg=f"{name} {key}")
    for name in ("history.csv", "summary.json", "config.json"):
        expected = _comparable(reference, name)
        assert _comparable(run, name) == _comparable(copy, name) == pytest.approx(expected, rel=1e-5, abs=1e-6), name
    provenance = [json.load(open(os.path.join(where, "config.json")))["provenance"] for where in (reference, run)]
    assert [p["processes"] for p in provenance] == [1, PROCESSES]
    assert [len(p["devices"]) for p in provenance] == [2, 2]


@pytest.mark.skipif(not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")),
                    reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
@pytest.mark.extended
def test_a_sigterm_stops_every_process_at_one_step_and_the_resumed_run_is_the_one_process_run(reference, tmp_path):
    """Issue 19: JAX's preemption service took SIGTERM over and the processes went on. Now process 0's
    SIGTERM after step 5 stops both at the step JAX's service agrees on, each with a checkpoint there."""
    run = str(tmp_path / "run")
    terminated = [dict(env, TERMINATE_AT_STEP="5") for env in _process_environments()]
    results = _run_all([(["train", *TRAIN, "--out", run], env) for env in terminated], tmp_path)
    _check_finished([(0 if status == 143 else status, log) for status, log in results])  # skips if it cannot
    assert [status for status, _ in results] == [143, 143], results[0][1][-3000:]
    steps = [checkpoint.read_meta(os.path.join(where, "checkpoint", "last.npz"))["global_step"]
             for where in (run, os.path.join(run, "process-1"))]
    # 4 steps per epoch: a step after 5 within epoch 2 (step 8 would wait for the epoch's evaluation).
    assert steps[0] == steps[1] and 6 <= steps[0] <= 8, steps
    for (_, log), where in zip(results, (run, os.path.join(run, "process-1"))):
        last = os.path.join(where, "checkpoint", "last.npz")
        line = (f"terminated at epoch 2 step {steps[0] - 3}; run the same command to resume from {last}, "
                f"saved after step {steps[0] - 4} of epoch 2 (nothing to redo)") if steps[0] < 8 else (
                f"terminated after epoch 2; run the same command to resume from {last}, saved at the end of "
                "epoch 2 (nothing to redo)")
        assert log.strip().splitlines()[-1] == line
    _check_finished(_run_all([(["train", *TRAIN, "--out", run], env) for env in _process_environments()],
                             tmp_path))
    for where in (run, os.path.join(run, "process-1")):
        assert checkpoint.read_meta(os.path.join(where, "checkpoint", "previous.npz"))["global_step"] == steps[0]
    _assert_the_run_of_one_process(run, reference, resumed=True)


def _variables(address="127.0.0.1:1234", count="2", index="0"):
    values = zip(distribution.PROCESS_VARIABLES, (address, count, index))
    return {name: value for name, value in values if value is not None}


def test_process_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert distribution.process_settings({}) is None
    assert distribution.initialize_processes({}) == 1
    assert distribution.process_settings(_variables()) == ("127.0.0.1:1234", 2, 0)
    # Keras's form: every process's address, the first the coordinator's.
    assert distribution.process_settings(_variables("10.0.0.1:1234,10.0.0.2:2345", index="1")) == (
        "10.0.0.1:1234", 2, 1)


@pytest.mark.parametrize(
    "variables, message",
    [
        (_variables(index=None), "KERAS_DISTRIBUTION_JOB_ADDRESSES and KERAS_DISTRIBUTION_NUM_PROCESSES set but "
         "not KERAS_DISTRIBUTION_PROCESS_ID; set all three for a multi-process run, or none"),
        (_variables(index="2"), "KERAS_DISTRIBUTION_PROCESS_ID=2 with KERAS_DISTRIBUTION_NUM_PROCESSES=2: "
         "use an id from 0 to 1"),
        (_variables(count="two"), "KERAS_DISTRIBUTION_NUM_PROCESSES='two': expected a whole number"),
        (_variables(count="0"), "KERAS_DISTRIBUTION_NUM_PROCESSES=0: expected the number of processes, at least 1"),
        (_variables("a:1,b:2,c:3"), "KERAS_DISTRIBUTION_JOB_ADDRESSES lists 3 addresses for "
         "KERAS_DISTRIBUTION_NUM_PROCESSES=2; give one per process, or only the coordinator's (process 0's) "
         "host:port"),
    ],
)
def test_bad_process_settings_are_one_line_errors(monkeypatch, variables, message):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UsageError) as error:
        distribution.initialize_processes(variables)
    assert str(error.value) == message


def test_several_processes_need_the_jax_backend(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(UsageError, match="^KERAS_DISTRIBUTION_JOB_ADDRESSES is set: several processes train on "
                       "the JAX backend only; set KERAS_BACKEND=jax \\(was tensorflow\\)$"):
        distribution.process_settings(_variables())


def test_several_processes_train_on_every_device(monkeypatch):
    monkeypatch.setattr(distribution, "process_count", lambda: 2)
    monkeypatch.setattr(distribution, "devices_for_data_parallelism", lambda: ["cpu:0", "cpu:2048"])
    assert distribution.resolve(None) == distribution.resolve(2) == 2
    with pytest.raises(UsageError) as error:
        distribution.resolve(1)
    assert flag_words(error.value) == ("--devices 1: the 2 processes of this run train on all their 2 devices; "
                                       "omit --devices or use 2")


def _batches_of(devices, batch_size=32, eval_batch_size=None, train=128, validation=64):
    config = types.SimpleNamespace(devices=devices, batch_size=batch_size, eval_batch_size=eval_batch_size)
    data = types.SimpleNamespace(num_train_examples=train, num_validation_examples=validation,
                                 evaluation_split="validation")
    return config, data


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(batch_size=30), "--batch-size 30 does not split across the 4 devices of this run; use a multiple of 4"),
        (dict(eval_batch_size=30), "--eval-batch-size 30 does not split across the 4 devices of this run; "
         "use a multiple of 4"),
        # 130 = 4 x 32 + 2: the last batch of 2 cannot split over 4 devices (nor 130 examples in batches that do).
        (dict(train=130), "the last batch of the training split (2 of its 130 examples) does not split across the "
         "4 devices of this run; use --limit-train 128 or a device count that divides 130"),
        (dict(validation=10_001, eval_batch_size=64), "the last batch of the validation split (17 of its 10,001 "
         "examples) does not split across the 4 devices of this run; use --limit-validation 10000 or a device "
         "count that divides 10,001"),
    ],
)
def test_batches_that_do_not_split_over_the_devices_are_one_line_errors(monkeypatch, arguments, message):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UsageError) as error:
        distribution.check_batches(*_batches_of(4, **arguments))
    assert flag_words(error.value) == message  # what app.train prints; the library names config fields


def test_batches_that_split_over_the_devices_pass(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    # Partial last batches are fine when they split: 136 = 4 x 32 + 8, 72 = 64 + 8.
    distribution.check_batches(*_batches_of(4, train=136, eval_batch_size=64, validation=72))
    distribution.check_batches(*_batches_of(1, batch_size=3, train=7, validation=5))
    # MirroredStrategy splits a batch unevenly itself.
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    distribution.check_batches(*_batches_of(4, train=130))


def test_other_processes_write_their_copy_inside_the_run_directory(tmp_path):
    run = str(tmp_path / "run")
    assert run_directory.process_path(run, 0) == run
    assert run_directory.process_path(run, 3) == os.path.join(run, "process-3")
    config = TrainConfig(out=run)
    # Another process may create its copy before the chief writes anything: the chief's run is still new.
    os.makedirs(os.path.join(run, "process-1", "checkpoint"))
    run_directory.check(run, config)
    run_directory.create(run, config, ["--out", run])
    run_directory.check(run, config)  # the chief resumes its own run
    os.remove(os.path.join(run, "config.json"))
    os.makedirs(os.path.join(run, "process-x"))
    with pytest.raises(UsageError, match="already exists and is not a run directory"):
        run_directory.check(run, config)


@pytest.mark.parametrize(
    "steps_per_process, common",
    [
        ([[-1, -1], [-1, -1]], None),  # nothing saved: a new run
        ([[8, 6], [8, 6]], {8, 6}),
        ([[8, 6], [6, 4]], {6}),  # killed between the two processes' saves at step 8
        ([[8, 6], [4, -1]], set()),  # nothing in common: an error, never a silent restart
        ([[2, -1], [-1, -1]], set()),
    ],
)
def test_processes_resume_at_a_step_all_of_them_saved(steps_per_process, common):
    assert checkpoint.common_steps(steps_per_process) == common


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "a run of 2 processes needs --out, the same on every process"),
        (["--out", "x", "--track-stability"], "--track-stability cannot run over 2 processes (Keras's predict does "
         "not gather the other processes' predictions); leave it out, or train in one process"),
    ],
)
def test_what_several_processes_cannot_do_is_a_one_line_error(flags, message):
    config = cli.parse_config(["--dataset", "cifar10", "--model", "resnet20", *flags])
    with pytest.raises(UsageError) as error:
        train.check_several_processes(config, 2)
    assert str(error.value) == message
    train.check_several_processes(cli.parse_config(["--dataset", "cifar10", "--out", "x"]), 2)
