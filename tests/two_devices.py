"""Runs `app.train.main(argv)`, or a toy fit, on 2 CPU devices (tests/test_distribution.py).

TensorFlow: two logical CPU devices, configured before TensorFlow starts.
JAX: `XLA_FLAGS=--xla_force_host_platform_device_count=2` (set by the caller).

    python -m tests.two_devices train ARGV...
    python -m tests.two_devices toy DEVICES OUT.npz    # MultiEMA + SWA on a model without BatchNorm
"""

import os
import sys

import numpy as np

from utils import quiet

quiet.import_tensorflow()
import keras  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from callbacks import SWA, MultiEMA  # noqa: E402
from training import distribution  # noqa: E402


def toy(devices, out):
    """A model without BatchNorm: weights, two EMAs and SWA after 2 epochs."""
    with distribution.data_parallel(devices):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(256, 8)).astype("float32"), rng.integers(0, 3, 256)
        ema = MultiEMA(decays=(0.9, 0.99), every_steps=2, validation_data=(x[:64], y[:64]))
        swa = SWA(start_epoch=0, validation_data=(x[:64], y[:64]), batch_size=64)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[ema, swa])
        state = ema.get_state()
        arrays = {f"weight/{i}": w for i, w in enumerate(model.get_weights())}
        arrays.update({k: v for k, v in state.items() if k.startswith("average/")})
        with swa.swapped_in():
            arrays.update({f"swa/{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(out, devices=len(distribution.devices_for_data_parallelism()), **arrays)


if __name__ == "__main__":
    if sys.argv[1] == "toy":
        toy(int(sys.argv[2]), sys.argv[3])
    else:
        from app import train

        train.exit_fast_on_interrupt(lambda: train.main(sys.argv[2:]))
