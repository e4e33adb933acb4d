"""What the averages cost per device under `keras.distribution.ModelParallel`: sharded vs replicated.

Claim: on a 2 x 4 ("batch", "model") mesh of 8 virtual CPU devices, a wide
Dense model whose kernels are split on "model" keeps its 3 EMAs (MultiEMA),
its SWA average and its 2 power-function EMAs with each device holding its
shard of each (callbacks/layouts.py), not a replica; and the fused EMA update,
shard-local, costs a smaller share of a training step than the replicated one.
Numbers: see bench/results/sharded_averages.json and the README section.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python bench/sharded_averages.py

"Replicated" is the layout the averages had before (created without a
layout: no LayoutMap entry matches their names, so ModelParallel replicates
them): `layouts.layout_like` is replaced by a replicated layout for that half
of the run. Bytes are read from the arrays' `addressable_shards` on device 0.
Times: medians of interleaved rounds in one process (the update called alone,
blocked until ready; a training step by `train_on_batch`); ratios are within
one run. On CPU the 8 "devices" share the machine's cores, so the times show
the work each layout does, not a multi-accelerator speed-up.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402

from bench import results_file  # noqa: E402
from callbacks import SWA, MultiEMA, PowerFunctionEMA  # noqa: E402
from callbacks import layouts  # noqa: E402

WIDTH, DEPTH, BATCH, ROUNDS, CALLS = 1024, 3, 64, 5, 10
DECAYS = (0.9, 0.99, 0.999)


def distribution():
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), keras.distribution.list_devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[r".*dense_\d+/kernel"] = (None, "model")
    layout_map[r".*dense_\d+/bias"] = ("model",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def replicated_layout_like(weight, leading_axes=0):
    mesh = layouts.current_distribution().device_mesh
    return keras.distribution.TensorLayout((None,) * (leading_axes + len(weight.shape)), mesh)


def device_bytes(values, device):
    return sum(shard.data.nbytes for value in values for shard in getattr(value, "value", value).addressable_shards
               if shard.device == device)


def measure(layout):
    original = layouts.layout_like
    if layout == "replicated":
        layouts.layout_like = replicated_layout_like
    try:
        with distribution().scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((WIDTH,))] + [
                keras.layers.Dense(WIDTH, activation="relu", name=f"dense_{i}") for i in range(DEPTH)])
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
            rng = np.random.default_rng(0)
            x = rng.normal(size=(BATCH * 4, WIDTH)).astype("float32")
            ema = MultiEMA(decays=DECAYS, every_steps=1)
            swa, power = SWA(start_epoch=0), PowerFunctionEMA(sigma_rels=(0.05, 0.1))
            model.fit(x, x, batch_size=BATCH, epochs=1, verbose=0, callbacks=[ema, swa, power])
            device = jax.devices()[0]
            row = {
                "model_bytes_whole": sum(int(np.prod(w.shape)) * 4 for w in model.weights),
                "weights_bytes_device0": device_bytes(model.weights, device),
                "ema_averages_bytes_device0": device_bytes(ema.averages.averages, device),
                "swa_average_bytes_device0": device_bytes(swa._average, device),
                "power_averages_bytes_device0": device_bytes(power.averages.averages, device),
                "update_has_all_gather": "all-gather" in ema.averages._update.compiled_text(
                    ema.averages.decay_factors()),
            }
            factors = ema.averages.decay_factors()
            batch = (x[:BATCH], x[:BATCH])
            update_times, step_times = [], []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                for _ in range(CALLS):
                    ema.averages._update(factors)
                jax.block_until_ready([a.value for a in ema.averages.averages])
                update_times.append((time.perf_counter() - started) / CALLS)
                started = time.perf_counter()
                for _ in range(CALLS):
                    model.train_on_batch(*batch)
                jax.block_until_ready([w.value for w in model.weights])
                step_times.append((time.perf_counter() - started) / CALLS)
            row["update_seconds"] = float(np.median(update_times))
            row["train_step_seconds"] = float(np.median(step_times))
            row["update_share_of_step"] = row["update_seconds"] / row["train_step_seconds"]
            return row
    finally:
        layouts.layout_like = original


def main():
    if len(jax.devices()) != 8:
        raise SystemExit("run with XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax")
    sharded, replicated = measure("sharded"), measure("replicated")
    ratios = {
        "ema_bytes_replicated_over_sharded": replicated["ema_averages_bytes_device0"]
        / sharded["ema_averages_bytes_device0"],
        "ema_bytes_sharded_over_weight_shard": sharded["ema_averages_bytes_device0"]
        / sharded["weights_bytes_device0"],
        "update_seconds_replicated_over_sharded": replicated["update_seconds"] / sharded["update_seconds"],
    }
    results = {"command": "KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                          "python bench/sharded_averages.py",
               "model": f"{DEPTH} Dense {WIDTH}x{WIDTH}, mesh 2x4 (batch, model), kernels/biases on model, "
                        f"batch {BATCH}, MultiEMA {DECAYS} every step, SWA, PowerFunctionEMA (0.05, 0.1)",
               "sharded": sharded, "replicated": replicated, "ratios": ratios,
               "load_average": os.getloadavg()}
    print(results_file.write("sharded_averages", results))
    for name in ("sharded", "replicated"):
        r = results[name]
        print(f"{name:10s} device 0: weights {r['weights_bytes_device0'] / 2**20:.2f} MiB, "
              f"3 EMAs {r['ema_averages_bytes_device0'] / 2**20:.2f} MiB, SWA {r['swa_average_bytes_device0'] / 2**20:.2f}"
              f" MiB, 2 power EMAs {r['power_averages_bytes_device0'] / 2**20:.2f} MiB; update "
              f"{r['update_seconds'] * 1e3:.2f} ms = {r['update_share_of_step']:.1%} of a step "
              f"({r['train_step_seconds'] * 1e3:.1f} ms); all-gather in update: {r['update_has_all_gather']}")
    print({k: round(v, 3) for k, v in ratios.items()})


if __name__ == "__main__":
    main()
