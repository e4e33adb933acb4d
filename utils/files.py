"""Atomic file writing for the application: the library's one implementation (callbacks/files.py)."""

from callbacks.files import atomic_write


def atomic_write_text(path, text):
    """`atomic_write` for text (the name most callers read best)."""
    return atomic_write(path, text)
