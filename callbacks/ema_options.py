"""`MultiEMA`'s defaults and choices, importable without Keras.

The command lines list them in `--help` and check flags against them before
any heavy import; callbacks/ema.py uses the same values.
"""

DEFAULT_DECAYS = (0.968, 0.984, 0.992, 0.996, 0.998)  # paper §4.1
DEFAULT_EVERY_STEPS = 16  # paper §4.1: the EMA is updated every T=16 steps
BN_MODES = ("eman", "copy")
