"""Training and evaluation throughput of ResNet-18 on CIFAR-shaped data: Keras on JAX vs PyTorch.

Claim (to be measured on a GPU; issue 12): Keras 3 on the JAX backend
(mixed_bfloat16, XLA-compiled train step) trains the paper's ResNet-18 faster
than the usual PyTorch recipe (torch.compile, channels_last, bf16 autocast)
on the same GPU, same batch; the paper's protocol (200 epochs of 50,000
images, 6 models evaluated each epoch on 10,000 images) then takes the
projected wall time the run prints. No GPU figure exists yet.

Evidence so far: a CPU SMOKE ONLY, which tests the code path and says nothing
about GPU speed. `python bench/gpu_throughput.py --smoke`: ResNet-18 at 1/8
width (182,252 parameters, 8.88 MMAC/image), batch 16, 4 timed steps and 2
evaluation batches of 32 per round, 2 rounds, one CPU thread per framework on
this machine's 2 shared cores (load 3.8 before, 4.4 after), PyTorch through
`torch.compile(backend="aot_eager")`; JAX 0.10.2, Keras 3.15.1, PyTorch
2.13.0+cpu; TensorFlow blocked and never imported; 49 s. Medians (min-max):

    train images/s   Keras-JAX   458 (444-472)       PyTorch   638 (625-652)       0.72x
    eval images/s    Keras-JAX 1,742 (1,546-1,937)   PyTorch 3,701 (3,189-4,214)   0.47x

Four steps cannot separate the per-call costs of `fit`/`evaluate` from the
steps, and earlier runs of the same command measured 0.72x / 0.45x (load 5)
and 1.43x / 0.31x (load 6-9): on these cores the ratios are noise.

Same model in both frameworks, checked every run (it stops if the timed
models differ): ResNet-18 (100 classes) has 11,220,132 trainable parameters
+ 9,600 BatchNorm statistics and 555,468,800 MACs per 32x32 image (the
issue's 0.56 GMAC) in Keras and in PyTorch alike.

The GPU measurement: `python bench/gpu_throughput.py` (batch 512, the
50,000-image epoch in full batches, 10 warm-up steps, 3 interleaved rounds;
--peak-tflops defaults to an H200's 989 TFLOP/s bf16 dense). Results:
bench/results/gpu_throughput.json (devices, versions, argv, smoke or not).

Method:
- One process, both frameworks, interleaved rounds. Each timed epoch is one
  Keras `fit` over NumPy arrays (what the app runs; its per-epoch overhead
  counts) against the same number of PyTorch steps over the same arrays
  (pinned host memory, copied per batch); each ends when the device is done
  (`jax.block_until_ready`, `torch.cuda.synchronize` through `.item()`).
  Warm-up (compilation) is excluded. Same optimizer on both: SGD momentum
  0.9 without Nesterov, coupled L2 1e-4 (`training.optimizer.TorchSGD` is
  PyTorch's form), constant rate; loss and accuracy accumulated per step.
- Model FLOP utilisation: 2 FLOP per multiply-accumulate, training = 3x the
  forward (forward + two backward products), convolutions and the linear
  head only; MACs are counted from the layer shapes of each framework's
  model (ResNet-18 at 32 px: 0.56 GMAC per image).
- TensorFlow is blocked (`sys.modules["tensorflow"] = None`) before Keras is
  imported, as on the target machine (JAX and PyTorch only): whatever needs
  it fails loudly, optional imports are skipped (`keras.utils.set_random_seed`
  seeds tf.data where TensorFlow exists). Without PyTorch only the JAX half
  runs, and says so.
"""

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clocks  # noqa: E402
import results_file  # noqa: E402

from callbacks.defaults import DEFAULT_DECAYS  # noqa: E402  (neither imports Keras)
from training.config import TrainConfig, default_weight_decay  # noqa: E402

NUM_CLASSES = 100
IMAGE_SIZE = 32
STAGE_FILTERS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)
LEARNING_RATE = 0.01  # constant; small enough that random data never reaches NaN (slow on CPUs)
MOMENTUM = TrainConfig.momentum
WEIGHT_DECAY = default_weight_decay("resnet18")  # coupled L2, as the app trains
# NVIDIA's H200 SXM figure for dense bf16 tensor-core math (1,979 with 2:4 sparsity).
H200_BF16_DENSE_TFLOPS = 989.0
# The paper's protocol (Morales-Brotons et al., Table 22 and §4.1).
PAPER_EPOCHS = 200
PAPER_TRAIN_IMAGES = 50_000
PAPER_VALIDATION_IMAGES = 10_000
PAPER_EVALUATED_MODELS = 1 + len(DEFAULT_DECAYS)  # SGD + the 5 EMAs, every epoch

DEFAULTS = {"batch_size": 512, "eval_batch_size": TrainConfig.eval_batch_size, "train_images": PAPER_TRAIN_IMAGES,
            "validation_images": PAPER_VALIDATION_IMAGES, "warmup_steps": 10, "repeats": 3, "width_divisor": 1,
            "torch_compile_backend": "inductor"}
SMOKE = {"batch_size": 16, "eval_batch_size": 32, "train_images": 64, "validation_images": 64,
         "warmup_steps": 2, "repeats": 2, "width_divisor": 8,
         # Inductor's C++ code generation takes ~190 s on 2 CPU cores; aot_eager still traces
         # forward and backward through torch.compile.
         "torch_compile_backend": "aot_eager"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: 1/8 width, batch 16, a few steps")
    parser.add_argument("--batch-size", type=int, help=f"training batch (default {DEFAULTS['batch_size']})")
    parser.add_argument("--eval-batch-size", type=int, help=f"default {DEFAULTS['eval_batch_size']}, the app's")
    parser.add_argument("--train-images", type=int, help="images per timed epoch, in full batches (default 50,000)")
    parser.add_argument("--validation-images", type=int, help="images per timed evaluation (default 10,000)")
    parser.add_argument("--warmup-steps", type=int, help="untimed training steps that compile (default 10)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds of timed epochs and evaluations (default 3)")
    parser.add_argument("--width-divisor", type=int, help="divides every stage's channels (default 1: ResNet-18)")
    parser.add_argument("--torch-compile-backend", help="torch.compile backend (default inductor; smoke aot_eager)")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the device's peak bf16 dense TFLOP/s, for MFU (default 989: H200)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--out", default=os.path.join(results_file.DIRECTORY, "gpu_throughput.json"))
    args = parser.parse_args(argv)
    for name, default in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in DEFAULTS:
        if name != "torch_compile_backend" and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; received {getattr(args, name)}")
    if args.train_images < args.batch_size or args.validation_images < args.eval_batch_size:
        parser.error("--train-images and --validation-images must hold at least one batch")
    if STAGE_FILTERS[0] % args.width_divisor:
        parser.error(f"--width-divisor must divide {STAGE_FILTERS[0]}; received {args.width_divisor}")
    if args.peak_tflops <= 0:
        parser.error(f"--peak-tflops must be > 0; received {args.peak_tflops}")
    return args


def block_tensorflow():
    """Makes any import of TensorFlow fail, as on the target machine; unless it is already loaded."""
    if "tensorflow" in sys.modules:
        return False
    for name in ("tensorflow", "tensorflow_datasets", "tf_keras"):
        sys.modules[name] = None
    return True


def stage_filters(width_divisor):
    return tuple(filters // width_divisor for filters in STAGE_FILTERS)


def make_data(args):
    import numpy as np

    rng = np.random.default_rng(0)

    def images(count, batch_size):
        count = count // batch_size * batch_size  # full batches: no second compiled shape
        return (rng.standard_normal((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32),
                rng.integers(0, NUM_CLASSES, count).astype(np.int32))

    return images(args.train_images, args.batch_size), images(args.validation_images, args.eval_batch_size)


# Keras on JAX.


def build_keras_model(filters):
    import models
    from models.resnet import build_resnet

    if filters == STAGE_FILTERS:
        return models.build_model("resnet18", NUM_CLASSES, image_size=IMAGE_SIZE)
    return build_resnet(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, stage_filters=filters,
                        blocks_per_stage=BLOCKS_PER_STAGE, shortcut="projection", name="resnet18_narrow")


def keras_counts(model):
    import numpy as np

    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):  # per output position: k*k*C_in*C_out
            macs += int(np.prod(layer.output.shape[1:3])) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return {"trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
            "batch_norm_statistics": sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)}, macs


def keras_side(args, filters, train, validation):
    import jax
    import keras

    from training.optimizer import TorchSGD

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_keras_model(filters)
    model.compile(
        optimizer=TorchSGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM, nesterov=False, l2=WEIGHT_DECAY),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    counts, macs = keras_counts(model)

    def finished():
        jax.block_until_ready([variable.value for variable in model.variables])

    def train_epoch(images=None):
        x, y = train if images is None else (train[0][:images], train[1][:images])
        model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        finished()

    def evaluate():
        model.evaluate(*validation, batch_size=args.eval_batch_size, verbose=0)

    return {"train_epoch": train_epoch, "evaluate": evaluate, "parameters": counts, "macs_per_image": macs,
            "jit_compile": model.jit_compile, "policy": keras.mixed_precision.global_policy().name}


# PyTorch.


def torch_side(args, filters, train, validation):
    import torch_resnet

    return torch_resnet.peer(
        stage_filters=filters, blocks_per_stage=BLOCKS_PER_STAGE, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE,
        train=train, validation=validation, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        learning_rate=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
        compile_backend=args.torch_compile_backend, cpu_threads=1 if args.smoke else None,
    )


def full_width_counts(with_torch):
    """ResNet-18's counts in both frameworks, whatever width was timed (building costs seconds)."""
    keras_full, keras_macs = keras_counts(build_keras_model(STAGE_FILTERS))
    result = {"keras": keras_full, "keras_macs_per_image": keras_macs}
    if with_torch:
        import torch_resnet

        model = torch_resnet.ResNet(num_classes=NUM_CLASSES, stage_filters=STAGE_FILTERS,
                                    blocks_per_stage=BLOCKS_PER_STAGE)
        result.update(torch=torch_resnet.parameter_counts(model),
                      torch_macs_per_image=torch_resnet.multiply_accumulates(model, IMAGE_SIZE))
        result["match"] = result["keras"] == result["torch"] and keras_macs == result["torch_macs_per_image"]
    return result


# Measurement.


def measure(sides, args, train_count, validation_count, log):
    """Warm-up, then interleaved rounds of timed epochs and evaluations; images/s per framework."""
    for name, side in sides.items():
        wall, _ = clocks.timed(lambda: side["train_epoch"](args.warmup_steps * args.batch_size))
        log(f"{name}: warm-up training ({args.warmup_steps} steps, compiles) {wall:.1f} s")
        wall, _ = clocks.timed(side["evaluate"])
        log(f"{name}: warm-up evaluation (compiles) {wall:.1f} s")
    train_seconds = {name: [] for name in sides}
    eval_seconds = {name: [] for name in sides}
    names = list(sides)
    for round_index in range(args.repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            wall, _ = clocks.timed(sides[name]["train_epoch"])
            train_seconds[name].append(wall)
            log(f"round {round_index + 1} {name}: epoch of {train_count} images {wall:.2f} s "
                f"= {train_count / wall:.1f} images/s")
        for name in order:
            wall, _ = clocks.timed(sides[name]["evaluate"])
            eval_seconds[name].append(wall)
            log(f"round {round_index + 1} {name}: evaluation of {validation_count} images {wall:.2f} s "
                f"= {validation_count / wall:.1f} images/s")
    results = {}
    for name, side in sides.items():
        train_rate = [train_count / s for s in train_seconds[name]]
        eval_rate = [validation_count / s for s in eval_seconds[name]]
        flop_per_image = 2 * side["macs_per_image"]
        train_flops = 3 * flop_per_image * statistics.median(train_rate)
        eval_flops = flop_per_image * statistics.median(eval_rate)
        results[name] = {
            "train_images_per_second": clocks.spread(train_rate),
            "eval_images_per_second": clocks.spread(eval_rate),
            "train_achieved_tflops": round(train_flops / 1e12, 4),
            "train_mfu_percent": round(100 * train_flops / (args.peak_tflops * 1e12), 4),
            "eval_achieved_tflops": round(eval_flops / 1e12, 4),
            "eval_mfu_percent": round(100 * eval_flops / (args.peak_tflops * 1e12), 4),
            "paper_protocol_projected_hours": projected_hours(statistics.median(train_rate),
                                                              statistics.median(eval_rate)),
            **{key: value for key, value in side.items() if key not in ("train_epoch", "evaluate")},
        }
    return results


def projected_hours(train_images_per_second, eval_images_per_second):
    """The paper's 200 epochs: train on 50,000 images, evaluate SGD + 5 EMAs on 10,000, each epoch.

    Leaves out the EMA updates (0.05 % of the training time at T=16) and the
    swaps and host copies (< 1 % of the evaluations), both measured on CPU
    (bench/ema_overhead.py), and the one BatchNorm recomputation at the end.
    """
    epoch_seconds = (PAPER_TRAIN_IMAGES / train_images_per_second
                     + PAPER_EVALUATED_MODELS * PAPER_VALIDATION_IMAGES / eval_images_per_second)
    return round(PAPER_EPOCHS * epoch_seconds / 3600, 3)


def describe_devices(with_torch):
    import jax

    devices = {"jax": [f"{d.platform}:{d.device_kind}" for d in jax.devices()], "host_cpu": cpu_model()}
    if with_torch:
        import torch

        devices["torch"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return devices


def cpu_model():
    names = []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
        raise SystemExit(f"error: this benchmark measures the JAX backend; unset KERAS_BACKEND "
                         f"(it is {os.environ['KERAS_BACKEND']!r})")
    # JAX would take 75 % of the GPU's memory up front; leave the PyTorch peer its share.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    if args.smoke:  # one CPU thread each, as torch_resnet.peer explains; jax is not imported yet
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    tensorflow_blocked = block_tensorflow()
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    load_before = clocks.load_averages()
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.1f} s, load {os.getloadavg()[0]:.1f}] {message}", flush=True)

    if not with_torch:
        log("PyTorch " + ("skipped (--no-torch)" if args.no_torch else "is not installed") + ": the JAX half only")
    (train, validation) = make_data(args)
    filters = stage_filters(args.width_divisor)
    sides = {"keras_jax": keras_side(args, filters, train, validation)}
    if with_torch:
        sides["torch"] = torch_side(args, filters, train, validation)
    log("data and timed models built")
    counts = full_width_counts(with_torch)
    log(f"ResNet-18 parameters: Keras {counts['keras']}"
        + (f", PyTorch {counts['torch']}: {'match' if counts['match'] else 'DIFFER'}" if with_torch else ""))
    shapes = {name: (side["parameters"], side["macs_per_image"]) for name, side in sides.items()}
    if len(set(map(repr, shapes.values()))) > 1:
        raise SystemExit(f"error: the timed models differ (parameters, MACs per image): {shapes}")
    timed = measure(sides, args, len(train[0]), len(validation[0]), log)

    import jax
    import keras

    versions = {"keras": keras.__version__, "jax": jax.__version__, "python": platform.python_version()}
    if with_torch:
        import torch

        versions["torch"] = torch.__version__
    result = {
        "smoke": args.smoke,
        "note": ("CPU smoke run, one CPU thread per framework: the numbers say nothing about GPU speed"
                 if args.smoke else None),
        "argv": argv,
        "command": "python bench/gpu_throughput.py " + " ".join(argv),
        "config": {key: getattr(args, key) for key in (*DEFAULTS, "peak_tflops")}
        | {"stage_filters": filters, "timed_train_images": len(train[0]),
           "timed_validation_images": len(validation[0])},
        "git_commit": clocks.git_commit(ROOT),
        "script_changed_since_commit": clocks.script_changed_since_commit(ROOT, "bench/gpu_throughput.py"),
        "devices": describe_devices(with_torch),
        "versions": versions,
        "tensorflow_blocked": tensorflow_blocked,
        "tensorflow_imported": sys.modules.get("tensorflow") is not None,
        "torch_peer": ("measured" if with_torch
                       else "skipped: --no-torch" if args.no_torch else "skipped: not installed"),
        "resnet18_parameters": counts,
        "results": timed,
        "keras_over_torch": {
            name: round(timed["keras_jax"][name]["median"] / timed["torch"][name]["median"], 3)
            for name in ("train_images_per_second", "eval_images_per_second")
        } if with_torch else None,
        "load_average_before": load_before,
        "load_average_after": clocks.load_averages(),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write(args.out, result)
    report(result)
    return result


def write(path, result):
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)


def report(result):
    print(f"\n{'SMOKE (CPU) ' if result['smoke'] else ''}results -> {result['devices']}")
    for name, side in result["results"].items():
        print(f"  {name:10} train {side['train_images_per_second']['median']:10.1f} images/s "
              f"(MFU {side['train_mfu_percent']:.3g} %), eval {side['eval_images_per_second']['median']:10.1f} "
              f"images/s (MFU {side['eval_mfu_percent']:.3g} %), paper protocol "
              f"{side['paper_protocol_projected_hours']:.3g} h")
    if result["keras_over_torch"]:
        print(f"  Keras / PyTorch: train {result['keras_over_torch']['train_images_per_second']}x, "
              f"eval {result['keras_over_torch']['eval_images_per_second']}x")


if __name__ == "__main__":
    main()
