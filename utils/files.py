"""Atomic file writing, without heavy imports (the command lines import it first).

Every file the project writes for a reader (run directories, checkpoints, caches,
snapshots) goes through `atomic_write`: a reader or a killed process never leaves
half a file under the real name.
"""

import os


def atomic_write(path, content):
    """Writes `content` to `path` through a temporary file and a rename.

    `content` is text, bytes, or a function `write(temporary_path)` for writers
    that take a path (`np.savez`, Keras's `save_weights`). The temporary name
    keeps `path`'s ending, which some writers check (Keras wants `.weights.h5`,
    NumPy appends `.npz` otherwise): `<dir>/.partial-<name>`. Returns `path`.
    """
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".partial-{name}")
    if callable(content):
        content(temporary)
    else:
        binary = isinstance(content, bytes)
        with open(temporary, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def atomic_write_text(path, text):
    """`atomic_write` for text (the name most callers read best)."""
    return atomic_write(path, text)
