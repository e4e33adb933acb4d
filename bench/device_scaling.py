"""Images/s of a Keras training run on 1 device vs N devices (data parallelism), per backend.

Claim (to be measured on a multi-GPU machine; issue 12): with the global batch
fixed, `--devices N` (training/distribution.py: `keras.distribution.DataParallel`
on JAX, `tf.distribute.MirroredStrategy` on TensorFlow) trains ~N times as
many images per second as one device. No multi-GPU figure exists yet; on a
machine with one accelerator the run measures 1 device only and says so.

Evidence so far: a CPU SMOKE ONLY. `python bench/device_scaling.py --smoke
--host-devices 2`: ResNet-20, 10 classes, global batch 32, float32, 8 steps
per timed fit, 3 alternating rounds; JAX 0.10.2, TensorFlow 2.21.0, Keras
3.15.1; load 4.9 before, 4.1 after; 66 s. Medians (min-max), images/s:

    JAX          1 device 209 (173-211)   2 devices 288 (276-291)   2/1 = 1.38
    TensorFlow   1 device 190 (102-222)   2 devices  89 (46-91)     2/1 = 0.47

The 2 "devices" are one process's CPU devices
(`--xla_force_host_platform_device_count=2`, TensorFlow logical CPUs) sharing
the same 2 CPU cores, themselves shared with other jobs: the ratio tests the
code path and says nothing about GPU scaling (TensorFlow's varied 2x between
rounds of the same configuration). TensorFlow ran without XLA (Keras's
`jit_compile="auto"`, as in the app: `jit_compile` is false in the results).

On GPUs: `python bench/device_scaling.py` (ResNet-18, 100 classes, global
batch 512, mixed_bfloat16, 50 steps per fit, 3 rounds; every accelerator).

Method: each backend runs in its own subprocess (the backend, JAX's host
device count and TensorFlow's logical devices are fixed at start-up). In it,
the same model is built and compiled for 1 device and, inside
`distribution.data_parallel(N)`, for N devices (the project's own context:
variables replicated, each global batch split N ways); after a warm-up fit
each, the timed `fit`s of the two alternate over `--repeats` rounds, each
`fit` over `--steps` batches of NumPy arrays, ending when the last step's
weights reach the host. JAX shards each batch by the distribution set when
`fit` runs, so its fits run inside the context; a TensorFlow model keeps the
strategy it was built under (a second scope would mix two strategies).
Optimizer and BatchNorm as in the app (`TorchSGD`, BatchNorm not
synchronized on TensorFlow: `--sync-batch-norm` off). The JAX subprocess
blocks TensorFlow, as where it is not installed (`tensorflow_imported` in the
results). Results: bench/results/device_scaling.json.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clocks  # noqa: E402
import results_file  # noqa: E402

from training.config import MODEL_NAMES, PRECISIONS, TrainConfig, default_weight_decay  # noqa: E402  (no Keras)

BACKENDS = ("jax", "tensorflow")
IMAGE_SIZE = 32
LEARNING_RATE = 0.01  # constant: small enough that random data never reaches NaN
DEFAULTS = {"model": "resnet18", "num_classes": 100, "batch_size": 512, "steps": 50, "warmup_steps": 5,
            "repeats": 3, "precision": "mixed_bfloat16"}
SMOKE = {"model": "resnet20", "num_classes": 10, "batch_size": 32, "steps": 8, "warmup_steps": 2,
         "repeats": 3, "precision": "float32"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: ResNet-20, batch 32, 8 steps")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        help="default: jax, and tensorflow where it is installed")
    parser.add_argument("--host-devices", type=int,
                        help="split the CPU into N devices (JAX XLA flag, TensorFlow logical CPUs)")
    parser.add_argument("--devices", type=int, help="N of the N-device run (default: all of them)")
    parser.add_argument("--model", help="a models/ name (default resnet18; smoke resnet20)")
    parser.add_argument("--num-classes", type=int, help="default 100; smoke 10")
    parser.add_argument("--batch-size", type=int, help="global batch, the same on 1 and N devices (default 512)")
    parser.add_argument("--steps", type=int, help="batches per timed fit (default 50)")
    parser.add_argument("--warmup-steps", type=int, help="batches of the untimed first fit (default 5)")
    parser.add_argument("--repeats", type=int, help="alternating rounds of timed fits (default 3)")
    parser.add_argument("--precision", choices=PRECISIONS, help="Keras dtype policy (default mixed_bfloat16)")
    parser.add_argument("--out", default=os.path.join(results_file.DIRECTORY, "device_scaling.json"))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)  # one backend's subprocess
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, default in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("num_classes", "batch_size", "steps", "warmup_steps", "repeats", "host_devices", "devices"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; received {value}")
    if args.model not in MODEL_NAMES:
        parser.error(f"unknown model {args.model!r}; choose from {', '.join(MODEL_NAMES)}")
    if args.backends is None:
        args.backends = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    return args


# The worker: one backend, 1 device vs N.


def configure_backend(args):
    """Imports Keras for this process's backend with the requested host devices; returns keras."""
    if args.worker == "jax" and args.host_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.host_devices}").strip()
    if args.worker == "jax":
        # As where TensorFlow is not installed: `keras.utils.set_random_seed`
        # would import it (to seed tf.data), 10 s and a GiB for nothing here.
        for name in ("tensorflow", "tensorflow_datasets"):
            sys.modules.setdefault(name, None)
    if args.worker == "tensorflow":
        from utils import quiet

        quiet.import_tensorflow()
        if args.host_devices:
            import tensorflow as tf

            tf.config.set_logical_device_configuration(
                tf.config.list_physical_devices("CPU")[0],
                [tf.config.LogicalDeviceConfiguration()] * args.host_devices)
    import keras

    return keras


def measure_backend(args):
    keras = configure_backend(args)
    import numpy as np

    import models
    from training import distribution
    from training.optimizer import TorchSGD

    names = distribution.devices_for_data_parallelism()
    devices = args.devices or len(names)
    if devices > len(names):
        raise SystemExit(f"error: --devices {devices}: {args.worker} sees {len(names)} devices: {names}")
    if args.batch_size % devices:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not split across {devices} devices")
    keras.mixed_precision.set_global_policy(args.precision)
    rng = np.random.default_rng(0)
    images = args.steps * args.batch_size
    x = rng.standard_normal((images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    y = rng.integers(0, args.num_classes, images).astype(np.int32)
    defaults = TrainConfig()

    def fit_scope(count):
        # JAX reads the distribution when fit runs; a TensorFlow model keeps its strategy.
        return distribution.data_parallel(count) if args.worker == "jax" else contextlib.nullcontext()

    runs = {}
    for count in sorted({1, devices}):
        with distribution.data_parallel(count):
            keras.utils.set_random_seed(0)
            model = models.build_model(args.model, args.num_classes, image_size=IMAGE_SIZE)
            model.compile(
                optimizer=TorchSGD(learning_rate=LEARNING_RATE, momentum=defaults.momentum,
                                   nesterov=defaults.nesterov, l2=default_weight_decay(args.model)),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )

        def fit(limit=images, model=model, count=count):
            with fit_scope(count):
                model.fit(x[:limit], y[:limit], batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
            keras.ops.convert_to_numpy(model.trainable_weights[-1])  # waits for the last step

        wall, _ = clocks.timed(lambda: fit(args.warmup_steps * args.batch_size))
        print(f"{args.worker}: {count} device(s) warm-up fit (compiles) {wall:.1f} s", flush=True)
        runs[count] = {"fit": fit, "seconds": [], "jit_compile": model.jit_compile}

    for round_index in range(args.repeats):
        order = sorted(runs) if round_index % 2 == 0 else sorted(runs, reverse=True)
        for count in order:
            wall, _ = clocks.timed(runs[count]["fit"])
            runs[count]["seconds"].append(wall)
            print(f"{args.worker}: round {round_index + 1}, {count} device(s): {images / wall:.1f} images/s",
                  flush=True)

    rates = {count: [images / s for s in run["seconds"]] for count, run in runs.items()}
    ratio = statistics.median(rates[devices]) / statistics.median(rates[1]) if devices > 1 else None
    return {
        "devices": names[:devices],
        "device_count": devices,
        "images_per_second": {f"{count}_device{'s' if count > 1 else ''}": clocks.spread(rate)
                              for count, rate in rates.items()},
        "ratio_n_to_1": round(ratio, 3) if ratio else None,
        "efficiency": round(ratio / devices, 3) if ratio else None,
        "note": None if devices > 1 else "one device only: nothing to compare",
        "jit_compile": {count: run["jit_compile"] for count, run in runs.items()},
        "versions": {"keras": keras.__version__, **backend_version(args.worker)},
        # The JAX half must run where TensorFlow is not installed.
        "tensorflow_imported": sys.modules.get("tensorflow") is not None,
    }


def backend_version(backend):
    module = __import__(backend)
    return {backend: module.__version__}


# The parent: one subprocess per backend.


def run_worker(backend, argv):
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "result.json")
        env = dict(os.environ, KERAS_BACKEND=backend)
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--worker", backend,
                                    "--worker-out", out], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = round(time.perf_counter() - started, 1)
        if completed.returncode != 0:
            return {"error": completed.stderr.strip().splitlines()[-1:], "returncode": completed.returncode,
                    "seconds": seconds}, completed.stdout
        with open(out, encoding="utf-8") as file:
            return {**json.load(file), "seconds": seconds}, completed.stdout


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        result = measure_backend(args)
        with open(args.worker_out, "w", encoding="utf-8") as file:
            json.dump(result, file)
        return result
    load_before = clocks.load_averages()
    started = time.perf_counter()
    backends = {}
    for backend in args.backends:
        backends[backend], output = run_worker(backend, argv)
        print(output, end="", flush=True)
    result = {
        "smoke": args.smoke,
        "note": ("CPU devices sharing the same 2 cores: the ratio says nothing about GPU scaling"
                 if args.host_devices else None),
        "argv": argv,
        "command": "python bench/device_scaling.py " + " ".join(argv),
        "config": {key: getattr(args, key) for key in (*DEFAULTS, "host_devices", "devices", "backends")},
        "git_commit": clocks.git_commit(ROOT),
        "script_changed_since_commit": clocks.script_changed_since_commit(ROOT, "bench/device_scaling.py"),
        "python": platform.python_version(),
        "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None,
        "backends": backends,
        "load_average_before": load_before,
        "load_average_after": clocks.load_averages(),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    for backend, measured in backends.items():
        if "error" in measured:
            print(f"{backend}: failed: {measured['error']}")
            continue
        rates = ", ".join(f"{name} {spread['median']:.1f} images/s" for name, spread in
                          measured["images_per_second"].items())
        print(f"{backend}: {rates}; N/1 = {measured['ratio_n_to_1']} (efficiency {measured['efficiency']})"
              + (" -- CPU smoke, not a GPU figure" if args.host_devices else ""))
    if any("error" in measured for measured in backends.values()):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
