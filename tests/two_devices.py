"""Runs `app.train.main(argv)`, or a toy fit, on 2 CPU devices (tests/test_distribution.py).

TensorFlow: two logical CPU devices, configured before TensorFlow starts.
JAX: `XLA_FLAGS=--xla_force_host_platform_device_count=2` (set by the caller).

    python -m tests.two_devices train ARGV...
    python -m tests.two_devices toy DEVICES OUT.npz    # MultiEMA + SWA on a model without BatchNorm
    python -m tests.two_devices toy-bn DEVICES OUT.npz # the same with synchronized BatchNorm, EMAN
                                                       # statistics and the BN recompute
    python -m tests.two_devices toy-bn-local DEVICES OUT.npz  # TensorFlow: per-replica BN (a control)
    python -m tests.two_devices toy 1 ONE.npz 2 TWO.npz  # one fit after the other in one process
    python -m tests.two_devices kill ARGV...           # tests/kill_during_training.py on 2 devices
"""

import sys

import numpy as np

from utils import quiet

quiet.import_tensorflow()
import keras  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from callbacks import SWA, BatchNormRecompute, MultiEMA, PowerFunctionEMA  # noqa: E402
from training import distribution  # noqa: E402


def _toy_model(batch_norm, synchronized=True):
    layers = [keras.Input((8,)), keras.layers.Dense(16)]
    if batch_norm:
        # synchronized: the TensorFlow engine's cross-replica moments; under
        # JAX's SPMD the moments span the global batch anyway.
        tensorflow = keras.backend.backend() == "tensorflow"
        options = {"synchronized": synchronized} if tensorflow else {}
        layers.append(keras.layers.BatchNormalization(**options))
    layers += [keras.layers.ReLU(), keras.layers.Dense(3)]
    return keras.Sequential(layers)


def toy(devices, out, batch_norm=False, synchronized=True):
    """Weights, two EMAs (EMAN statistics), SWA, power-function EMAs and, with BatchNorm,
    the EMAs' recomputed statistics after 2 epochs."""
    with distribution.data_parallel(devices):
        keras.utils.set_random_seed(0)
        model = _toy_model(batch_norm, synchronized)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(256, 8)).astype("float32"), rng.integers(0, 3, 256)
        ema = MultiEMA(decays=(0.9, 0.99), every_steps=2, validation_data=(x[:64], y[:64]))
        swa = SWA(start_epoch=0, validation_data=(x[:64], y[:64]), batch_size=64,
                  train_data=(x, y) if batch_norm else None)
        power = PowerFunctionEMA(sigma_rels=(0.05, 0.1))
        callbacks = [ema, swa, power]
        if batch_norm:
            callbacks.append(BatchNormRecompute(ema, train_data=(x, y), validation_data=(x[:64], y[:64]),
                                                batch_size=32, every_epoch=True, at_end=False))
        history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        state = ema.get_state()
        arrays = {f"weight/{i}": w for i, w in enumerate(model.get_weights())}
        arrays.update({k: v for k, v in state.items() if k.startswith("average/")})
        arrays.update({f"power/{k}": v for k, v in power.get_state().items() if k.startswith("average/")})
        arrays.update({f"log/{k}": np.asarray(v) for k, v in history.history.items()})
        with swa.swapped_in():
            arrays.update({f"swa/{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(out, devices=len(distribution.devices_for_data_parallelism()), **arrays)


if __name__ == "__main__":
    if sys.argv[1] in ("toy", "toy-bn", "toy-bn-local"):
        for devices, out in zip(sys.argv[2::2], sys.argv[3::2]):
            toy(int(devices), out, batch_norm=sys.argv[1] != "toy", synchronized=sys.argv[1] != "toy-bn-local")
    elif sys.argv[1] == "kill":
        from tests import kill_during_training

        sys.argv = sys.argv[1:]
        kill_during_training.main()
    else:
        from app import train

        train.exit_fast_on_interrupt(lambda: train.main(sys.argv[2:]))
