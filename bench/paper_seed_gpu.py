"""As much of one paper-budget seed as fits a deadline, on Keras's JAX backend: the per-seed cost on one GPU.

Claim (to be measured on a GPU; issue 27 item 6): the wall time of one seed of the paper's protocol
(Morales-Brotons et al. §4.1, Table 22: ResNet-18, 100 classes, 40,000 training images of the 80/20
split at batch 128 = 313 steps per epoch, 200 epochs, SGD Nesterov 0.9 with coupled L2 1e-4, 5-epoch
warm-up then cosine, 5 EMAs at T = 16 with the decay warm-up and EMAN BatchNorm, SGD and every EMA
evaluated on 10,000 validation images after every epoch), which the analysis plan's power rows
(docs/analysis-plan.md) need as "the cost of those seeds on one GPU". No GPU figure exists yet.

What it runs: the project's own model (`models.build_model("resnet18")`), optimizer
(`training.optimizer.TorchSGD`, PyTorch's Nesterov form) and `callbacks.MultiEMA`, through a real
`model.fit` over NumPy arrays, until `--deadline-seconds` (checked after every epoch), then projects
the 200 epochs from the median timed epoch. The data are CIFAR-shaped random images with random labels
(the GPU machine has no TensorFlow, so no TFDS, and no CIFAR-100 exists here): the accuracies are
meaningless, the cost is the protocol's, except the data pipeline (random crop + flip on the host is
cheap next to a ResNet-18 step: bench/data_pipeline.py measures 31,000-56,000 images/s on 2 CPU cores).
TensorFlow is blocked before Keras is imported, as on the target machine.

    KERAS_BACKEND=jax python bench/paper_seed_gpu.py --out $OUT/paper_seed_gpu.json
    KERAS_BACKEND=jax python bench/paper_seed_gpu.py --smoke   # CPU: the code path only

Evidence so far: the CPU smoke only (numbers in bench/results/paper_seed_gpu.json, meaningless for a GPU).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_throughput  # noqa: E402  (block_tensorflow, the model builder)
import results_file  # noqa: E402

from callbacks.defaults import DEFAULT_DECAYS, DEFAULT_EVERY_STEPS  # noqa: E402
from training.config import default_weight_decay  # noqa: E402

PAPER = {"epochs": 200, "train_images": 40_000, "validation_images": 10_000, "batch_size": 128,
         "eval_batch_size": 512, "warmup_epochs": 5, "width_divisor": 1}
SMOKE = {"epochs": 200, "train_images": 256, "validation_images": 128, "batch_size": 32,
         "eval_batch_size": 64, "warmup_epochs": 5, "width_divisor": 8}
LEARNING_RATE = 0.1  # untuned: cost does not depend on it


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: 1/8 width, 256 images")
    parser.add_argument("--deadline-seconds", type=float, default=240.0,
                        help="stop after the epoch that passes this many seconds of fit (default 240)")
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                        help="Keras dtype policy (default float32, the app's default)")
    parser.add_argument("--out", default=os.path.join(results_file.DIRECTORY, "paper_seed_gpu.json"))
    args = parser.parse_args(argv)
    if args.deadline_seconds <= 0:
        parser.error(f"--deadline-seconds must be > 0; received {args.deadline_seconds}")
    for name, value in (SMOKE if args.smoke else PAPER).items():
        setattr(args, name, value)
    return args


def run(args):
    blocked = gpu_throughput.block_tensorflow()
    import jax
    import keras
    import numpy as np

    from callbacks import MultiEMA
    from training.optimizer import TorchSGD

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(args.precision)
    rng = np.random.default_rng(0)

    def images(count):
        return (rng.standard_normal((count, 32, 32, 3), dtype=np.float32),
                rng.integers(0, gpu_throughput.NUM_CLASSES, count).astype(np.int32))

    train, validation = images(args.train_images), images(args.validation_images)
    steps_per_epoch = -(-args.train_images // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total_steps - args.warmup_epochs * steps_per_epoch,
        warmup_target=LEARNING_RATE, warmup_steps=args.warmup_epochs * steps_per_epoch)
    model = gpu_throughput.build_keras_model(gpu_throughput.stage_filters(args.width_divisor))
    model.compile(optimizer=TorchSGD(learning_rate=schedule, momentum=0.9, nesterov=True,
                                     l2=default_weight_decay("resnet18")),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    ema = MultiEMA(decays=DEFAULT_DECAYS, every_steps=DEFAULT_EVERY_STEPS, validation_data=validation,
                   validation_batch_size=args.eval_batch_size)
    clock = epoch_clock(args.deadline_seconds)
    started = time.perf_counter()
    model.fit(*train, batch_size=args.batch_size, epochs=args.epochs, validation_data=validation,
              validation_batch_size=args.eval_batch_size, callbacks=[ema, clock], verbose=0)
    fit_seconds = time.perf_counter() - started
    timed = clock.seconds[1:] or clock.seconds  # the first epoch compiles
    median = statistics.median(timed)
    return {
        "what": "one paper-budget seed on Keras/JAX, deadline-stopped; random CIFAR-shaped data",
        "smoke": args.smoke, "argv": sys.argv[1:], "tensorflow_blocked": blocked,
        "devices": [str(device) for device in jax.devices()], "python": platform.python_version(),
        "versions": {"jax": jax.__version__, "keras": keras.__version__}, "precision": args.precision,
        "protocol": {name: getattr(args, name) for name in PAPER} | {
            "ema_decays": list(DEFAULT_DECAYS), "ema_every_steps": DEFAULT_EVERY_STEPS,
            "models_evaluated_per_epoch": 1 + len(DEFAULT_DECAYS), "steps_per_epoch": steps_per_epoch},
        "epochs_run": len(clock.seconds), "fit_seconds": round(fit_seconds, 2),
        "epoch_seconds": [round(s, 3) for s in clock.seconds],
        "median_epoch_seconds_after_the_first": round(median, 3),
        "projected_seed_hours": round((clock.seconds[0] + median * (args.epochs - 1)) / 3600, 3),
    }


def epoch_clock(deadline):
    """A callback that times each epoch (training, then SGD's and every EMA's evaluation: place it after
    MultiEMA) and stops the fit after the epoch that passes `deadline` seconds."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self._start, self._begin = [], None, time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            if time.perf_counter() - self._begin > deadline:
                self.model.stop_training = True

    return EpochClock()


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps({k: result[k] for k in ("devices", "epochs_run", "median_epoch_seconds_after_the_first",
                                             "projected_seed_hours")}))
    return result


if __name__ == "__main__":
    main()
