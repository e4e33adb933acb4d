"""The command lines' argument parsing: one-line errors, defaults shown once.

`UsageError` lives in utils/errors.py (library code raises it too) and is
re-exported here for the entry points.
"""

import argparse

from utils.errors import UsageError  # noqa: F401  (the entry points' import)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints its usage and then the error; the entry points want one line.

    Parsing errors become `UsageError`, which every `app` entry point prints as
    `error: <message>` with exit status 2.
    """

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def choice(value, choices, what):
    """`value` if it is one of `choices`; else the one-line `UsageError` naming them."""
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")
    return value


def flag_error(flag, values, error):
    """A library's argument ValueError ("... Expected X.") as the one-line `UsageError` of `flag`."""
    expected = str(error).rsplit("Expected ", 1)[-1].rstrip(".")
    return UsageError(f"{flag} {' '.join(map(str, values))}: expected {expected}")


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default once: not when the help text already states it
    ("(default: ...)"), and not for None or a switch's False."""

    def _get_help_string(self, action):
        text = action.help or ""
        # `is`, not `in (None, False)`: a default of 0 equals False and must still show.
        if "(default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)
