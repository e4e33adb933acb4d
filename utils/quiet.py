"""TensorFlow's start-up logging, muted unless the user asked for it.

TensorFlow 2.21 prints its C++ start-up lines ("All log messages before
absl::InitializeLog() ...", oneDNN, "Could not find cuda drivers", and on a
machine without a GPU "failed call to cuInit") before absl logging is set up,
so `TF_CPP_MIN_LOG_LEVEL` cannot silence them: a shell that sets it to 2, as
many do, still gets them. The entry points call `import_tensorflow()` once
their arguments are checked: it imports TensorFlow and lists the devices (where
the CUDA probe logs) with file descriptor 2 pointed at /dev/null. Only
`TF_CPP_MIN_LOG_LEVEL=0`, the one value that asks for more than the default,
keeps every line; unset, it is set to 2 for the rest of the run.
"""

import contextlib
import os
import sys

_real_stderr = 2  # the terminal's stderr, also while fd 2 is muted (`stderr_fd`)


def stderr_fd():
    """The file descriptor of the real stderr: a signal handler's one line must not go to /dev/null."""
    return _real_stderr


@contextlib.contextmanager
def _stderr_muted():
    global _real_stderr
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    _real_stderr = saved
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        _real_stderr = 2
        os.close(saved)
        os.close(null)


def import_tensorflow():
    """Imports TensorFlow (and Keras) quietly; a no-op the second time."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":  # the user asked for every line
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_muted():
        import tensorflow as tf

        import keras  # noqa: F401

        tf.config.list_physical_devices()
