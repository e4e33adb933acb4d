"""Checkpoints of a whole run, written atomically, for an exact resume.

Keras's `BackupAndRestore` restarts the interrupted epoch and saves no
callback state, so the averages would be lost. A checkpoint here holds
everything the rest of the run depends on:

- the model's variables (weights, BatchNorm statistics, seed states),
- the optimizer's variables (iteration count, momentum buffers),
- the compiled metrics' accumulators (mid-epoch checkpoints),
- every averaging callback's `get_state()` (EMAs, counters, selections, SWA):
  a flat mapping of NumPy arrays (callbacks/state.py), given back to `set_state`,
- the position (epoch, step in epoch) and the history rows so far.

The data order needs no state: epoch `e` of the training stream is a
function of `(seed, e)` (data/pipeline.py), so a resumed run starts the stream at
the saved epoch and batch and sees each batch exactly once.

Files: `<run>/checkpoint/last.npz` and `previous.npz`. A save writes a
temporary file, fsyncs it, moves `last` to `previous`, then renames the
temporary file to `last`: a crash at any point leaves a readable checkpoint.

Several processes (JAX) each save their own copy (training/run_dir.py,
`process_path`) at the same steps; a kill can land between two processes'
saves, so they resume at the newest step that every one of them has.
"""

import json
import os
import threading
import zipfile
from typing import NamedTuple

import keras
import numpy as np

from training import distribution
from training.checkpoint_meta import DIRECTORY, LAST, PREVIOUS, read_meta  # noqa: F401  (names of this module's API)
from utils.errors import ConfigError
from utils.files import atomic_write

FORMAT_VERSION = 1
# Held while a save moves files: app/signals.py takes it before it reads the
# checkpoint a rerun will find and ends the process, so a save never finishes
# between that reading and the exit.
SAVING = threading.Lock()


# Flattening nested states (dicts, lists, arrays, scalars) into npz entries.


def _flatten(value, prefix, arrays):
    if isinstance(value, dict):
        return {"dict": {key: _flatten(item, f"{prefix}/{key}", arrays) for key, item in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(item, f"{prefix}/{i}", arrays) for i, item in enumerate(value)]}
    if isinstance(value, np.ndarray) or hasattr(value, "shape") and not isinstance(value, np.generic):
        arrays[prefix] = np.asarray(value)
        return {"array": prefix}
    if isinstance(value, np.generic):
        return {"scalar": value.item()}
    return {"scalar": value}


def _unflatten(skeleton, arrays):
    if "dict" in skeleton:
        return {key: _unflatten(item, arrays) for key, item in skeleton["dict"].items()}
    if "list" in skeleton:
        return [_unflatten(item, arrays) for item in skeleton["list"]]
    if "array" in skeleton:
        return arrays[skeleton["array"]]
    return skeleton["scalar"]


def _values(variables):
    return [np.array(keras.ops.convert_to_numpy(variable)) for variable in variables]


def metric_variables(model):
    return [variable for metric in model.metrics for variable in metric.variables]


def save(directory, model, states, meta):
    """Writes one checkpoint atomically (see the module docstring)."""
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    skeleton = _flatten(
        {
            "model": _values(model.weights),
            "optimizer": _values(model.optimizer.variables),
            "metrics": _values(metric_variables(model)),
            "states": states,
        },
        "run",
        arrays,
    )
    header = {"format": FORMAT_VERSION, "meta": meta, "skeleton": skeleton}
    arrays["header"] = np.array(json.dumps(header))
    with SAVING:
        atomic_write(os.path.join(directory, LAST), lambda temporary: np.savez(temporary, **arrays),
                     previous=os.path.join(directory, PREVIOUS))


def read(path):
    """`(meta, contents)` of one checkpoint file (raises on a bad file)."""
    with np.load(path, allow_pickle=False) as contents:
        arrays = {key: contents[key] for key in contents.files}
    header = json.loads(str(arrays.pop("header")))
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {header.get('format')}")
    return header["meta"], _unflatten(header["skeleton"], arrays)


class Loaded(NamedTuple):
    """A checkpoint read back: its `meta` and `contents`, the file, and the newer files that were unreadable."""

    meta: dict
    contents: dict
    path: str
    unreadable: list  # ["last.npz: BadZipFile"]: skipped for `path`


def load(directory):
    """Returns the newest readable checkpoint as `Loaded`, or None if none exists.

    Raises ConfigError when checkpoint files exist but none can be read.
    """
    candidates = [os.path.join(directory, name) for name in (LAST, PREVIOUS)]
    existing = [path for path in candidates if os.path.exists(path)]
    problems = []
    if distribution.process_count() > 1:
        existing, problems = _held_by_every_process(directory, candidates, existing)
    if not existing:
        return None
    for path in existing:
        try:
            return Loaded(*read(path), path, problems)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            problems.append(f"{os.path.basename(path)}: {type(error).__name__}")
    raise ConfigError(
        f"the checkpoint in {directory} is truncated or not ours ({'; '.join(problems)}); "
        "delete that folder to start the run over, or choose another `out`"
    )


def resume_position(meta, steps_per_epoch):
    """`(epoch, step)`, both counted from 1: where a run resumed from this checkpoint goes on."""
    done_in_epoch = meta["global_step"] - meta["epoch"] * steps_per_epoch
    return meta["epoch"] + 1, done_in_epoch + 1


def report_fallback(loaded, steps_per_epoch, report):
    """Reports `checkpoint_fallback` (path, unreadable, epoch, step) when a newer checkpoint file was
    unreadable and an older one is resumed (app/train_report.py words it)."""
    if loaded.unreadable:
        epoch, step = resume_position(loaded.meta, steps_per_epoch)
        report("checkpoint_fallback", path=loaded.path, unreadable=loaded.unreadable, epoch=epoch, step=step)


def _held_by_every_process(directory, candidates, existing):
    """The checkpoints among `existing` whose step every process has saved too, and this process's
    unreadable ones (a collective: all call it)."""
    steps = [_step(path) if path in existing else -1 for path in candidates]
    unreadable = [f"{os.path.basename(path)}: unreadable" for path, step in zip(candidates, steps)
                  if path in existing and step < 0]
    common = common_steps(distribution.gather_from_processes(steps))
    if common is None:
        return existing, []  # none readable anywhere: `load` says so, as for one process
    if not common:
        raise ConfigError(f"the processes of this run hold checkpoints of no common step (this one: {directory}, "
                          f"steps {[step for step in steps if step >= 0]}); delete the checkpoint folders of the run "
                          "and of its process-<k>/ copies to start over, or choose another `out`")
    return [path for path, step in zip(candidates, steps) if step in common], unreadable


def common_steps(steps_per_process):
    """The steps saved by every process (-1: no file); None if no process saved any."""
    saved = [{step for step in steps if step >= 0} for steps in steps_per_process]
    if not any(saved):
        return None
    return set.intersection(*saved)


def _step(path):
    meta = read_meta(path)
    return -1 if meta is None else int(meta["global_step"])  # unreadable: as if absent


def restore(model, contents, stateful=None):
    """Assigns the saved model and optimizer variables (metrics: `RestoreMetrics`) and gives each callback
    of `stateful` ({name: callback}, as saved) its state."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    groups = (("model", model.weights), ("optimizer", model.optimizer.variables))
    _check_shapes(groups, contents)
    for name, variables in groups:
        for variable, value in zip(variables, contents[name]):
            variable.assign(value)
    for name, callback in (stateful or {}).items():
        callback.set_state(contents["states"][name])


def _check_shapes(groups, contents):
    for name, variables in groups:
        saved = contents[name]
        shapes = [tuple(variable.shape) for variable in variables]
        if [tuple(value.shape) for value in saved] != shapes:
            raise ConfigError(
                f"the checkpoint's {name} variables do not match this model; "
                "it belongs to another run: choose another `out`"
            )


def restore_metrics(model, contents):
    """Assigns the saved metric accumulators (they exist once `fit` has built the metrics)."""
    variables = metric_variables(model)
    _check_shapes((("metrics", variables),), contents)
    for variable, value in zip(variables, contents["metrics"]):
        variable.assign(value)


class RunCheckpoint(keras.callbacks.Callback):
    """Saves the run at every epoch end and every `every_steps` optimizer steps.

    Place it last: at an epoch end it must see the logger's history row and
    every averaging callback's state after that epoch.

    Args:
        directory: where `last.npz` / `previous.npz` go.
        stateful: dict name -> callback with `get_state()` (callbacks/state.py).
        logger: the `RunLogger` (its `rows` are saved).
        every_steps: also save mid-epoch every N optimizer steps (None: off).
        meta: extra JSON-able metadata stored in each checkpoint.
        wall_clock: None, or a callable returning the run's wall seconds so far (every
            attempt included), stored as `wall_seconds` so that a resumed run adds to it.
    """

    def __init__(self, directory, stateful, logger, every_steps=None, meta=None, wall_clock=None):
        super().__init__()
        self.directory = directory
        self.stateful = stateful
        self.logger = logger
        self.every_steps = every_steps
        self.meta = dict(meta or {})
        self.wall_clock = wall_clock
        self._epoch = 0
        self._saved_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._steps_in_epoch = (self.params or {}).get("steps")

    def on_train_batch_end(self, batch, logs=None):
        # The epoch's last step is saved by on_epoch_end, after its evaluation.
        if not self.every_steps or batch + 1 == self._steps_in_epoch:
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.every_steps == 0:
            self._save(epoch=self._epoch, global_step=step)

    def on_epoch_end(self, epoch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._save(epoch=epoch + 1, global_step=step)

    def save_within_epoch(self):
        """Saves at the step just done (not an epoch's last: see on_epoch_end), unless saved already."""
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step != self._saved_step:
            self._save(epoch=self._epoch, global_step=step)

    def _save(self, epoch, global_step):
        states = {name: callback.get_state() for name, callback in self.stateful.items()}
        meta = dict(self.meta, epoch=epoch, global_step=global_step, rows=self.logger.rows)
        if self.wall_clock is not None:
            meta["wall_seconds"] = round(self.wall_clock(), 1)
        save(self.directory, self.model, states, meta)
        self._saved_step = global_step


class HookFilter(keras.callbacks.Callback):
    """Forwards every hook to `callback` except, optionally, train begin/end.

    A run resumed mid-epoch is two `fit` calls: the rest of the interrupted
    epoch, then the remaining epochs. To the wrapped callbacks they must look
    like one: the first call skips `on_train_end`, the second `on_train_begin`.
    """

    def __init__(self, callback, train_begin=True, train_end=True):
        super().__init__()
        self.callback = callback
        self.train_begin = train_begin
        self.train_end = train_end

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def on_train_begin(self, logs=None):
        if self.train_begin:
            self.callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        if self.train_end:
            self.callback.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.callback.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self.callback.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.callback.on_train_batch_end(batch, logs)

    def on_test_begin(self, logs=None):
        self.callback.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.callback.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self.callback.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self.callback.on_test_batch_end(batch, logs)


class RestoreMetrics(keras.callbacks.Callback):
    """At the first epoch begin (after fit reset them), puts back saved metric accumulators."""

    def __init__(self, contents):
        super().__init__()
        self.contents = contents

    def on_epoch_begin(self, epoch, logs=None):
        if self.contents is not None:
            restore_metrics(self.model, self.contents)
            self.contents = None
