"""TensorFlow's start-up logging, muted unless the user asked for it.

TensorFlow 2.21 prints its C++ start-up lines ("All log messages before
absl::InitializeLog() ...", oneDNN, "Could not find cuda drivers", and on a
machine without a GPU "failed call to cuInit") before absl logging is set up,
so `TF_CPP_MIN_LOG_LEVEL` cannot silence them. The entry points call
`import_tensorflow()` once their arguments are checked: it imports TensorFlow
and lists the devices (where the CUDA probe logs) with file descriptor 2
pointed at /dev/null. A user who sets `TF_CPP_MIN_LOG_LEVEL` keeps every line.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_muted():
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def import_tensorflow():
    """Imports TensorFlow (and Keras) quietly; a no-op the second time."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:  # the user's choice
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _stderr_muted():
        import tensorflow as tf

        import keras  # noqa: F401

        tf.config.list_physical_devices()
