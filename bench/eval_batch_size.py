"""Forward-pass (evaluation) throughput of ResNet-20 by batch size, to choose `--eval-batch-size`.

Evaluation needs no gradients, so it can use a larger batch than training.
Times `model.evaluate` over the same 4,096 CIFAR-shaped images at each batch
size (after one warm-up call), in one run, interleaved over REPEATS rounds;
also checks that the accuracy is identical and the loss equal to float32
rounding. Results: bench/results/eval_batch_size.json.

    python bench/eval_batch_size.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_file  # noqa: E402

from utils import quiet  # noqa: E402

quiet.import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402

SIZES = (128, 256, 512, 1024)
IMAGES = 4096
REPEATS = 3


def main():
    keras.utils.set_random_seed(0)
    model = models.build_model("resnet20", 10)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(IMAGES, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, IMAGES)
    seconds = {size: [] for size in SIZES}
    results = {}
    for size in SIZES:  # compile each batch shape once
        results[size] = model.evaluate(x, y, batch_size=size, verbose=0, return_dict=True)
    for _ in range(REPEATS):
        for size in SIZES:
            started = time.perf_counter()
            model.evaluate(x, y, batch_size=size, verbose=0)
            seconds[size].append(time.perf_counter() - started)
    report = {}
    for size in SIZES:
        rate = IMAGES / min(seconds[size])
        report[size] = {"images_per_second": round(rate, 1), "ratio_to_128": None,
                        "accuracy": results[size]["accuracy"], "loss": results[size]["loss"]}
    for size in SIZES:
        report[size]["ratio_to_128"] = round(report[size]["images_per_second"] / report[128]["images_per_second"], 3)
        print(f"batch {size:>5}: {report[size]['images_per_second']:8.1f} images/s "
              f"({report[size]['ratio_to_128']:.2f}x batch 128), accuracy {report[size]['accuracy']:.4f}, "
              f"loss {report[size]['loss']:.6f}")
    results_file.write("eval_batch_size", report)


if __name__ == "__main__":
    main()
