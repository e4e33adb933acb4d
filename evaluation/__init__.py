"""Evaluation of trained runs: metrics on predictions (NumPy) and the paper's tables and figures.

`evaluation.metrics` works on arrays of logits / probabilities / labels only,
so it serves any backend; `evaluation.report` reads run directories and writes
the Markdown/CSV tables and PNG figures (`python -m app.report`).
"""
