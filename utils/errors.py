"""Errors a user can cause: reported as one line, exit status 2, no traceback."""


class UsageError(Exception):
    """Bad input from the user. The message names the fix, in one line.

    Raised anywhere before expensive work starts (by library code too: a
    dataset that is not prepared, a run directory that holds another run);
    the `app` entry points print it as `error: <message>` and exit 2.
    """


class Interrupted(Exception):
    """Ctrl-C during a run; the message says where and how to resume (exit status 130)."""
