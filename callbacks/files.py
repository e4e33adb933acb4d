"""Atomic file writing: the one implementation the whole project uses.

Every file written for a reader (weights, snapshots, checkpoints, run
directories) goes through `atomic_write`: a reader, or a process killed
mid-write, never leaves half a file under the real name. It lives in the
library (pip-installed alone) so that the callbacks need nothing else; the
application imports it through `utils.files`. No Keras import.
"""

import os


def atomic_write(path, content, previous=None):
    """Writes `content` to `path` through a temporary file, fsync and a rename; returns `path`.

    Args:
        path: the file to write.
        content: text, bytes, or a function `write(temporary_path)` for writers
            that take a path (`np.savez`, Keras's `save_weights`). The temporary
            name keeps `path`'s ending, which some writers check (Keras wants
            `.weights.h5`, NumPy appends `.npz` otherwise): `<dir>/.partial-<name>`.
        previous: where an existing `path` is moved just before the rename
            (a checkpoint keeps the one before). Defaults to None (replaced).
    """
    directory, name = os.path.split(os.fspath(path))
    temporary = os.path.join(directory, f".partial-{name}")
    if callable(content):
        content(temporary)
    else:
        binary = isinstance(content, bytes)
        with open(temporary, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            handle.write(content)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    if previous is not None and os.path.exists(path):
        os.replace(path, previous)
    os.replace(temporary, path)
    return path
