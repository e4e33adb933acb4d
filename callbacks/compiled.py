"""One compiled function that reads some Keras variables and assigns others.

The averaging callbacks update every average of every variable at once. Written
with `keras.ops` on lists of variables, a plain Python call would run one
eager op per variable per step; compiling the whole update turns it into one
graph (TensorFlow) or one XLA program (JAX). This is the only place in
`callbacks/` that names a backend: Keras has no public "compile this function"
API, so the two backends' own compilers are used here and nowhere else.
"""

import keras


def compile_update(fn, sources, targets):
    """Returns `update(*args)` that runs `fn` compiled and assigns its results.

    `fn(source_values, *args)` must be a pure function of tensors built with
    `keras.ops`; it returns one new value per variable in `targets`, in order.

    Args:
        fn: pure function `(list_of_tensors, *args) -> list_of_tensors`.
        sources: Keras variables whose current values are passed to `fn`.
        targets: Keras variables that receive `fn`'s outputs.
    """
    sources = list(sources)
    targets = list(targets)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        _quiet_first_traces()

        @tf.function(autograph=False)
        def update(*args):
            values = fn([variable.value for variable in sources], *args)
            for target, value in zip(targets, values):
                target.assign(value)

        return update
    if backend == "jax":
        import jax

        compiled = jax.jit(fn, out_shardings=_shardings(targets))

        def update(*args):
            values = compiled([variable.value for variable in sources], *args)
            # Under JAX an assignment swaps an array reference: no device work.
            for target, value in zip(targets, values):
                target.assign(value)

        return update

    def update(*args):
        values = fn([variable.value for variable in sources], *args)
        for target, value in zip(targets, values):
            target.assign(value)

    return update


def compile_pure(fn):
    """Compiles a pure tensor function `fn(*args) -> outputs` for the backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


def compile_in_place_update(fn, targets, sources):
    """Like `compile_update`, for targets whose new value depends on their own.

    `fn(target_values, source_values, *args)` returns one new value per target.
    Under JAX the targets' current buffers are donated to the compiled
    program, so XLA can write the results in place: the update never holds two
    copies of the targets (for a running average, that second copy would be as
    large as all the averages). Under TensorFlow this is `compile_update`
    (TensorFlow has no donation; each variable's assignment inside the graph
    frees its old buffer).

    Args:
        fn: pure function `(target_tensors, source_tensors, *args) -> tensors`.
        targets: Keras variables read by `fn` and assigned its outputs; they
            must not appear in `sources`.
        sources: other Keras variables whose current values `fn` reads.
    """
    targets = list(targets)
    sources = list(sources)
    if keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(fn, donate_argnums=0, out_shardings=_shardings(targets))

        def arguments(args):
            return [variable.value for variable in targets], [variable.value for variable in sources], *args

        def update(*args):
            values = compiled(*arguments(args))
            # The old buffers are gone (donated): reassign all before any read.
            for target, value in zip(targets, values):
                target.assign(value)

        # The optimized program's text (XLA HLO), e.g. to check that a sharded
        # update needs no collective: `update.compiled_text(*args)`.
        update.compiled_text = lambda *args: compiled.lower(*arguments(args)).compile().as_text()
        return update

    def split_fn(values, *args):
        return fn(values[: len(targets)], values[len(targets) :], *args)

    return compile_update(split_fn, targets + sources, targets)


def _shardings(targets):
    """JAX: the targets' own shardings for the outputs under a `keras.distribution`, so that
    each result is computed where its variable's shards live (callbacks/layouts.py: an
    average is laid out like its weight, so the update is shard-local and needs no
    collective); `None` (XLA's choice, as before) without one."""
    if keras.distribution.distribution() is None:
        return None
    return [target.value.sharding for target in targets]


class _FirstTraceFilter:
    """Drops TensorFlow's "N out of the last M calls to <function compile_update.<locals>.update>
    triggered tf.function retracing" warning.

    Each `update` is a tf.function of its own, traced once for its variables
    (tests/test_power_ema.py checks the tracing count). TensorFlow's
    frequent-tracing detector counts the first traces of the separate
    instances (MultiEMA, PowerFunctionEMA and SWA each build three at train
    begin) as if one function retraced, and would print that warning into
    every run's terminal.
    """

    def filter(self, record):
        message = record.getMessage()
        return not ("compile_update.<locals>.update" in message and "triggered tf.function retracing" in message)


_FILTER = _FirstTraceFilter()


def _quiet_first_traces():
    import logging

    logger = logging.getLogger("tensorflow")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
