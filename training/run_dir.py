"""The run directory contract: file names, weight-file names, readers and writers.

See docs/run-directory.md for the layout. Every package that reads or writes
a run directory takes its names from here. `check` runs before any expensive
work and never writes; `create` writes `config.json` and `command.txt`.
"""

import contextlib
import csv
import datetime
import fcntl
import dataclasses
import json
import os
import re
import shlex
import socket
import tempfile

from callbacks.ema_selection import weights_file_name
from training.config import RENAMED_FIELDS, TrainConfig, with_added_fields
from utils.errors import ConfigError, UsageError
from utils.files import atomic_write_text

CONFIG_FILE = "config.json"
COMMAND_FILE = "command.txt"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.csv"
WEIGHTS_DIR = "weights"
POWER_EMA_DIR = "power_ema"  # PowerFunctionEMA snapshots (--post-hoc-ema), read by app.posthoc
POSTHOC_DIR = "posthoc"  # what app.posthoc writes
EVALUATION_FILE = "evaluation.json"  # per run, by app.evaluate: Table 5 (shape: evaluation/report.py)
TRANSFER_FILE = "transfer.json"  # per run, by app.transfer: Table 4
CONSISTENCY_FILE = "consistency.json"  # per multi-seed directory, by app.consistency: Table 3
SWA_TUNING_DIR = "swa-tuning"  # by app.tune_swa: one SWA branch per learning rate (training/swa_tuning.py)
SWA_TUNING_FILE = "best_swa_lr.json"  # its choice, in SWA_TUNING_DIR, read by app.train --swa-lr-from
TEST_LOGITS_FILE = "test_logits.npz"  # per run, by app.evaluate: the Table 3 models' test logits
# One JSON line per start of app.train on the run: when, from which commit, where it resumed (`record_attempt`).
ATTEMPTS_FILE = "attempts.jsonl"
# Held (flock) by the process writing the run; the OS releases it when that process ends, however it ends.
LOCK_FILE = "run.lock"
# A run of several JAX processes: process k > 0 writes its own copy of the run in <run>/process-<k>/.
PROCESS_DIR = "process-{}"
_PROCESS_COPY = re.compile(r"process-[1-9][0-9]*")
# Weights: weights/<stem>.weights.h5 with the stems `final`, `swa` and `ema_stem(...)`.
WEIGHTS_SUFFIX = ".weights.h5"
FINAL_WEIGHTS = "final"
SWA_WEIGHTS = "swa"
SWA_BUDGET_WEIGHTS = "swa_budget"  # a branch past the budget: its average at the budget's last epoch
SGD_EARLY_WEIGHTS = "sgd_early"  # SGD at its validation-selected epoch (training/sgd_selection.py)
# summary.json's `selected_on` of the EMAs of a run with --ema-select final.
FINAL_EPOCH_SELECTION = "none: the final epoch (--ema-select final)"
_CHOSEN_BY_RUN = "validation (run {})"  # `selected_on` of epochs taken from a --stop-epochs-from run
BEST_MODEL_FILE = "best.keras"  # the best saved model on the validation split, whole (training/best_model.py)


def ema_stem(decay, criterion, bn_recomputed=False):
    """`ema_<decay>_{acc,loss}[_bn]`: a selected EMA's weights stem (`decay` a float or its key)."""
    return weights_file_name(float(decay), criterion, bn_recomputed)[: -len(WEIGHTS_SUFFIX)]


def ema_final_stem(decay):
    """`ema_<decay>_final`: the EMA of `decay` at the last epoch (training/final_ema.py)."""
    return f"ema_{float(decay):g}_final"


def selected_on_run(run):
    """summary.json's `selected_on` for epochs a `--stop-epochs-from` validation run chose."""
    return _CHOSEN_BY_RUN.format(run)


def run_of_selection(selected_on):
    """The `--stop-epochs-from` run named in a `selected_on` (`selected_on_run`'s), or None."""
    prefix, suffix = _CHOSEN_BY_RUN.split("{}")
    if selected_on and selected_on.startswith(prefix) and selected_on.endswith(suffix):
        return selected_on[len(prefix):-len(suffix)]
    return None


def describe_weights(stem):
    """A table label for a weights stem: 'EMA 0.998 (loss) + BN recomputed'."""
    if stem == FINAL_WEIGHTS:
        return "SGD (final)"
    if stem == SWA_WEIGHTS:
        return "SWA (BN recomputed)"
    if stem == SWA_BUDGET_WEIGHTS:
        return "SWA at the budget's end (BN recomputed)"
    if stem == SGD_EARLY_WEIGHTS:
        return "SGD (early-stopped, acc.)"  # on validation, or test for a --full-train run without --stop-epochs-from
    _, decay, criterion, *bn = stem.split("_")
    label = f"EMA {decay} ({ {'acc': 'acc.', 'loss': 'loss', 'final': 'last epoch'}[criterion]})"
    return label + (" + BN recomputed" if bn else "")


def weights_path(run_path, stem):
    return os.path.join(run_path, WEIGHTS_DIR, stem + WEIGHTS_SUFFIX)


def read_history(path, missing=None):
    """history.csv as a list of dicts of floats; empty cells (e.g. SWA before its start) become `missing`.

    Raises:
        UsageError: the file is unreadable or holds a non-numeric cell.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [
                {key: (float(value) if value not in ("", None) else missing) for key, value in row.items()}
                for row in csv.DictReader(handle)
            ]
    except OSError:
        raise UsageError(f"{path} is missing or unreadable; pass run directories written by `python -m app.train`")
    except ValueError:
        raise UsageError(f"{path} holds a non-numeric cell; rewrite it or leave this run out")


def process_path(run_path, process_id):
    """Where process `process_id` of a run of several processes writes that run.

    Keras's multi-worker convention (`distributed_file_utils.write_dirpath`):
    the chief (process 0) writes the run directory itself, exactly as a
    one-process run does; every other process writes the same files (all
    hold the same replicated state) in its own directory inside it, where two
    processes never collide, also on a shared file system, and from which it
    resumes on its own. Readers of runs look for `config.json` and `seed-<k>/`
    only, so they never take a copy for a run.
    """
    return run_path if process_id == 0 else os.path.join(run_path, PROCESS_DIR.format(process_id))


def default_path(config):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.dataset}-{config.model}-{stamp}")


def _comparable(config_dict):
    # `out` names the place, not the run; `data_dir` may move between machines;
    # the evaluation batch changes no weight, only the order of float sums.
    return {
        RENAMED_FIELDS.get(key, key): value  # a config.json written before a field was renamed
        for key, value in with_added_fields(config_dict).items()
        if key not in ("out", "data_dir", "cifar_n_dir", "evaluation_split", "checkpoint_every_steps",
                       "provenance", "keep_checkpoint", "eval_batch_size",
                       # the batch of runs `--seeds` started; the run's own seed is `seed`
                       "seeds")
    }


def field_defaults():
    """Every config field's default as config.json holds it: what a run saved before the field existed
    had (runs from before data parallelism ran on one device)."""
    return dict(_jsonable(TrainConfig().to_dict()), devices=1)


def check(path, config, finished_ok=False):
    """Raises ConfigError if `path` cannot hold this run. Writes nothing.

    Returns True if `path` holds this run finished, which is an error unless
    `finished_ok` (a `--seeds` batch rerun after some of its seeds finished).
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"`out` {path} is a file; choose a directory path")
    # Other processes' copies (`process_path`) may be there before the chief writes anything.
    # So may the lock file of a start that ended before it wrote anything.
    if not os.path.isdir(path) or all(_PROCESS_COPY.fullmatch(name) or name == LOCK_FILE
                                      for name in os.listdir(path)):
        target = os.path.abspath(path)
        while not os.path.exists(target):
            target = os.path.dirname(target)
        _check_writable(path, target)
        return False
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise ConfigError(f"`out` {path} already exists and is not a run directory; choose an empty or new `out`")
    try:
        with open(config_path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        raise ConfigError(f"`out` {path} holds an unreadable {CONFIG_FILE}; choose another `out`")
    ours = _comparable(TrainConfig.to_dict(config))
    theirs = _comparable(saved)
    if config.devices is None:
        ours.pop("devices")  # not resolved yet (app.train checks again once it is)
    defaults = field_defaults()
    differing = sorted(key for key in ours if theirs.get(key, defaults[key]) != _jsonable(ours[key]))
    if differing:
        raise ConfigError(f"`out` {path} holds a different run (differs in: {', '.join(differing)}); "
                          "choose another `out`")
    if os.path.exists(os.path.join(path, SUMMARY_FILE)):
        if finished_ok:
            return True
        raise ConfigError(f"`out` {path} holds a finished run with this config; choose another `out`")
    _check_writable(path, path)
    return False


@contextlib.contextmanager
def locked(paths):
    """Holds the lock of each run directory in `paths` (creating them) while the block runs.

    Raises ConfigError if another process holds one: two processes writing one
    run would each resume it and interleave their checkpoints and history.
    `fcntl.flock` locks belong to the open file, so the OS releases them when
    the process ends in any way (SIGKILL, a crash): a dead run never blocks its
    rerun. The file stays (removing it would race with a new holder) and names
    the last holder. Process k of a run of several processes locks its own
    copy, `process_path(run, k)`.
    """
    with contextlib.ExitStack() as held:
        for path in paths:
            held.enter_context(_lock(path))
        yield


def check_unlocked(paths):
    """Raises `locked`'s ConfigError now if another process holds one of `paths`, without creating or
    keeping anything: app.train asks before its heavy imports, so that this error, like every other bad
    input, comes in a fraction of a second (`locked` still decides, after them)."""
    for path in paths:
        lock_path = os.path.join(path, LOCK_FILE)
        if not os.path.exists(lock_path):
            continue
        with open(lock_path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _held_error(path, handle) from None
            fcntl.flock(handle, fcntl.LOCK_UN)


def _held_error(path, handle):
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    return ConfigError(f"`out` {path} is being written by {holder} (it holds {LOCK_FILE}); "
                       "wait for it to end, or choose another `out`")


@contextlib.contextmanager
def _lock(path):
    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    with open(lock_path, "a+", encoding="utf-8") as handle:  # not truncated before it is ours
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _held_error(path, handle) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"app.train pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            if created and os.listdir(path) == [LOCK_FILE]:
                # A start that failed before writing anything (e.g. a limit above the
                # split, found while loading the data) leaves no directory behind.
                try:
                    os.remove(lock_path)
                    os.rmdir(path)
                except OSError:
                    pass  # another start took the path meanwhile: it is theirs


def _check_writable(path, directory):
    """Probes `directory` by creating and removing a temporary folder in it.

    A real attempt rather than `os.access`: root passes every permission test,
    yet read-only mounts and pseudo file systems still refuse.
    """
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=directory))
    except OSError as error:
        raise ConfigError(f"`out` {path}: cannot write in {directory} ({error.strerror}); choose another `out`")


def _jsonable(value):
    return json.loads(json.dumps(value))


def create(path, config, argv, extra=None):
    """Creates the directory and writes config.json (with the code's provenance, also for a tuning
    trial) and command.txt."""
    os.makedirs(os.path.join(path, WEIGHTS_DIR), exist_ok=True)
    values = config.to_dict()
    values.update(extra or {})
    if "provenance" not in values:
        from training import provenance  # imports Keras: only once a run is being created

        values["provenance"] = provenance.collect()
    atomic_write_text(
        os.path.join(path, CONFIG_FILE), json.dumps(values, indent=2, sort_keys=True) + "\n"
    )
    command = "python -m app.train " + shlex.join(argv)
    atomic_write_text(os.path.join(path, COMMAND_FILE), command + "\n")


def record_attempt(path, provenance, resumed_at=None):
    """Adds this start of the run to attempts.jsonl: a fresh start begins the file, a resume (`resumed_at`:
    {"epoch", "step"}) appends to it, so a run resumed under other code says so. A run made before the file
    existed gets, at its first resume, a line for its first attempt from config.json, marked as such."""
    file = os.path.join(path, ATTEMPTS_FILE)
    lines = []
    if resumed_at is not None and not os.path.exists(file):
        try:
            with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as handle:
                first = json.load(handle).get("provenance") or {}
        except (OSError, ValueError):
            first = {}
        lines.append({"started": None, "git_commit": first.get("git_commit"), "git_dirty": first.get("git_dirty"),
                      "resumed_at": None, "note": "the first attempt, from config.json; resumes before this file "
                                                  "existed are not listed"})
    lines.append({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "git_commit": provenance.get("git_commit"), "git_dirty": provenance.get("git_dirty"),
                  "resumed_at": resumed_at})
    with open(file, "w" if resumed_at is None else "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)


def read_attempts(path):
    """The run's attempts.jsonl as a list of dicts; None for a run that has none (made before it existed)."""
    try:
        with open(os.path.join(path, ATTEMPTS_FILE), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return None


def read_summary(path):
    with open(os.path.join(path, SUMMARY_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def write_summary(path, summary):
    atomic_write_text(
        os.path.join(path, SUMMARY_FILE), json.dumps(rounded(summary), indent=2, sort_keys=True) + "\n"
    )


def rounded(value):
    """Floats, also inside dicts and lists, to 7 significant digits: no float32
    noise such as 0.03333333507180214 (float32 holds about 7.2 digits)."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


def load_config(path, data_dir=None):
    """The run's `TrainConfig`, with `data_dir` replaced when given (data may move between machines)."""
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as handle:
        config = TrainConfig.from_dict(json.load(handle))
    return config if data_dir is None else dataclasses.replace(config, data_dir=data_dir)
