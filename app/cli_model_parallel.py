"""`app.train`'s model-parallel flag (JAX): a device mesh for training/model_parallel.py."""

import json
import os

from app.errors import UsageError


def add_arguments(parser):
    parser.add_argument(
        "--model-parallel",
        metavar="BATCHxMODEL",
        default=None,
        help="JAX only: train on a BATCH x MODEL device mesh (e.g. 2x4: 8 devices), each batch split "
        "BATCH ways, every conv/dense kernel split MODEL ways on its output axis, and every EMA/SWA "
        "average sharded like its weight (keras.distribution.ModelParallel; docs/devices.md)",
    )


def config_fields(args, batch_size):
    """`{"model_parallel": "BxM", "devices": B*M}`, checked against the resolved `batch_size`; `{}` without the flag."""
    if args.model_parallel is None:
        return {}
    mesh = _parse(args.model_parallel)
    if mesh is None:
        raise UsageError(f"--model-parallel {args.model_parallel!r}: expected BATCHxMODEL, e.g. 2x4")
    backend = keras_backend_name()
    if backend != "jax":
        raise UsageError(f"--model-parallel is JAX-only (keras.distribution, as in Keras); "
                         f"set KERAS_BACKEND=jax (was {backend})")
    devices = mesh[0] * mesh[1]
    if args.devices is not None and args.devices != devices:
        raise UsageError(f"--devices {args.devices} with --model-parallel {args.model_parallel} "
                         f"({devices} devices); leave out --devices")
    if batch_size % mesh[0]:
        raise UsageError(f"--batch-size {batch_size} does not split across the {mesh[0]} batch devices of "
                         f"--model-parallel {args.model_parallel}; use a multiple of {mesh[0]}")
    return {"model_parallel": f"{mesh[0]}x{mesh[1]}", "devices": devices}


def _parse(text):
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(part.isdecimal() and int(part) > 0 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def keras_backend_name(environ=None):
    """Keras's backend as Keras will choose it (KERAS_BACKEND, else keras.json), without importing Keras."""
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"
