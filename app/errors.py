"""Errors a user can cause: reported as one line, exit status 2, no traceback."""


class UsageError(Exception):
    """Bad input from the user. The message names the fix, in one line.

    Raised anywhere before expensive work starts; `app` entry points turn it
    into `error: <message>` on stderr and exit status 2.
    """
