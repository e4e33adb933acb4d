"""Snapshot files of `PowerFunctionEMA`: one `.npz` per snapshot step, NumPy only.

A snapshot `power_ema-000001000.npz` holds, after optimizer step 1000, every
tracked average (one per σ_rel) of every averaged variable, in float32 or
float16, plus what a reader needs to use it without the callback:

    step                 the optimizer step (counted from 1) it was taken after
    sigma_rels, gammas   the tracked profiles, in order
    weight_indices       position of each averaged variable in `model.weights`
    paths                each averaged variable's Keras path (for messages)
    average/<j>/<i>      average j (sigma_rels[j]) of averaged variable i

Files are written through a temporary name, fsync and a rename: a kill leaves
either the old file or the new one. Keras-free, so `app.posthoc` can check a
run's snapshots before it imports a backend.
"""

import os
import re

import numpy as np

from callbacks.files import atomic_write

PREFIX = "power_ema-"
_NAME = re.compile(r"^power_ema-(\d{9})\.npz$")
SNAPSHOT_DTYPES = ("float32", "float16")


def snapshot_path(directory, step):
    return os.path.join(directory, f"{PREFIX}{step:09d}.npz")


def list_snapshots(directory):
    """Sorted `(step, path)` of the snapshot files in `directory` (none if it is missing)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def write_snapshot(directory, step, sigma_rels, gammas, weight_indices, paths, averages, dtype="float32"):
    """Writes one snapshot atomically; `averages[j][i]` is average j of variable i (NumPy)."""
    arrays = {
        "step": np.int64(step),
        "sigma_rels": np.asarray(sigma_rels, dtype="float64"),
        "gammas": np.asarray(gammas, dtype="float64"),
        "weight_indices": np.asarray(weight_indices, dtype="int64"),
        "paths": np.asarray(paths, dtype=str),
    }
    for j, per_variable in enumerate(averages):
        for i, value in enumerate(per_variable):
            arrays[f"average/{j}/{i}"] = np.asarray(value).astype(dtype)
    os.makedirs(directory, exist_ok=True)
    return atomic_write(snapshot_path(directory, step), lambda temporary: np.savez(temporary, **arrays))


def read_header(path):
    """The snapshot's step, sigma_rels, gammas, weight_indices and paths (no averages)."""
    with np.load(path) as contents:
        return {
            "step": int(contents["step"]),
            "sigma_rels": tuple(float(s) for s in contents["sigma_rels"]),
            "gammas": tuple(float(g) for g in contents["gammas"]),
            "weight_indices": contents["weight_indices"].tolist(),
            "paths": contents["paths"].tolist(),
        }


def read_averages(path, index):
    """Average `index` (of `sigma_rels`) of every averaged variable, as float64 arrays."""
    with np.load(path) as contents:
        count = sum(key.startswith(f"average/{index}/") for key in contents.files)
        return [contents[f"average/{index}/{i}"].astype("float64") for i in range(count)]


def snapshot_bytes(num_values, num_averages, dtype="float32"):
    """The size of one snapshot's averages on disk: values x averages x bytes per value."""
    return int(num_values) * int(num_averages) * np.dtype(dtype).itemsize
