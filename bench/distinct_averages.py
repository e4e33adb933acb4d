"""How many EMA evaluations the distinct-average rule saves, on real schedules.

Under the decay warm-up min(α, (t+1)/(t+10)) (paper §4.1) every decay above
(t+1)/(t+10) holds the same average, and `MultiEMA` evaluates each distinct
average once per epoch (`identical_groups`). This replays the factors that
`MultiEMA.decays_at` gives at every update of a schedule and counts the
evaluations per epoch with and without the rule; no training is needed, the
grouping is exact. Results: bench/results/distinct_averages.json.

    python bench/distinct_averages.py
"""

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")  # no TensorFlow start-up needed here

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_file  # noqa: E402
from callbacks.ema import DEFAULT_DECAYS, MultiEMA  # noqa: E402
from callbacks.warmup import regroup  # noqa: E402

SCHEDULES = {
    # name: (decays, every_steps, steps_per_epoch, epochs, warmup)
    "paper protocol (CIFAR 40k/128, 200 epochs, T=16)": (DEFAULT_DECAYS, 16, 313, 200, "steps"),
    "paper protocol, warm-up counted in EMA updates (before)": (DEFAULT_DECAYS, 16, 313, 200, "updates"),
    "README small run (4,000 images, 4 epochs, T=16)": (DEFAULT_DECAYS, 16, 32, 4, "steps"),
    "README 12-epoch run (40k, T=2)": (DEFAULT_DECAYS, 2, 313, 12, "steps"),
    "reproduce --budget small (10k, 30 epochs, T=4)": ((0.968, 0.984, 0.992, 0.996), 4, 79, 30, "steps"),
}


def evaluations(decays, every_steps, steps_per_epoch, epochs, warmup):
    ema = MultiEMA(decays=decays, every_steps=every_steps, warmup=warmup)
    labels, updates, per_epoch = [0] * len(decays), 0, []
    for epoch in range(epochs):
        for step in range(epoch * steps_per_epoch + 1, (epoch + 1) * steps_per_epoch + 1):
            if step % every_steps:
                continue
            labels = regroup(labels, np.float32(ema.decays_at(step, updates)).tolist())
            updates += 1
        per_epoch.append(len(set(labels)))
    return per_epoch


def main():
    results = {}
    for name, (decays, every, steps, epochs, warmup) in SCHEDULES.items():
        per_epoch = evaluations(decays, every, steps, epochs, warmup)
        separate = len(decays) * epochs
        shared = sum(per_epoch)
        first_all_distinct = next((e + 1 for e, n in enumerate(per_epoch) if n == len(decays)), None)
        results[name] = {"evaluations_separate": separate, "evaluations_distinct": shared,
                         "saving": round(1 - shared / separate, 4),
                         "first_epoch_all_distinct": first_all_distinct}
        print(f"{name:<58} {separate:>5} -> {shared:>5} evaluations of EMAs "
              f"({100 * (1 - shared / separate):4.1f} % fewer); all distinct from epoch {first_all_distinct}")
    results_file.write("distinct_averages", results)


if __name__ == "__main__":
    main()
