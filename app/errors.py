"""Errors a user can cause: reported as one line, exit status 2, no traceback."""

import argparse


class UsageError(Exception):
    """Bad input from the user. The message names the fix, in one line.

    Raised anywhere before expensive work starts; `app` entry points turn it
    into `error: <message>` on stderr and exit status 2.
    """


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints its usage and then the error; the entry points want one line.

    Parsing errors become `UsageError`, which every `app` entry point prints as
    `error: <message>` with exit status 2.
    """

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


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
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)
