"""The command lines' argument parsing and error handling: one-line errors, defaults shown once.

`UsageError` lives in utils/errors.py (library code raises it too) and is
re-exported here for the entry points; `entry_point` is their one way of
turning it (and `Interrupted`) into a line and an exit status.
"""

import argparse
import functools
import re
import sys

from utils.errors import ConfigError, Interrupted, UsageError  # noqa: F401  (the entry points' import)


def entry_point(main):
    """Decorates an entry point's `main(argv)`: `main(argv=None)` reads `sys.argv[1:]`.

    A `UsageError` becomes `error: <message>` on stderr and exit status 2 (a
    `ConfigError` naming the flags, `flag_words`); `Interrupted` its line and
    status 130 or 143 (app/signals.py). Tests call `main(argv)` directly.
    """

    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(sys.argv[1:] if argv is None else list(argv))
        except UsageError as error:
            print(f"error: {flag_words(error)}", file=sys.stderr)
            raise SystemExit(2)
        except Interrupted as interrupted:
            from app import signals

            signals.report(str(interrupted))
            raise SystemExit(interrupted.status)

    return run


def flag_words(error):
    """A library error's message, with the `TrainConfig` fields a `ConfigError` names as the flags
    that set them (`batch_size` -> --batch-size, docs/architecture.md: names match end to end)."""
    if not isinstance(error, ConfigError):
        return str(error)
    return re.sub(r"`([a-z_]+)`", lambda field: "--" + field[1].replace("_", "-"), str(error))


def add_run_reading_arguments(parser, flags=("--limit-test", "--data-dir", "--batch-size")):
    """The flags of the commands that read a run back (evaluate, consistency, transfer, posthoc)."""
    if "--limit-test" in flags:
        parser.add_argument("--limit-test", type=positive_int, default=None,
                            help="use the first N test examples only (smoke runs)")
    if "--data-dir" in flags:
        parser.add_argument("--data-dir", default=None, help="TFDS data directory (default: the run's)")
    if "--batch-size" in flags:
        parser.add_argument("--batch-size", type=positive_int, default=None,
                            help="prediction batch size (default: the run's)")


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
    """A library's `InvalidArgument` (callbacks/arguments.py) as the one-line `UsageError` of `flag`."""
    return UsageError(f"{flag} {' '.join(map(str, values))}: expected {error.expected}")


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
