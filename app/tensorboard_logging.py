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
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_AVERAGE_KEY = re.compile(r"^(?P<model>(ema|swa)\S*?)_(?P<metric>val_\w+)$")


def tag_for(key):
    """Maps an epoch-log key to its TensorBoard tag (see the module docstring)."""
    if key == "lr":
        return "learning_rate"
    match = _AVERAGE_KEY.match(key)
    if match:
        return f"{match['metric']}/{match['model']}"
    if key.startswith("val_"):
        return f"{key}/sgd"
    return f"{key}/train"


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

    def add_event(self, event):
        self._writer.add_event(event)
        self._writer.flush()

    def close(self):
        self._writer.close()
