"""The callbacks' defaults and choices, importable without Keras.

The command lines list them in `--help` and check flags against them before
any heavy import; the callbacks use the same values. (The warm-up modes live
with the warm-up rule, callbacks/warmup.py, which is Keras-free too.)
"""

# MultiEMA
DEFAULT_DECAYS = (0.968, 0.984, 0.992, 0.996, 0.998)  # paper §4.1
DEFAULT_EVERY_STEPS = 16  # paper §4.1: the EMA is updated every T=16 steps
BN_MODES = ("eman", "copy")

# PowerFunctionEMA
DEFAULT_SIGMA_RELS = (0.05, 0.10)  # EDM2 §3
