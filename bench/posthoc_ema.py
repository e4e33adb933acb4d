"""What post-hoc EMA costs: memory, disk, update time, reconstruction time and error.

Claim (issue 13): tracking 2 power-function EMAs (PowerFunctionEMA, updated
every step) and snapshotting them costs less memory than the paper's 5 tracked
EMAs and a negligible share of training time; rebuilding an average from the
snapshots takes a fraction of a second before the BatchNorm recompute and
evaluation that any selection needs; float16 snapshots halve the disk at a
measured extra reconstruction error.

Evidence: `python bench/posthoc_ema.py [RUN]` (default RUN: the real run
reproductions/small-v2/posthoc/run, ResNet-20, 30 epochs x 79 steps, a snapshot
every epoch), TensorFlow backend on this machine's 2 shared CPU cores;
results in bench/results/posthoc_ema.json (one run, after the fix that makes
the coefficients sum to 1, while other training jobs and a test suite kept
the cores loaded, load average ~8: its times are upper bounds and vary from
run to run; three runs within 5 minutes gave a least-squares median of 136,
18 and 7 ms, the last with OPENBLAS_NUM_THREADS=1, whose BLAS threads do not
contend with the other jobs):

    averages held          2 power EMAs 2.17 MB vs the paper's 5 EMAs 5.42 MB (0.40x)
    snapshots on disk      30 x 2.24 MB = 64 MiB float32; float16 31 MiB
    fused update           2 power EMAs 4.8 ms every step = 0.65 % of a 735 ms step
                           5 EMAs 8.0 ms every T=4 steps = 0.27 %
    reconstruction         least squares (coefficients summing to 1) 18 ms, weighted
                           sum of the snapshots (reads included) 0.75 s per target
                           (medians of 24)
    float16 snapshots      relative weight distance to the float32 reconstruction
                           at most 2.7e-4 (over the 24 targets)

The previous recording (while only a test suite shared the cores, before
the fix): update 4.3 ms = 0.97 % of a 440 ms step, 5 EMAs 0.46 %; least
squares 3.9 ms, sum 0.31 s; float16 2.7e-4.

The per-epoch evaluation of every tracked EMA (4.66x an SGD evaluation for 5
decays, bench/ema_overhead.py) is what post-hoc EMA saves; a rebuilt target
costs its BN recompute and one evaluation, once, after training.

Method:
1. Memory: bytes of the averages held (`len(decays)` float32 copies of the
   averaged variables for MultiEMA, `len(sigma_rels)` for PowerFunctionEMA).
2. Disk: the run's snapshot files (sizes on disk) and the same in float16.
3. Update: the fused update of each callback, timed over `--calls` calls
   (median), against the steady training step of the same model on the same
   machine (one `fit` of `--steps` steps); per-step cost: MultiEMA's update
   / T, PowerFunctionEMA's every step.
4. Reconstruction: for every decay the run tracked and every 5th epoch, the
   least-squares solve (the profiles and the constrained fit) and the
   weighted sum of the snapshots (file reads included), timed; and the
   relative weight distance between the reconstruction from the float32
   snapshots and from the same snapshots rounded to float16.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = __file__.rsplit("/bench/", 1)[0]
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_file  # noqa: E402

DEFAULT_RUN = os.path.join(ROOT, "reproductions", "small", "posthoc", "run")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=DEFAULT_RUN, help="a run trained with --post-hoc-ema")
    parser.add_argument("--calls", type=int, default=50, help="timed update calls per callback")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    return parser.parse_args(argv)


def memory_and_disk(run, config, values):
    from callbacks import power_snapshots

    snapshots = power_snapshots.list_snapshots(os.path.join(run, "power_ema"))
    disk = sum(os.path.getsize(path) for _, path in snapshots)
    sigmas = len(config["post_hoc_sigma_rels"])
    return {
        "averaged_values": values,
        "multi_ema_decays": len(config["ema_decays"]),
        "multi_ema_bytes": 4 * values * len(config["ema_decays"]),
        "paper_five_emas_bytes": 4 * values * 5,
        "power_ema_bytes": 4 * values * sigmas,
        "snapshots": len(snapshots),
        "snapshot_disk_bytes_float32": disk,
        "snapshot_disk_bytes_float16_estimate": sum(
            power_snapshots.snapshot_bytes(values, sigmas, "float16") for _ in snapshots),
        "per_snapshot_bytes_float32": disk // max(1, len(snapshots)),
    }


def update_times(config, calls, steps):
    """Median seconds of one fused update (MultiEMA, 5 decays; PowerFunctionEMA, 2) and of one train step."""
    from utils import quiet

    quiet.import_tensorflow()
    import keras

    import models
    from callbacks.ema import MultiEMA
    from callbacks.power_ema import PowerFunctionEMA

    model = models.build_model(config["model"], 10)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128 * steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    step_ends = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_ends.append(time.perf_counter())

    model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[Clock()])
    step_seconds = statistics.median(np.diff(step_ends[1:]))
    timings = {}
    for name, callback in (("multi_ema_5", MultiEMA(every_steps=1)), ("power_ema_2", PowerFunctionEMA())):
        callback.set_model(model)
        callback.averages.build(model)
        callback.averages.start()
        callback.averages.step = 1000  # any step past the first: β_t of a typical update
        factors = callback.averages.decay_factors()
        callback.averages._update(factors)  # compile
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            callback.averages._update(factors)
            keras.ops.convert_to_numpy(callback.averages.averages[0][0, 0])  # wait for it
            seconds.append(time.perf_counter() - started)
        timings[name] = statistics.median(seconds)
    every = config["ema_every_steps"]
    return {
        "train_step_seconds": step_seconds,
        "multi_ema_5_update_seconds": timings["multi_ema_5"],
        "power_ema_2_update_seconds": timings["power_ema_2"],
        f"multi_ema_5_per_step_share_T{every}": timings["multi_ema_5"] / every / step_seconds,
        "power_ema_2_per_step_share": timings["power_ema_2"] / step_seconds,
    }


def reconstruction(run, config):
    from callbacks import power_snapshots
    from evaluation import posthoc, runs

    snapshots = posthoc.snapshots_of(os.path.join(run, "power_ema"))
    per_epoch = runs.steps_per_epoch(config)
    epochs = list(range(5, config["epochs"] + 1, 5))
    rows = []
    for decay in config["ema_decays"]:
        for epoch in epochs:
            started = time.perf_counter()
            target = posthoc.plan_one(snapshots, "ema", decay, epoch, per_epoch, config)
            solved = time.perf_counter()
            weights = posthoc.combine(target)
            combined = time.perf_counter()
            half = None
            for coefficient, snapshot in zip(target.reconstruction.coefficients, target.snapshots):
                rounded = [coefficient * a.astype("float16").astype("float64")
                           for a in power_snapshots.read_averages(snapshot.path, snapshot.index)]
                half = rounded if half is None else [h + r for h, r in zip(half, rounded)]
            rows.append({
                "decay": decay, "epoch": epoch, "snapshots_used": len(target.snapshots),
                "profile_residual": target.reconstruction.residual,
                "solve_seconds": solved - started, "combine_seconds": combined - solved,
                "float16_vs_float32_relative_distance": posthoc.relative_distance(half, weights),
            })
    return rows


def main(argv=None):
    args = parse_args(argv)
    with open(os.path.join(args.run, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    from callbacks import power_snapshots

    (_, first), *_ = power_snapshots.list_snapshots(os.path.join(args.run, "power_ema"))
    values = sum(a.size for a in power_snapshots.read_averages(first, 0))
    results = {"run": os.path.relpath(args.run, ROOT), "memory_and_disk": memory_and_disk(args.run, config, values)}
    results["reconstruction"] = reconstruction(args.run, config)
    results["update"] = update_times(config, args.calls, args.steps)
    path = results_file.write("posthoc_ema", results)
    print(json.dumps({k: v for k, v in results.items() if k != "reconstruction"}, indent=2))
    rows = results["reconstruction"]
    print(f"reconstruction: solve median {1e3 * statistics.median(r['solve_seconds'] for r in rows):.1f} ms, "
          f"combine median {1e3 * statistics.median(r['combine_seconds'] for r in rows):.1f} ms, "
          f"float16 vs float32 max {max(r['float16_vs_float32_relative_distance'] for r in rows):.2e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
