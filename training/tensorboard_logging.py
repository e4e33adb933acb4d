"""TensorBoard event files written with TensorBoard's own writer.

Keras's `TensorBoard` callback needs TensorFlow; this writer does not, so the
same run directory is produced on the JAX backend of a machine without TF.

Layout: every model is a TensorBoard run of its own, a sub-directory of
`RUN/tensorboard/` — `sgd/`, `ema_<d>/`, `ema_best/` (the best EMA each
epoch, the paper's Fig. 1a), `ema_<d>_bn/` (BN recomputed, Fig. 1b), `swa/` —
with the same tags: `val_accuracy`, `val_loss` (and `prediction_stability`,
`weight_distance` with `--track-stability`). The Scalars tab then draws SGD
and the averages of one metric on one chart, one colour per run, the run
names as the legend, and the run selector filters them, as Keras's own
callback does with `train/` and `validation/`. `sgd/` also holds
`train_accuracy`, `train_loss`, `learning_rate` and `time/*`. Steps are
1-based epochs, as in `history.csv`.
"""

import os

import re
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_AVERAGE_KEY = re.compile(
    r"^(?P<model>(ema|swa)\S*?)_(?P<metric>val_\w+|prediction_stability|weight_distance)$"
)


TIMING_KEYS = ("epoch_seconds", "train_images_per_second", "evaluation_seconds")


def run_and_tag(key):
    """Maps an epoch-log key to its TensorBoard `(run, tag)` (see the module docstring)."""
    if key == "lr":
        return "sgd", "learning_rate"
    if key in TIMING_KEYS:
        return "sgd", f"time/{key}"
    match = _AVERAGE_KEY.match(key)
    if match:
        return match["model"], match["metric"]
    if key.startswith("val_") or key == "prediction_stability":
        return "sgd", key
    return "sgd", key if key.startswith("train_") else f"train_{key}"


# Custom-scalars dashboard: (category, [(chart title, [tag regexes])]). Each
# chart draws its tags of every run, so SGD and all averages appear together.
LAYOUT = (
    (
        "EMA vs SGD",  # the paper's Fig. 1a / 1b: pick runs in the run selector
        (
            ("validation accuracy", (r"^val_accuracy$",)),
            ("validation loss", (r"^val_loss$",)),
        ),
    ),
    ("learning rate", (("learning rate", (r"^learning_rate$",)),)),
    ("training", (("training accuracy and loss", (r"^train_(accuracy|loss)$",)),)),
    ("time", (("seconds per epoch and training images per second", (r"^time/",)),)),
)
STABILITY = (
    "stability",  # Adda et al.: prediction stability, EMA-SGD weight distance
    (
        ("prediction stability", (r"^prediction_stability$",)),
        ("weight distance to SGD", (r"^weight_distance$",)),
    ),
)


def layout_summary(stability=False):
    """The custom-scalars layout as a `Summary` proto (no TensorFlow needed).

    Only what is tracked: the stability charts need `--track-stability`.
    """
    layout = LAYOUT + ((STABILITY,) if stability else ())
    proto = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title=category,
                chart=[
                    layout_pb2.Chart(
                        title=title,
                        multiline=layout_pb2.MultilineChartContent(tag=list(tags)),
                    )
                    for title, tags in charts
                ],
            )
            for category, charts in layout
        ]
    )
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[proto.SerializeToString()]
    )
    return summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
                metadata=custom_scalar_metadata.create_summary_metadata(),
                tensor=tensor,
            )
        ]
    )


class ScalarWriter:
    """Appends scalar summaries to one TensorBoard event file."""

    def __init__(self, logdir):
        self._writer = EventFileWriter(logdir)

    def scalars(self, values, step):
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                for tag, value in values.items()
            ]
        )
        self._writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        )
        self._writer.flush()

    def summary(self, summary, step=0):
        self.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def session_start(self, step):
        """Marks a restart: TensorBoard's reader drops earlier events with step >= `step`."""
        self.add_event(
            event_pb2.Event(
                wall_time=time.time(),
                step=int(step),
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            )
        )

    def add_event(self, event):
        self._writer.add_event(event)
        self._writer.flush()

    def close(self):
        self._writer.close()


class RunWriters:
    """One `ScalarWriter` per TensorBoard run (model) under `logdir`, opened on first use."""

    def __init__(self, logdir):
        self.logdir = logdir
        self._writers = {}

    def writer(self, run):
        if run not in self._writers:
            self._writers[run] = ScalarWriter(os.path.join(self.logdir, run))
        return self._writers[run]

    def log(self, values, step):
        """Writes `{epoch-log key: value}`, each under its run and tag (`run_and_tag`)."""
        by_run = {}
        for key, value in values.items():
            run, tag = run_and_tag(key)
            by_run.setdefault(run, {})[tag] = value
        for run, scalars in by_run.items():
            self.writer(run).scalars(scalars, step)

    def session_start(self, step):
        """A resumed run: every run written so far drops its events from `step` on."""
        for run in sorted(os.listdir(self.logdir)) if os.path.isdir(self.logdir) else ():
            if os.path.isdir(os.path.join(self.logdir, run)):
                self.writer(run).session_start(step)

    def close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
