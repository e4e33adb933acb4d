"""Eager checks of the callbacks' arguments, with Keras's message form.

"Invalid value for argument `decays`. Received: decays=(1.2,). Expected values
in (0, 1)." -- the argument, the value received, what is expected.
"""

import numpy as np


class InvalidArgument(ValueError):
    """A ValueError in Keras's message form that also carries its parts (`name`, `value`,
    `expected`), so that a command line can word it for its own flag without parsing the text."""

    def __init__(self, name, value, expected):
        super().__init__(f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected {expected}.")
        self.name, self.value, self.expected = name, value, expected


def invalid(name, value, expected):
    """The `InvalidArgument` for argument `name` holding `value`; `expected` ends the sentence."""
    return InvalidArgument(name, value, expected)


def checked_int(name, value, minimum):
    """`value` as an int; a bool or a float is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise invalid(name, value, f"an integer >= {minimum}")
    return int(value)


def checked_optional_int(name, value, minimum=1):
    """`None`, or `checked_int`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise invalid(name, value, f"`None` or an integer >= {minimum}")
    return int(value)


def checked_choice(name, value, choices):
    if value not in choices:
        raise invalid(name, value, f"one of {tuple(choices)}")
    return value


def checked_decays(decays):
    """Distinct floats in (0, 1), as a tuple."""
    try:
        values = tuple(float(d) for d in decays)
    except (TypeError, ValueError):
        raise invalid("decays", decays, "a sequence of floats") from None
    if not values:
        raise invalid("decays", decays, "at least one decay")
    if not all(0.0 < d < 1.0 for d in values):
        raise invalid("decays", decays, "values in (0, 1)")
    if len({f"{d:g}" for d in values}) != len(values):
        raise invalid("decays", decays, "distinct values (to 6 significant digits)")
    return values


def checked_rates(alpha_1, alpha_2, name=None):
    """SWA learning rates: `alpha_1 >= alpha_2 > 0` (or one rate `name` > 0)."""
    valid = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in (alpha_1, alpha_2))
    if valid and alpha_1 >= alpha_2 > 0:
        return
    if name is not None:
        raise invalid(name, alpha_1, "a float > 0")
    raise ValueError(
        "Invalid values for arguments `alpha_1`, `alpha_2`. Received: "
        f"alpha_1={alpha_1!r}, alpha_2={alpha_2!r}. Expected alpha_1 >= alpha_2 > 0."
    )
