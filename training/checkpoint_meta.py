"""A checkpoint's file names and its `meta` (epoch, global step, history rows), read without Keras.

training/checkpoint.py writes and restores checkpoints; this part is what
a reader needs that has no model to restore: app.reproduce's dry run says
how far a run in progress is, without importing TensorFlow.
"""

import json
import zipfile

import numpy as np

DIRECTORY = "checkpoint"
LAST = "last.npz"
PREVIOUS = "previous.npz"


def read_meta(path):
    """The `meta` of one checkpoint file from its header alone, or None if unreadable or absent."""
    try:
        with np.load(path, allow_pickle=False) as contents:  # reads a member on access: the header only
            return json.loads(str(contents["header"]))["meta"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
