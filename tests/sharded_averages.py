"""Every average under `keras.distribution.ModelParallel` on a 2 x 4 mesh of 8 CPU devices (tests/test_sharded_averages.py).

Run by the test in a subprocess, since JAX reads the device count at start:

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m tests.sharded_averages OUT.json

A Dense + BatchNorm model whose kernels (and the next layer's inputs) are
split over the "model" axis trains 3 epochs with MultiEMA (3 decays, EMAN
statistics), SWA, PowerFunctionEMA (2 profiles, snapshots) and
BatchNormRecompute, once on one device without a distribution and once on the
mesh, in this process. It writes, for the test to assert: the largest
difference between the two runs of every average, every evaluation and every
saved file; each device's bytes of every kind of average, read from the
arrays' `addressable_shards`, beside its bytes of the weights averaged; the
collectives in the compiled EMA update; and a run stopped after epoch 1 and
resumed from `get_state()` files in fresh objects against the uninterrupted one.
"""

import json
import os
import sys
import tempfile

import numpy as np

import keras  # noqa: E402  (KERAS_BACKEND=jax from the caller)
from callbacks import SWA, BatchNormRecompute, MultiEMA, PowerFunctionEMA  # noqa: E402
from callbacks import power_snapshots  # noqa: E402

DECAYS = (0.9, 0.99, 0.999)
SIGMA_RELS = (0.05, 0.1)
EPOCHS = 3
COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "collective-permute", "reduce-scatter")


def mesh_distribution():
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[r".*dense_\d/kernel"] = (None, "model")  # every kernel on its output axis
    layout_map[r".*dense_\d/bias"] = ("model",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = rng.integers(0, 4, 256)
    return x, y


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(64, name="dense_0"), keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(), keras.layers.Dense(64, name="dense_1"), keras.layers.ReLU(),
        keras.layers.Dense(4, name="dense_2")])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def averaging_callbacks(directory):
    x, y = data()
    validation = (x[:64], y[:64])
    ema = MultiEMA(decays=DECAYS, every_steps=2, validation_data=validation, validation_batch_size=32)
    return {
        "ema": ema,
        "swa": SWA(start_epoch=1, train_data=(x, y), validation_data=validation, batch_size=32),
        "power": PowerFunctionEMA(sigma_rels=SIGMA_RELS, snapshot_every_steps=8, directory=directory),
        "bn": BatchNormRecompute(ema, train_data=(x, y), validation_data=validation, batch_size=32),
    }


def fit(model, callbacks, initial_epoch, epochs):
    x, y = data()
    return model.fit(x, y, batch_size=32, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
                     callbacks=list(callbacks.values())).history


def results(model, callbacks, history, directory):
    """Every number the two runs must share, as NumPy arrays by name."""
    x, y = data()
    ema, swa, power, bn = (callbacks[name] for name in ("ema", "swa", "power", "bn"))
    out = {f"weight/{i}": w for i, w in enumerate(model.get_weights())}
    out.update({f"history/{k}": np.asarray(v) for k, v in history.items()})
    out.update({f"ema/{k}": v for k, v in ema.get_state().items() if k.startswith(("average/", "selected/"))})
    out.update({f"swa/{k}": v for k, v in swa.get_state().items() if k.startswith("average/")})
    out.update({f"power/{k}": v for k, v in power.get_state().items() if k.startswith("average/")})
    for decay in DECAYS:
        with ema.swapped_in(decay):
            out[f"evaluate/ema_{decay}"] = np.asarray(model.evaluate(x, y, batch_size=32, verbose=0))
    with swa.swapped_in():
        out["evaluate/swa"] = np.asarray(model.evaluate(x, y, batch_size=32, verbose=0))
    with power.swapped_in(SIGMA_RELS[0]):
        out["evaluate/power"] = np.asarray(model.evaluate(x, y, batch_size=32, verbose=0))
    out.update({f"bn_summary/{d}/{c}/{k}": np.asarray(v) for d, entry in bn.summary().items()
                for c, metrics in entry.items() for k, v in metrics.items()})
    saved = {}
    for path in ema.save_selected(os.path.join(directory, "ema")) + bn.save(os.path.join(directory, "bn")) + [
            swa.save(os.path.join(directory, "swa"))]:
        saved[os.path.basename(path)] = path
    for name, path in sorted(saved.items()):
        with holding_file(model, path):
            out.update({f"file/{name}/{i}": w for i, w in enumerate(model.get_weights())})
    for step, path in power_snapshots.list_snapshots(os.path.join(directory, "power")):
        out.update({f"snapshot/{step}/{j}": np.concatenate([a.ravel() for a in power_snapshots.read_averages(path, j)])
                    for j in range(len(SIGMA_RELS))})
    return out


class holding_file:
    """The model holds a saved weights file inside the block."""

    def __init__(self, model, path):
        self.model, self.path = model, path

    def __enter__(self):
        self.backup = self.model.get_weights()
        self.model.load_weights(self.path)

    def __exit__(self, *exc):
        self.model.set_weights(self.backup)


def device_bytes(values, device):
    """Bytes of `values` (arrays or variables) held on `device`, from their addressable shards."""
    total = 0
    for value in values:
        value = getattr(value, "value", value)
        total += sum(shard.data.nbytes for shard in value.addressable_shards if shard.device == device)
    return total


def memory(model, callbacks):
    """Per device: bytes of the weights each kind averages and of the averages, kept copies included."""
    ema, swa, power, bn = (callbacks[name] for name in ("ema", "swa", "power", "bn"))
    rows = []
    import jax

    for device in jax.devices():
        selected = [ema.selected_values(decay, c) for decay in DECAYS for c in ("accuracy", "loss")]
        rows.append({
            "device": str(device),
            "ema_weights": device_bytes(ema.averages.averaged, device),
            "ema_averages": device_bytes(ema.averages.averages, device),
            "swa_weights": device_bytes(swa._weights, device),
            "swa_averages": device_bytes(swa._average, device),
            "power_weights": device_bytes(power.averages.averaged, device),
            "power_averages": device_bytes(power.averages.averages, device),
            "model_weights": device_bytes(model.weights, device),
            "selected_copy": device_bytes(selected[0], device),
            "swa_final": device_bytes(swa._final_weights, device),
            "bn_selected": device_bytes(next(iter(bn._selected.values())), device),
            "full_weights": sum(int(np.prod(w.shape)) * 4 for w in ema.averages.averaged),
            "selected_on_host": any(isinstance(w, np.ndarray) for s in selected for w in s),
        })
    return rows


def run(mesh, directory, stop_after=None, resume_from=None):
    """A fit on the mesh (or one device); with `stop_after` its first epochs only, its states
    saved as files; with `resume_from` fresh objects restored from them finish the run."""
    scope = mesh_distribution().scope() if mesh else _no_scope()
    with scope:
        model = build()
        callbacks = averaging_callbacks(os.path.join(directory, "power"))
        initial_epoch = 0
        if resume_from is not None:
            model.optimizer.build(model.trainable_variables)
            with np.load(os.path.join(resume_from, "model.npz")) as saved:
                model.set_weights([saved[f"weight/{i}"] for i in range(len(model.weights))])
                for i, variable in enumerate(model.optimizer.variables):
                    variable.assign(saved[f"optimizer/{i}"])
                initial_epoch = int(saved["epoch"])
            for name, callback in callbacks.items():
                if hasattr(callback, "set_state"):
                    with np.load(os.path.join(resume_from, f"{name}.npz")) as saved:
                        callback.set_state(dict(saved))
        history = fit(model, callbacks, initial_epoch, stop_after or EPOCHS)
        if stop_after is not None:
            np.savez(os.path.join(directory, "model.npz"), epoch=stop_after,
                     **{f"weight/{i}": w for i, w in enumerate(model.get_weights())},
                     **{f"optimizer/{i}": keras.ops.convert_to_numpy(v)
                        for i, v in enumerate(model.optimizer.variables)})
            for name, callback in callbacks.items():
                if hasattr(callback, "get_state"):
                    np.savez(os.path.join(directory, f"{name}.npz"), **callback.get_state())
            return None
        out = results(model, callbacks, history, directory)
        report = {}
        if mesh:
            report["memory"] = memory(model, callbacks)
            ema = callbacks["ema"]
            text = ema.averages._update.compiled_text(ema.averages.decay_factors())
            report["collectives_in_update"] = [name for name in COLLECTIVES if name in text]
            report["update_hlo_has_sharding"] = "sharding" in text or "devices=" in text
            # Each array's partition spec padded to its rank: one mesh axis name (or None) per axis.
            report["average_layouts"] = [_spec(a) for a in ema.averages.averages]
            report["weight_layouts"] = [_spec(w) for w in ema.averages.averaged]
        return out, report


def _spec(variable):
    spec = list(variable.value.sharding.spec)
    return spec + [None] * (len(variable.shape) - len(spec))


class _no_scope:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def largest_difference(a, b):
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    worst = {}
    for key in a:
        x, y = np.asarray(a[key], "float64"), np.asarray(b[key], "float64")
        assert x.shape == y.shape, (key, x.shape, y.shape)
        worst[key] = float(np.max(np.abs(x - y), initial=0.0) / max(1.0, float(np.max(np.abs(y), initial=0.0))))
    return worst


def main(out_path):
    assert len(keras.distribution.list_devices()) == 8, keras.distribution.list_devices()
    with tempfile.TemporaryDirectory() as tmp:
        one, _ = run(False, os.path.join(tmp, "one"))
        sharded, report = run(True, os.path.join(tmp, "mesh"))
        os.makedirs(os.path.join(tmp, "killed"))
        run(True, os.path.join(tmp, "killed"), stop_after=EPOCHS - 1)  # SWA has captured twice by then
        resumed, _ = run(True, os.path.join(tmp, "resumed"), resume_from=os.path.join(tmp, "killed"))
        # The resumed fit's history and snapshots hold its own epoch and steps only.
        sharded_after = {k: v for k, v in sharded.items()
                         if not k.startswith("history/") and (k in resumed or not k.startswith("snapshot/"))}
        resumed_after = {k: v for k, v in resumed.items() if not k.startswith("history/")}
        report["resumed_snapshots"] = sorted(k for k in resumed if k.startswith("snapshot/"))
        report["one_vs_mesh"] = largest_difference(sharded, one)
        report["resumed_vs_uninterrupted"] = largest_difference(resumed_after, sharded_after)
        report["keys"] = len(one)
    with open(out_path, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
