"""Atomic file writing, without heavy imports (the command lines import it first)."""

import os


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file, fsync and a rename."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write(path, write):
    """Calls `write(temporary)` then renames the file onto `path`: a reader never sees half a file.

    The temporary name keeps `path`'s ending, which some writers check (Keras's `save_weights` wants
    `.weights.h5`): `<dir>/.partial-<name>`.
    """
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".partial-{name}")
    write(temporary)
    os.replace(temporary, path)
