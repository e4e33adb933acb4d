"""`python -m app.train`: SGD + several EMAs (and SWA) in one run.

Trains a paper model with PyTorch-style Nesterov SGD and coupled L2 weight
decay (docs/fidelity.md), keeps every requested average beside it, evaluates all
of them on the validation split after each epoch, and writes a run directory
(docs/run-directory.md): config.json, command.txt, history.csv, summary.json,
tensorboard/, weights/.

Example:

    python -m app.train --dataset cifar10 --model resnet20 \
        --data-dir ../shared/data/tfds --limit-train 4000 --epochs 4
"""

import os
import sys

if __name__ == "__main__":
    from app import signals

    signals.install()  # first: a Ctrl-C during the imports below is one line too

import dataclasses  # noqa: E402
import importlib  # noqa: E402

from app import cli, signals, train_report  # noqa: E402
from utils import quiet  # noqa: E402
from data import availability  # noqa: E402
from training import run_dir as run_directory  # noqa: E402
from app.errors import UsageError, entry_point  # noqa: E402


@entry_point
def main(argv):
    """Runs the command line; returns the summary dict (exit status 2 on bad input)."""
    runs = prepare(argv)
    importlib.import_module("training.trainer")  # the rest of the heavy imports, before a --out is locked (made)
    if len(runs) == 1 and not runs[0][0].seeds:
        config, path = runs[0]
        # One writer per run directory: a second command with the same --out is refused here.
        with run_directory.locked([path]):
            return train(config, path, argv)
    # --seeds: independent runs into OUT/seed-<k>/, one after the other; a rerun
    # keeps the seeds that finished and resumes the others.
    summaries = {config.seed: _finished_summary(path) for config, path in runs if _finished(path)}
    to_train = [(config, path) for config, path in runs if config.seed not in summaries]
    if summaries:
        print(f"seeds {', '.join(map(str, summaries))} finished already (kept); "
              f"training seeds {', '.join(str(config.seed) for config, _ in to_train)}", flush=True)
    with run_directory.locked(path for _, path in to_train):
        for config, path in to_train:
            summaries[config.seed] = train(config, path, argv)
    return {config.seed: summaries[config.seed] for config, _ in runs}


def train(config, path, argv):
    """One run, its header, notes and summary table printed (app/train_report.py); exit status 1 if it diverges."""
    from callbacks.divergence import TrainingDiverged
    from training import trainer

    try:
        return trainer.train(config, load_data(config), path, argv, report=train_report.report)
    except TrainingDiverged as error:
        print(f"error: {error}; lower --lr (was {config.lr})", file=sys.stderr)
        raise SystemExit(1)


def exit_fast_on_interrupt(main_function):
    """Runs the command line; after Ctrl-C or SIGTERM's stop exits at once (status 130 or 143).

    Every file a run writes is written atomically, so skipping the
    interpreter's teardown (tf.data's threads can hold it for many seconds)
    loses nothing. (Under app/signals.py a Ctrl-C ends the process before it
    gets here; SIGTERM's checkpointed stop comes here.)
    """
    try:
        main_function()
    except SystemExit as exit:
        if exit.code in (signals.INTERRUPTED, signals.TERMINATED):
            distribution = sys.modules.get("training.distribution")  # imported once training began
            if exit.code == signals.TERMINATED and distribution is not None:
                # SIGTERM's agreed stop: every process has saved its checkpoint; they leave together.
                distribution.leave_processes()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit.code)
        raise


def prepare(argv):
    """Everything that can fail because of the user, before any expensive work.

    Returns `[(config, run_path)]`: one run, or one per `--seeds` value.
    """
    config = cli.parse_config(argv)
    path = config.out or run_directory.default_path(config)
    if config.seeds:
        runs = [
            (dataclasses.replace(config, seed=seed, out=os.path.join(path, f"seed-{seed}")),
             os.path.join(path, f"seed-{seed}"))
            for seed in config.seeds
        ]
    else:
        runs = [(config, path)]
    finished = [run_directory.check(run_path, run_config, finished_ok=bool(config.seeds))
                for run_config, run_path in runs]
    if all(finished):
        raise UsageError(f"--out {path} holds every seed's run finished with this config; choose another --out")
    availability.check(config)  # without TensorFlow, where it can tell
    # Another process writing a --out that would be trained: refused before TensorFlow, like any bad input
    # (`locked` decides after the imports; a malformed process id is named there too).
    process_id = os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "").strip()  # training.distribution.ID_VARIABLE
    if process_id.isdigit() or not process_id:
        run_directory.check_unlocked(run_directory.process_path(run_path, int(process_id or 0))
                                     for (_, run_path), done in zip(runs, finished) if not done)
    # Importing TensorFlow and reading the data take seconds (tens on a loaded machine): say so first.
    print(f"starting: importing TensorFlow, then reading {config.dataset} ...", flush=True)
    quiet.import_tensorflow()  # the arguments are fine: now the heavy imports
    from data import loading
    from training import distribution

    settings = distribution.process_settings()  # the KERAS_DISTRIBUTION_* variables: one-line errors
    if settings and settings[1] > 1:
        check_several_processes(config, settings[1])
    loading.check_data_available(config)  # asking TFDS itself
    distribution.initialize_processes()  # joins the other processes, before JAX is asked for devices
    devices = distribution.resolve(config.devices)
    process_id = settings[2] if settings else 0  # process k > 0 writes a copy (run_dir.process_path)
    runs = [(dataclasses.replace(run_config, devices=devices), run_directory.process_path(run_path, process_id))
            for run_config, run_path in runs]
    for run_config, run_path in runs:
        run_directory.check(run_path, run_config, finished_ok=bool(config.seeds))  # now with the device count
    return runs


def _finished(path):
    return os.path.exists(os.path.join(path, run_directory.SUMMARY_FILE))


def _finished_summary(path):
    import json

    with open(os.path.join(path, run_directory.SUMMARY_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def check_several_processes(config, num_processes):
    """What a run over several processes (KERAS_DISTRIBUTION_*) cannot do, as one-line errors."""
    if config.out is None:
        # Each process would stamp its own default path.
        raise UsageError(f"a run of {num_processes} processes needs --out, the same on every process")
    if config.model_parallel:
        # A checkpoint gathers every average into this process (callbacks/state.py): one host only.
        raise UsageError(f"--model-parallel runs in one process (its checkpoints gather the averages into it); "
                         f"train it without KERAS_DISTRIBUTION_* ({num_processes} processes)")
    if config.track_stability:
        raise UsageError(f"--track-stability cannot run over {num_processes} processes (Keras's predict does not "
                         "gather the other processes' predictions); leave it out, or train in one process")


def load_data(config):
    from data import loading
    from training import distribution

    data = loading.load_data(config)
    distribution.check_batches(config, data)
    return data


if __name__ == "__main__":
    exit_fast_on_interrupt(main)
