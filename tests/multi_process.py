"""One process of a multi-process JAX run (tests/test_multi_process.py): tests/two_devices.py's toy, or app.train.

The caller sets KERAS_BACKEND=jax, one CPU device per process, and, for a
multi-process run, the KERAS_DISTRIBUTION_* variables that
`training.distribution.initialize_processes` reads; without them this is the
one-process reference run (for app.train, one process with 2 CPU devices).

    python -m tests.multi_process toy OUT    # writes OUT.<process id>.npz
    python -m tests.multi_process train ARGS...    # python -m app.train ARGS..., once joined
    TERMINATE_AT_STEP=k python -m tests.multi_process train ARGS...    # ... with a SIGTERM after step k

The input is tf.data batches of the global batch size, as app.train feeds: in
a multi-process run `training.distribution.GlobalBatchDataParallel` hands each
process the rows of every global batch that its devices hold, and Keras
assembles the global batch with `jax.make_array_from_process_local_data`.
(Keras refuses NumPy input there.) Exit status 75, with "cannot: <reason>" on
stderr: this JAX build cannot gather across processes on CPU (tried right
after joining).
"""

import os
import signal
import sys
import threading
import time

import numpy as np

from utils import quiet

quiet.import_tensorflow()
from training import distribution  # noqa: E402

CANNOT = 75  # EX_TEMPFAIL: the test skips
GLOBAL_BATCH = 32


def cross_process_failure(timeout_seconds=60):
    """None if a gather across the processes returns every process id, else why not.

    A gather that never returns is a failure too: a watchdog reports it and
    ends the process.
    """
    import jax
    from jax.experimental import multihost_utils

    def hung():
        print(f"cannot: a gather across processes on CPU did not finish in {timeout_seconds} s",
              file=sys.stderr, flush=True)
        os._exit(CANNOT)

    watchdog = threading.Timer(timeout_seconds, hung)
    watchdog.start()
    try:
        ids = np.asarray(multihost_utils.process_allgather(np.array([jax.process_index()]), tiled=True))
    except Exception as error:  # whatever this build raises is the reason to report
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
    finally:
        watchdog.cancel()
    if sorted(ids.tolist()) != list(range(jax.process_count())):
        return f"a gather of the process ids across processes returned {ids.tolist()}"
    return None


def toy(out):
    """The recipe of tests/two_devices.py's toy on tf.data input; saves weights, averages and metrics."""
    import jax
    import keras
    import tensorflow as tf

    from callbacks import SWA, MultiEMA

    devices = distribution.resolve(None)
    with distribution.data_parallel(devices):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(256, 8)).astype("float32"), rng.integers(0, 3, 256)
        # Global batches; under several processes each feeds its rows of them (GlobalBatchDataParallel).
        train = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        validation = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(GLOBAL_BATCH)
        ema = MultiEMA(decays=(0.9, 0.99), every_steps=2, validation_data=validation)
        swa = SWA(start_epoch=0, validation_data=validation)
        history = model.fit(train, epochs=2, shuffle=False, verbose=0, callbacks=[ema, swa])
        arrays = {f"weight/{i}": w for i, w in enumerate(model.get_weights())}
        arrays.update({f"ema/{key}": value for key, value in ema.get_state().items()})
        arrays.update({f"history/{key}": np.asarray(value) for key, value in history.history.items()})
        with swa.swapped_in():
            arrays.update({f"swa/{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(f"{out}.{jax.process_index()}.npz", processes=jax.process_count(), devices=devices, **arrays)


def join():
    """Joins the other processes (if any); exits with CANNOT if they cannot gather across processes."""
    if distribution.initialize_processes(timeout_seconds=60) > 1:
        reason = cross_process_failure()
        if reason:
            print(f"cannot: {reason}", file=sys.stderr, flush=True)
            sys.exit(CANNOT)


def train(argv):
    """`python -m app.train argv`, which finds this process already joined.

    TERMINATE_AT_STEP=k: process 0 sends itself a SIGTERM right after optimizer
    step k, as a scheduler preempting one host would (JAX's preemption service
    tells the others); process 1 is the slower host: it takes 3 s more to save
    its checkpoint at the stop, so process 0 is done first. (Process 0 hosts
    JAX's coordination service: had it exited at once, JAX would have aborted
    process 1 mid-save. CI saw it happen by chance.)
    """
    from app import train as train_command

    join()
    terminate_step = int(os.environ.get("TERMINATE_AT_STEP", 0))
    if terminate_step and distribution.process_count() > 1:
        import jax

        from training import stopping

        batch_end = stopping.StopAtStepEnd.on_train_batch_end

        def on_train_batch_end(self, batch, logs=None):
            batch_end(self, batch, logs)
            if stopping.POSITION.steps_done == terminate_step and jax.process_index() == 0:
                os.kill(os.getpid(), signal.SIGTERM)

        stopping.StopAtStepEnd.on_train_batch_end = on_train_batch_end
        if jax.process_index() == 1:
            from training import checkpoint

            save_within_epoch = checkpoint.RunCheckpoint.save_within_epoch

            def slow_save_within_epoch(self, *args, **kwargs):
                time.sleep(3)
                return save_within_epoch(self, *args, **kwargs)

            checkpoint.RunCheckpoint.save_within_epoch = slow_save_within_epoch
    train_command.exit_fast_on_interrupt(lambda: train_command.main(argv))


if __name__ == "__main__":
    if sys.argv[1:2] == ["toy"] and len(sys.argv) == 3:
        join()
        toy(sys.argv[2])
    elif sys.argv[1:2] == ["train"]:
        train(sys.argv[2:])
    else:
        sys.exit(__doc__)
