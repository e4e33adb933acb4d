"""`RunLogger`: one row per epoch into history.csv and TensorBoard, with an ETA.

It must sit AFTER the averaging callbacks in the callback list: they add their
`ema_*` / `swa_*` metrics to the epoch logs in `on_epoch_end`, and this logger
writes whatever the logs hold when its turn comes.
"""

import csv
import io
import os
import time

import keras

from app import tensorboard_logging
from app.files import atomic_write_text  # noqa: F401  (re-exported)

LEADING_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
)
_RENAMED = {"loss": "train_loss", "accuracy": "train_accuracy"}


def rows_to_csv(rows):
    columns = list(LEADING_COLUMNS)
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_history(path):
    """Reads a history.csv back as a list of dicts of floats (empty cells: None)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {key: (float(value) if value != "" else None) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


class RunLogger(keras.callbacks.Callback):
    """Writes history.csv, TensorBoard scalars and an epoch line with an ETA.

    Args:
        run_dir: the run directory.
        schedule: the learning-rate schedule, to log the rate of each epoch.
        epochs: total epochs, for the ETA.
        rows: history rows of earlier epochs (a resumed run). Defaults to None.
        verbose: print one line per epoch. Defaults to True.
    """

    def __init__(self, run_dir, schedule, epochs, rows=None, verbose=True):
        super().__init__()
        self.run_dir = run_dir
        self.schedule = schedule
        self.epochs = epochs
        self.rows = list(rows or [])
        self.verbose = verbose
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tensorboard_logging.ScalarWriter(
            os.path.join(self.run_dir, "tensorboard")
        )
        if not self.rows:
            self._writer.summary(tensorboard_logging.layout_summary())
        else:
            # Resumed: drop any row written after the checkpoint, in both outputs.
            atomic_write_text(os.path.join(self.run_dir, "history.csv"), rows_to_csv(self.rows))
            self._writer.session_start(step=len(self.rows) + 1)
        self._start = time.time()
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        row = self._row(epoch, logs or {})
        self.rows.append(row)
        atomic_write_text(os.path.join(self.run_dir, "history.csv"), rows_to_csv(self.rows))
        scalars = {
            tensorboard_logging.tag_for(key): value
            for key, value in (logs or {}).items()
            if _is_number(value)
        }
        scalars["learning_rate"] = row["lr"]
        self._writer.scalars(scalars, step=row["epoch"])
        if self.verbose:
            # A line of its own: Keras's progress bar has not ended its line yet.
            print("\n" + self._epoch_line(epoch, row), flush=True)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _row(self, epoch, logs):
        steps_done = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        # The rate used by the epoch's last step.
        lr = float(keras.ops.convert_to_numpy(self.schedule(max(steps_done - 1, 0))))
        row = {"epoch": epoch + 1, "lr": lr}
        for key, value in logs.items():
            if _is_number(value):
                row[_RENAMED.get(key, key)] = float(value)
        return row

    def _epoch_line(self, epoch, row):
        done = epoch + 1 - self._first_epoch
        elapsed = time.time() - self._start
        remaining = elapsed / done * (self.epochs - epoch - 1)
        parts = [f"epoch {epoch + 1}/{self.epochs}", f"lr {row['lr']:.4g}"]
        for key in ("train_accuracy", "val_accuracy", "ema_best_val_accuracy", "swa_val_accuracy"):
            if key in row:
                parts.append(f"{key} {row[key]:.4f}")
        parts.append(f"ETA {_duration(remaining)}")
        return " | ".join(parts)


def _is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
