"""Small helpers every package may import: user errors and atomic file writes.

Nothing here imports Keras or TensorFlow, so the command lines can use it
before their heavy imports.
"""
