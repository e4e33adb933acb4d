"""TensorBoard event files written with TensorBoard's own writer.

Keras's `TensorBoard` callback needs TensorFlow; this writer does not, so the
same run directory is produced on the JAX backend of a machine without TF.

Tag layout: SGD and every average of one metric share a tag prefix, so that
TensorBoard's custom-scalars charts (and a reader's regex) put them together:
`val_accuracy/sgd`, `val_accuracy/ema_0.998`, `val_accuracy/ema_best`,
`val_accuracy/ema_0.998_bn`, `val_accuracy/swa`, `accuracy/train`,
`learning_rate`. Steps are 1-based epochs, as in `history.csv`.
"""

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


def tag_for(key):
    """Maps an epoch-log key to its TensorBoard tag (see the module docstring)."""
    if key == "lr":
        return "learning_rate"
    if key in TIMING_KEYS:
        return f"time/{key}"
    match = _AVERAGE_KEY.match(key)
    if match:
        return f"{match['metric']}/{match['model']}"
    if key.startswith("val_") or key == "prediction_stability":
        return f"{key}/sgd"
    return f"{key}/train"


# Custom-scalars dashboard: (category, [(chart title, [tag regexes])]).
LAYOUT = (
    (
        "EMA vs SGD",  # the paper's Fig. 1a
        (
            ("validation accuracy", (r"^val_accuracy/(sgd|ema_best|swa)$",)),
            ("validation loss", (r"^val_loss/(sgd|swa)$", r"^val_loss/ema_[0-9.]+$")),
        ),
    ),
    (
        "EMA decays",  # the paper's Fig. 1b: each decay, with and without BN recompute
        (
            ("validation accuracy", (r"^val_accuracy/ema_[0-9.]+(_bn)?$",)),
            ("validation loss", (r"^val_loss/ema_[0-9.]+(_bn)?$",)),
        ),
    ),
    ("learning rate", (("learning rate", (r"^learning_rate$",)),)),
    (
        "stability",  # Adda et al.: prediction stability, EMA-SGD weight distance
        (
            ("prediction stability", (r"^prediction_stability/",)),
            ("weight distance to SGD", (r"^weight_distance/",)),
        ),
    ),
    ("training", (("training accuracy and loss", (r"^(accuracy|loss)/train$",)),)),
)


def layout_summary(layout=LAYOUT):
    """The custom-scalars layout as a `Summary` proto (no TensorFlow needed)."""
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
