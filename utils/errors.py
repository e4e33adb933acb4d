"""Errors a user can cause: reported as one line, exit status 2, no traceback."""


class UsageError(Exception):
    """Bad input from the user. The message names the fix, in one line.

    Raised anywhere before expensive work starts (by library code too: a
    dataset that is not prepared, a run directory that holds another run);
    the `app` entry points print it as `error: <message>` and exit 2.
    """


class ConfigError(UsageError):
    """A `TrainConfig` value this run cannot use: the message names each field in backticks.

    "`batch_size` 130 does not split across 4 devices; use a multiple of 4".
    The library knows fields, not flags: `app/` prints the flag that sets each
    field instead (`--batch-size 130 ...`, app/errors.py `flag_words`).
    """


class Interrupted(Exception):
    """Ctrl-C (exit status 130) or SIGTERM (143) during a run; the message says what a rerun will do."""

    def __init__(self, message, status=130):
        super().__init__(message)
        self.status = status


def start_up_line(verb):
    """What a signal before any training says (`verb`: interrupted, terminated)."""
    return f"{verb} during start-up; nothing was trained yet: run the same command to start again"
