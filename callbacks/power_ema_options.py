"""`PowerFunctionEMA`'s defaults, without Keras (the command lines read them)."""

DEFAULT_SIGMA_RELS = (0.05, 0.10)  # EDM2 §3
