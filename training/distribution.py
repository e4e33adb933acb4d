"""Synchronous data parallelism with the backend's own engine.

- TensorFlow: `tf.distribute.MirroredStrategy` over the first N devices; the
  model, its optimizer and every average are built inside its scope, and
  Keras's `fit` distributes the tf.data stream.
  `MultiWorkerMirroredStrategy` is not offered: it is broken under Keras 3
  (keras-team/keras#20585); several hosts train on the JAX backend.
- JAX: `keras.distribution.DataParallel` over the first N devices of
  `keras.distribution.list_devices()`: variables are replicated, each batch is
  sharded along its first axis, and XLA's SPMD partitioner inserts the
  gradient all-reduce.

The global batch stays `--batch-size` (the learning-rate schedule, the EMA
period and the epoch are those of the global batch). BatchNorm: on TensorFlow
each replica normalizes with its own share of the batch (PyTorch DDP without
SyncBN) unless `synchronized` is set (`--sync-batch-norm`); on JAX the
statistics always span the global batch (SPMD computes the moments over the
sharded axis), i.e. they are synchronized.

Evidence (tests/test_distribution.py, 2 CPU devices: TensorFlow logical
devices; JAX with `--xla_force_host_platform_device_count=2`): a small model
with synchronized BatchNorm (and one without) gives the 1-device weights,
EMAs, SWA, power-function EMAs and BN-recomputed evaluations to 2.4e-7;
`app.train` ResNet-20 at lr 1e-4 (whole trajectories are chaotic at float32
rounding at higher rates) to 2.4e-5 (TensorFlow) / 6.7e-7 (JAX) relative,
where per-replica BatchNorm differs by 1e-3; a 2-device run killed and
resumed equals the uninterrupted one bitwise.

Several processes (hosts), JAX only: a cluster job sets, on every process,
KERAS_DISTRIBUTION_JOB_ADDRESSES (process 0's host:port, where the coordinator
listens; or Keras's comma-separated list of every process's address, the
first being process 0's), KERAS_DISTRIBUTION_NUM_PROCESSES and
KERAS_DISTRIBUTION_PROCESS_ID (0, 1, ...): Keras's own names (see
`keras.distribution.initialize`). `initialize_processes` joins the run before
JAX starts; DataParallel then spans every device of every process. Every
process reads the same global batches and feeds the rows its devices hold
(`GlobalBatchDataParallel`: Keras's own `rebatch` + `shard` cannot read our
training stream's batch size, and would join a partial batch with the next),
so every batch, a split's partial last one included, must split evenly over
the devices (`check_batches`: a one-line error before training). Each process
writes its own copy of the run (training/run_dir.py, `process_path`) and
resumes from it at a step all processes saved (training/checkpoint.py).
Keras's `predict` cannot fetch an output spread over processes, so app.train
refuses --track-stability there.
Evidence: tests/test_multi_process.py, two processes with one CPU device each
on 127.0.0.1 (gloo collectives): the toy's weights, both EMAs, SWA and every
validation metric equal the one-process run to 1.2e-7; a whole `app.train`
ResNet-20 run on CIFAR-10 (BatchNorm recomputed for the EMAs) equals the
one-process run on 2 devices: checkpoint, weight files and history, bit for
bit here.
"""

import contextlib
import os

import keras
import numpy as np

from utils.errors import ConfigError, UsageError

# What a cluster job sets on every process of a multi-process run (Keras's names).
ADDRESS_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
COUNT_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ID_VARIABLE = "KERAS_DISTRIBUTION_PROCESS_ID"
PROCESS_VARIABLES = (ADDRESS_VARIABLE, COUNT_VARIABLE, ID_VARIABLE)


def process_settings(environ=None):
    """`(coordinator_address, num_processes, process_id)` from the environment; None if none is set.

    Raises UsageError if only some of the variables are set, a value is
    malformed, or the backend is not JAX. Cheap: nothing is started.
    """
    environ = os.environ if environ is None else environ
    values = {name: environ.get(name, "").strip() for name in PROCESS_VARIABLES}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        given = [name for name, value in values.items() if value]
        raise UsageError(f"{' and '.join(given)} set but not {' and '.join(missing)}; "
                         "set all three for a multi-process run, or none")
    addresses = values[ADDRESS_VARIABLE].split(",")
    count, index = (_non_negative_int(name, values[name]) for name in (COUNT_VARIABLE, ID_VARIABLE))
    if count == 0:
        raise UsageError(f"{COUNT_VARIABLE}=0: expected the number of processes, at least 1")
    if index >= count:
        raise UsageError(f"{ID_VARIABLE}={index} with {COUNT_VARIABLE}={count}: use an id from 0 to {count - 1}")
    if len(addresses) > 1 and len(addresses) != count:
        raise UsageError(f"{ADDRESS_VARIABLE} lists {len(addresses)} addresses for {COUNT_VARIABLE}={count}; "
                         "give one per process, or only the coordinator's (process 0's) host:port")
    if keras.backend.backend() != "jax":
        raise UsageError(f"{ADDRESS_VARIABLE} is set: several processes train on the JAX backend only; "
                         f"set KERAS_BACKEND=jax (was {keras.backend.backend()})")
    return addresses[0].strip(), count, index


def _non_negative_int(name, value):
    if not value.isdecimal():
        raise UsageError(f"{name}={value!r}: expected a whole number")
    return int(value)


def initialize_processes(environ=None, timeout_seconds=300):
    """Joins the multi-process JAX run the environment describes; returns the number of processes.

    Returns 1 and starts nothing when no KERAS_DISTRIBUTION_* variable is set.
    Must run before JAX computes anything, even `keras.distribution.list_devices()`
    (JAX refuses to initialize afterwards); it waits up to `timeout_seconds`
    for every process to join.
    """
    settings = process_settings(environ)
    if settings is None:
        return 1
    import jax

    if not jax.distributed.is_initialized():
        coordinator_address, num_processes, process_id = settings
        # jax.distributed.initialize, not keras.distribution.initialize: Keras's
        # wrapper also agrees on a random seed across processes (a pmap over the
        # CPU devices), which a run that sets its own seed does not need.
        # On CPU the cross-process collectives are gloo's, JAX's default.
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_seconds)
    return jax.process_count()


def leave_processes():
    """Leaves the multi-process run together with the other processes (a no-op without one).

    JAX's shutdown waits at a barrier until every process has reached it. A
    process that skips it (`os._exit` after SIGTERM's checkpointed stop) can
    take the coordination service down with it while another process is still
    writing its checkpoint: JAX then aborts that process.
    """
    if keras.backend.backend() != "jax":
        return
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def process_count():
    """The number of processes of this run (1 unless `initialize_processes` joined several)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count() if jax.distributed.is_initialized() else 1


def gather_from_processes(values):
    """Every process's `values` (a list of ints of the same length on each), in process order."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32))).tolist()


def devices_for_data_parallelism():
    """The device names data parallelism would use: the accelerators, else the CPUs."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        accelerators = tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")
        return [device.name for device in accelerators or tf.config.list_logical_devices("CPU")]
    return list(keras.distribution.list_devices())


def resolve(requested):
    """The number of devices to train on: `requested`, or every accelerator (else 1).

    Several processes train on every device of every process, CPUs included.
    """
    names = devices_for_data_parallelism()
    accelerators = [name for name in names if "cpu" not in name.lower()]
    processes = process_count()
    if processes > 1:
        # A mesh over the first N global devices would leave a process without
        # a device, while that process still runs the same program.
        if requested not in (None, len(names)):
            raise ConfigError(f"`devices` {requested}: the {processes} processes of this run train on all their "
                              f"{len(names)} devices; omit `devices` or use {len(names)}")
        return len(names)
    if requested is None:
        return max(1, len(accelerators))
    if requested > len(names):
        kind = "accelerator" if accelerators else "CPU"
        raise ConfigError(
            f"`devices` {requested}: this machine has {len(names)} {kind} device"
            f"{'s' if len(names) != 1 else ''} for {keras.backend.backend()}; use at most {len(names)}"
        )
    return requested


class GlobalBatchDataParallel(keras.distribution.DataParallel):
    """`DataParallel` under which each process feeds its own rows of every global batch.

    Keras's own sharding of a tf.data dataset across processes (`rebatch` to
    the per-process batch, then `shard`) fails on our training stream (its
    batch size is hidden in a `flat_map`) and would join a partial last batch
    with the next batches (`rebatch` is `unbatch().batch()`), so the global
    batches would no longer be the one-process run's. Here every process reads
    the same global batches and keeps the block of rows its devices hold, a
    partial batch included (so each process prepares every whole batch: its
    input pipeline does `processes` times the work of its share). Every batch
    must split evenly over the devices: `check_batches` says so before the run.
    One process: the dataset as it is, as DataParallel does.
    """

    def distribute_dataset(self, dataset):
        if process_count() == 1:
            return dataset
        import tensorflow as tf

        devices = len(self.device_mesh.devices.flat)
        first, stop = self._rows_of_this_process(devices)

        def rows(tensor):
            size = tf.shape(tensor)[0]
            # A batch that does not split evenly would hang the other processes: fail instead.
            with tf.control_dependencies([tf.debugging.assert_equal(
                    size % devices, 0, message=f"a batch does not split over the {devices} devices")]):
                return tensor[size * first // devices : size * stop // devices]

        def share(*batch):
            return tf.nest.map_structure(rows, batch if len(batch) > 1 else batch[0])

        return dataset.map(share).prefetch(tf.data.AUTOTUNE)

    def _rows_of_this_process(self, devices):
        """`(first, stop)`: this process's devices hold rows `[first, stop)` of a batch of `devices` rows."""
        layout = self.get_data_layout((devices,)).backend_layout  # the sharding the trainer uses
        starts = sorted(index[0].start or 0 for index in layout.addressable_devices_indices_map((devices,)).values())
        if starts != list(range(starts[0], starts[0] + len(starts))):
            raise RuntimeError(f"this process's devices hold rows {starts} of the mesh, not a block")
        return starts[0], starts[-1] + 1


def check_batches(config, data):
    """Raises ConfigError unless every batch of the run splits evenly over its devices.

    JAX shards each batch in equal parts (an uneven one fails, or with several
    processes hangs), the partial last batch of a split included; padding
    would change the evaluation's loss (Keras averages over the padded batch).
    With the batch sizes multiples of the device count, every last batch is one
    exactly when the split's size is.
    """
    devices = config.devices or 1
    where = f"the {devices} devices of this run"
    if getattr(config, "model_parallel", None):  # the batch is split over the mesh's batch axis only
        devices = int(config.model_parallel.split("x")[0])
        where = f"the {devices} batch devices of --model-parallel {config.model_parallel}"
    if devices == 1 or keras.backend.backend() != "jax":  # MirroredStrategy splits a batch unevenly
        return
    eval_batch_size = config.eval_batch_size or config.batch_size
    for field, batch_size in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch_size)):
        if batch_size % devices:
            raise ConfigError(f"`{field}` {batch_size} does not split across {where}; use a multiple of {devices}")
    for split, size, batch_size, field in (
            ("training", data.num_train_examples, config.batch_size, "limit_train"),
            (data.evaluation_split, data.num_validation_examples, eval_batch_size, "limit_validation")):
        if size % devices:
            raise ConfigError(f"the last batch of the {split} split ({size % batch_size} of its {size:,} examples) "
                              f"does not split across {where}; use `{field}` {size - size % devices} or a device "
                              f"count that divides {size:,}")


@contextlib.contextmanager
def data_parallel(devices, model_parallel=None):
    """A context in which models built and trained run on the first `devices` devices.

    With `model_parallel` ("BATCHxMODEL", JAX) they form that mesh instead:
    training/model_parallel.py's `OutputAxisRule` shards the kernels.
    """
    if model_parallel:
        from training import model_parallel as model_parallel_lib

        names = devices_for_data_parallelism()[:devices]
        with model_parallel_lib.OutputAxisRule(model_parallel_lib.mesh_shape(model_parallel), names).scope():
            yield
        return
    if devices <= 1:
        yield
        return
    names = devices_for_data_parallelism()[:devices]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(names).scope():
            yield
        return
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(GlobalBatchDataParallel(devices=names))
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def synchronized_batch_norm(config):
    """Whether the model's BatchNorm layers are built `synchronized` (`--sync-batch-norm`, TensorFlow).

    On JAX data parallelism computes the moments over the global batch anyway
    (and Keras accepts `synchronized` on TensorFlow only).
    """
    return bool(config.sync_batch_norm) and keras.backend.backend() == "tensorflow"
