"""`RunLogger`: one row per epoch into history.csv and TensorBoard, with an ETA.

It must sit AFTER the averaging callbacks in the callback list: they add their
`ema_*` / `swa_*` metrics to the epoch logs in `on_epoch_end`, and this logger
writes whatever the logs hold when its turn comes.
"""

import csv
import io
import os
import sys
import time

import keras

from training import tensorboard_logging
from utils.files import atomic_write_text  # noqa: F401  (re-exported)
from training.run_dir import rounded

LEADING_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
)
# Keras log names -> history.csv (and checkpoint row) names.
ROW_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}


# `EpochTimer.timings()`'s keys, in its order. Last in history.csv, whichever epoch first has them:
# a final run's EMA columns (--ema-evaluate selected) start later.
TRAILING_COLUMNS = ("epoch_seconds", "train_images_per_second", "evaluation_seconds")


def rows_to_csv(rows):
    columns = list(LEADING_COLUMNS)
    for row in rows:
        columns.extend(key for key in row if key not in columns and key not in TRAILING_COLUMNS)
    columns.extend(key for key in TRAILING_COLUMNS if any(key in row for row in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class RunLogger(keras.callbacks.Callback):
    """Writes history.csv, TensorBoard scalars and an epoch line with an ETA.

    Args:
        run_dir: the run directory.
        schedule: the learning-rate schedule, to log the rate of each epoch.
        epochs: total epochs, for the ETA.
        rows: history rows of earlier epochs (a resumed run). Defaults to None.
        verbose: print one line per epoch. Defaults to True.
        timer: an `EpochTimer` whose timings to log. Defaults to None.
        stability: add the stability charts to the TensorBoard layout. Defaults to False.
    """

    def __init__(self, run_dir, schedule, epochs, rows=None, verbose=True, timer=None, stability=False):
        super().__init__()
        self.stability = stability
        self.run_dir = run_dir
        self.schedule = schedule
        self.epochs = epochs
        self.rows = list(rows or [])
        self.verbose = verbose
        self.timer = timer
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tensorboard_logging.RunWriters(os.path.join(self.run_dir, "tensorboard"))
        if not self.rows:
            self._writer.writer("sgd").summary(tensorboard_logging.layout_summary(self.stability))
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
        logs = dict(logs or {})
        if self.timer is not None:
            logs.update(self.timer.timings())
        row = self._row(epoch, logs)
        self.rows.append(row)
        atomic_write_text(os.path.join(self.run_dir, "history.csv"), rows_to_csv(self.rows))
        scalars = {key: value for key, value in logs.items() if _is_number(value)}
        scalars["lr"] = row["lr"]
        self._writer.log(scalars, step=row["epoch"])
        if self.verbose:
            if self.timer is not None:
                self.timer.clear_status()
            print(self._epoch_line(epoch, row), flush=True)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _row(self, epoch, logs):
        steps_done = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        # The rate used by the epoch's last step.
        lr = float(keras.ops.convert_to_numpy(self.schedule(max(steps_done - 1, 0))))
        row = {"epoch": epoch + 1, "lr": rounded(lr)}
        for key, value in logs.items():
            if _is_number(value):
                row[ROW_NAMES.get(key, key)] = rounded(float(value))
        return row

    def _epoch_line(self, epoch, row):
        """One compact line: SGD, the best EMA and its decay, SWA, lr, time, ETA."""
        done = epoch + 1 - self._first_epoch
        elapsed = time.time() - self._start
        remaining = elapsed / done * (self.epochs - epoch - 1)
        parts = [f"epoch {epoch + 1}/{self.epochs}", f"lr {row['lr']:.4g}"]
        if "train_accuracy" in row:
            parts.append(f"train {100 * row['train_accuracy']:.2f}%")
        if "val_accuracy" in row:
            parts.append(f"SGD {100 * row['val_accuracy']:.2f}%")
        best = best_ema(row)
        if best is not None:  # not every decay evaluated (--ema-evaluate selected): no best over decays
            where = "" if "ema_best_val_accuracy" in row else ", at its selected epoch"
            parts.append(f"EMA {100 * best[1]:.2f}% ({best[0]}{where})")
        if row.get("swa_val_accuracy") is not None:
            parts.append(f"SWA {100 * row['swa_val_accuracy']:.2f}%")
        if "epoch_seconds" in row:
            parts.append(f"{row['epoch_seconds']:.0f}s (train {row['train_images_per_second']:.0f} img/s, "
                         f"eval {row['evaluation_seconds']:.0f}s)")
        parts.append(f"ETA {_duration(remaining)}")
        return " | ".join(parts)


class EpochTimer(keras.callbacks.Callback):
    """Times each epoch's training and evaluation; a live status line on a terminal.

    Place it first: its `on_epoch_end` then marks the start of the averages'
    evaluation (Keras's own validation of the SGD model has run just before;
    it counts as evaluation too). `RunLogger(timer=...)` logs `timings()`.
    """

    def __init__(self, batch_size, live=None):
        super().__init__()
        self.batch_size = batch_size
        self.live = sys.stdout.isatty() if live is None else live

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._started, self._train_end, self._batches = epoch, time.time(), None, 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        self._train_end = time.time()
        steps = (self.params or {}).get("steps") or 0
        if self.live and (batch % 10 == 0 or batch + 1 == steps):
            rate = self._batches * self.batch_size / max(self._train_end - self._started, 1e-9)
            left = (steps - batch - 1) * self.batch_size / rate if steps else 0
            self._status(f"epoch {self._epoch + 1} step {batch + 1}/{steps} loss "
                         f"{float((logs or {}).get('loss', float('nan'))):.4f} {rate:.0f} img/s "
                         f"ETA {_duration(left)}")

    def on_epoch_end(self, epoch, logs=None):
        if self.live:
            self._status(f"epoch {epoch + 1}: evaluating SGD and the averages ...")

    def timings(self):
        now = time.time()
        train_end = self._train_end or now
        rate = self._batches * self.batch_size / max(train_end - self._started, 1e-9)
        return dict(zip(TRAILING_COLUMNS, (now - self._started, rate, now - train_end)))

    def clear_status(self):
        if self.live:
            print("\r\033[K", end="", flush=True)

    def _status(self, text):
        print("\r\033[K" + text[:120], end="", flush=True)


def best_ema(row):
    """`(decay key, accuracy)` of the best EMA in a history row, or None."""
    values = {
        key[len("ema_"):-len("_val_accuracy")]: value
        for key, value in row.items()
        if key.startswith("ema_") and key.endswith("_val_accuracy") and "_bn_" not in key
        and key != "ema_best_val_accuracy" and value is not None
    }
    if not values:
        return None
    decay = max(values, key=lambda d: (values[d], -float(d)))
    return decay, values[decay]


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
