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
