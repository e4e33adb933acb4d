"""What `MultiEMA` costs: update time, evaluation time, memory.

Claim: on this machine's 2 shared CPU cores, keeping 5 EMAs of a ResNet-20
(T=16, EMAN BatchNorm) costs ~0.05 % of training time: one fused update of
all averages takes 4.9 ms against 16 steps of ~670 ms. Even T=1 costs < 1 %.
Evaluating the 5 EMAs each epoch costs ~5 SGD evaluations (swaps and
selection copies add < 1 % of that); the averages hold exactly 5x the
averaged variables, which for ResNet-20 are all of the model's weights.

Evidence: `python bench/ema_overhead.py` (defaults: 4096 train examples = 32
steps per fit, 3 interleaved rounds; 2560 validation examples), real CIFAR-10,
ResNet-20, batch 128, TensorFlow 2.21 / Keras 3.15.1, one run of 343 s,
load average 5.4 before and 5.1 after (1 min; other jobs, up to 9 during the
fits). Medians (min-max); results in bench/results/ema_overhead.json.

    fused update of 5 averages (50 calls)    4.85 ms (4.44-10.1), 4.86 CPU ms
    MultiEMA hook on a step without update   1.5 us
    training step without EMA (steady)       669 ms (545-887), 545 CPU ms
    predicted overhead update/(T*step)       T=16: 0.045 %   T=1: 0.73 %
    measured, fits paired within a round     T=16: -2.5 % (-11.8..+21.1)
      (training loop wall; CPU: -3.7 %)      T=1:  +1.0 % (-0.7..+6.9)
    EMA epoch end / one SGD evaluate         4.66 (4.15-5.65); CPU 5.40 (4.00-5.93)
      (22.6 s vs 5.12 s wall; 17.4 vs 3.37 CPU s)
    one swap in and out / one host copy      18 ms (13-33) / 10 ms (5-19)
    averages / averaged variables            5,421,960 / 1,084,392 B = 5.00

The fit-level comparison cannot resolve the update's cost: with the cores
shared, the same configuration's ms/step varied by 60 % between fits, and
even its CPU time by 17 %; it shows no overhead beyond that noise. The 2 %
bound rests on the direct timing of the update, 44x below it at T=16.
Besides the averages, an evaluation holds one transient backup of the
averaged variables, and the selections keep up to 2 host copies of all model
weights per decay (10x the weights).

Method:
1. Update: interleaved `fit`s (rotating order) of the same compiled model
   without an EMA, with `MultiEMA` (5 decays, T=16, EMAN BN) and with T=1.
   MultiEMA gets no validation data and `fit` none, so it never evaluates:
   only its updates are timed. Per fit: `fit` wall time, the training loop
   (on_train_begin to on_train_end) and the steady ms/step (end of step 1 to
   end of the last), in wall and CPU time, each as an overhead paired within
   a round. The fused update is timed through the callback's own hooks
   (`on_epoch_begin`, then `on_train_batch_end(T - 1)`: exactly one update).
   The timed fits read the app's train stream with tf.data autotuning off:
   with it on, fit() wall times clustered at 10.3, 20.5 and 41.1 s, i.e.
   10 ms * (2^k - 1), autotune's doubling period: deleting the iterator
   seemingly waits for its next tick (seconds after the last step).
2. Evaluation: MultiEMA's `on_epoch_end` (5 swaps, 5 `evaluate`s, selection
   with a host copy per improved EMA: all 5, as in early training) vs one
   `model.evaluate` on the same validation data (the app's stream as it is),
   alternated; swap and host copy timed apart. The SGD evaluations took
   5.12, 5.13, 4.85 s for 2.9-4.1 CPU s: likely the same autotune tick
   (10 ms * (2^9 - 1) = 5.11 s), paid by every evaluate() of the app.
3. Memory: the bytes of the averages (from `get_state()`) vs the averaged
   variables, re-derived here (trainable weights + BatchNorm statistics).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

ROOT = __file__.rsplit("/bench/", 1)[0]
sys.path.insert(0, ROOT)  # run as a script from anywhere

from training.config import TrainConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clocks  # noqa: E402
from clocks import load_averages, make_step_clock, now, spread, timed  # noqa: E402,F401

DEFAULT_DATA_DIR = os.path.normpath(os.path.join(ROOT, os.pardir, "shared", "data", "tfds"))
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "ema_overhead.json")
NO_EVALUATION_WARNING = "MultiEMA evaluated no EMA"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="TFDS data directory holding cifar10")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit-train", type=int, default=4096, help="train examples (one epoch)")
    parser.add_argument("--limit-validation", type=int, default=2560)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed fit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of timed fits")
    parser.add_argument("--update-calls", type=int, default=50, help="timed fused update calls")
    parser.add_argument("--evaluation-rounds", type=int, default=3)
    parser.add_argument("--swap-calls", type=int, default=20)
    parser.add_argument("--every-steps", type=int, default=16, help="T of the EMA under test")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    for name in ("batch_size", "limit_train", "limit_validation", "epochs", "rounds", "update_calls",
                 "evaluation_rounds", "swap_calls", "every_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; received {getattr(args, name)}")
    return args


# 1) Update overhead.


def measure_update_overhead(args, model, data, log):
    """Interleaved fits without EMA, with EMA every T steps, with EMA every step."""
    import tensorflow as tf

    from callbacks.ema import MultiEMA

    every_steps = args.every_steps
    configurations = {
        "no_ema": None,
        f"ema_T{every_steps}": MultiEMA(every_steps=every_steps, bn_mode="eman"),
        "ema_T1": MultiEMA(every_steps=1, bn_mode="eman"),
    }
    names = list(configurations)
    steps = data.steps_per_epoch * args.epochs
    clock = make_step_clock()

    # The app's train stream, with tf.data autotuning off: with it on,
    # deleting the iterator at the end of fit() sometimes blocks for seconds,
    # seemingly until autotune's next optimization tick (fit() wall times
    # cluster at 10.3, 20.5, 41.1 s). The work per batch is unchanged, and
    # the pipeline runs >= 70x faster than the model (bench/data_pipeline.py).
    options = tf.data.Options()
    options.autotune.enabled = False
    train = data.train.with_options(options)

    def fit(name, steps_per_epoch, epochs):
        ema = configurations[name]
        callbacks = [clock] if ema is None else [ema, clock]
        # No validation data anywhere: MultiEMA then only updates (it warns
        # at train end that it evaluated nothing; that is the point here).
        fit_seconds, _ = timed(
            lambda: model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=0)
        )
        return {"fit_seconds": fit_seconds, **clock.timing()}

    # Warm-up: compiles the train step and traces each EMA's fused update.
    for name in names:
        ema = configurations[name]
        timing = fit(name, 2 if ema is None else ema.every_steps + 1, 1)
        log(f"warm-up fit {name}: {timing['fit_seconds']:.1f} s")

    measures = ("fit_seconds", "train_loop_seconds", "train_loop_cpu_seconds", "steady_ms_per_step",
                "steady_cpu_ms_per_step")
    table = {measure: {name: [] for name in names} for measure in measures}
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            timing = fit(name, data.steps_per_epoch, args.epochs)
            for measure in measures:
                table[measure][name].append(timing[measure])
            log(f"round {round_index + 1} {name}: fit {timing['fit_seconds']:.2f} s, train loop "
                f"{timing['train_loop_seconds']:.2f} s ({timing['train_loop_cpu_seconds']:.2f} CPU s), "
                f"{timing['steady_ms_per_step']:.1f} ms/step ({timing['steady_cpu_ms_per_step']:.1f} CPU ms)")

    def overhead_percent(measure, name):
        # Paired within a round: both fits saw nearly the same load.
        pairs = zip(table[measure][name], table[measure]["no_ema"])
        return spread([100.0 * (a / b - 1.0) for a, b in pairs])

    ema_name = f"ema_T{every_steps}"
    update_ms, update_cpu_ms, hook_us = measure_update_call(configurations[ema_name], args.update_calls)
    step_ms = statistics.median(table["steady_ms_per_step"]["no_ema"])
    step_cpu_ms = statistics.median(table["steady_cpu_ms_per_step"]["no_ema"])
    return {
        "steps_per_fit": steps,
        **{measure: {name: spread(values) for name, values in table[measure].items()} for measure in measures},
        "overhead_percent": {
            measure: {name: overhead_percent(measure, name) for name in names if name != "no_ema"}
            for measure in measures
        },
        "update_call_ms": update_ms,
        "update_call_cpu_ms": update_cpu_ms,
        "hook_us_per_step_without_update": hook_us,
        # update_ms / (T * step_ms), from the medians.
        "predicted_overhead_percent": {
            ema_name: round(100.0 * update_ms["median"] / (every_steps * step_ms), 3),
            "ema_T1": round(100.0 * update_ms["median"] / step_ms, 3),
        },
        "predicted_cpu_overhead_percent": {
            ema_name: round(100.0 * update_cpu_ms["median"] / (every_steps * step_cpu_ms), 3),
            "ema_T1": round(100.0 * update_cpu_ms["median"] / step_cpu_ms, 3),
        },
    }


def measure_update_call(ema, calls):
    """Times the fused update through the callback's own hooks, as fit calls them.

    `on_epoch_begin` then `on_train_batch_end(T - 1)` advances exactly T steps:
    one update of all averages. The callback's `params` and model are those of
    the fits above.
    """
    updates = []
    for epoch in range(calls):
        ema.on_epoch_begin(epoch)
        updates.append(timed(lambda: ema.on_train_batch_end(ema.every_steps - 1)))
    hooks = []
    for epoch in range(ema.every_steps - 1):  # one step each: never reaches a multiple of T
        ema.on_epoch_begin(epoch)
        hooks.append(timed(lambda: ema.on_train_batch_end(0)))
    return (
        spread([1e3 * wall for wall, _ in updates]),
        spread([1e3 * cpu for _, cpu in updates]),
        spread([1e6 * wall for wall, _ in hooks]),
    )


# 2) Evaluation.


def measure_evaluation(args, model, data, log):
    """MultiEMA's epoch-end work (5 swaps, evaluations, selections) vs one evaluate()."""
    from callbacks import variables as swap
    from callbacks.ema import MultiEMA

    # The app's validation stream as it is (autotuned): each evaluate() pays
    # its iterator's set-up and teardown, MultiEMA's five as well.
    ema = MultiEMA(bn_mode="eman", validation_data=data.validation)
    ema.set_model(model)
    ema.on_train_begin()  # builds the averages (all equal to the weights now)
    decay = ema.decays[-1]

    def sgd_evaluate():
        return timed(lambda: model.evaluate(data.validation, verbose=0, return_dict=True))

    def ema_epoch_end():
        # After a train begin every EMA's first evaluation is its best so
        # far: each of the 5 selections keeps a host copy of the weights, as
        # in early training when every epoch improves (the costlier case).
        ema.on_train_begin()
        return timed(lambda: ema.on_epoch_end(0, {}))

    def swap_in_and_out():
        with ema.swapped_in(decay):
            pass

    sgd_evaluate()  # evaluate() is compiled once, for both
    swap_in_and_out()  # traces the compiled take of one average
    tasks = {"sgd_evaluate": sgd_evaluate, "ema_epoch_end": ema_epoch_end}
    names = list(tasks)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_index in range(args.evaluation_rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            wall_seconds, cpu_seconds = tasks[name]()
            wall[name].append(wall_seconds)
            cpu[name].append(cpu_seconds)
            log(f"round {round_index + 1} {name}: {wall_seconds:.2f} s ({cpu_seconds:.2f} CPU s)")
    summary = ema.summary()
    selections = sum(
        per_decay[criterion] is not None for per_decay in summary.values()
        for criterion in ("best_val_accuracy", "lowest_val_loss")
    )

    swaps = [timed(swap_in_and_out) for _ in range(args.swap_calls)]
    host_copies = [timed(lambda: swap.host_copy(model.weights)) for _ in range(args.swap_calls)]
    swap_ms = [1e3 * w for w, _ in swaps]
    host_copy_ms = [1e3 * w for w, _ in host_copies]
    num_averages = len(ema.decays)

    def paired_ratio(table):
        # Paired within a round.
        return spread([a / b for a, b in zip(table["ema_epoch_end"], table["sgd_evaluate"])])

    return {
        "validation_examples": data.num_validation_examples,
        "num_averages": num_averages,
        "seconds": {name: spread(values) for name, values in wall.items()},
        "cpu_seconds": {name: spread(values) for name, values in cpu.items()},
        "ratio_ema_epoch_end_to_sgd_evaluate": paired_ratio(wall),
        "cpu_ratio_ema_epoch_end_to_sgd_evaluate": paired_ratio(cpu),
        "swap_in_and_out_ms": spread(swap_ms),
        "swap_in_and_out_cpu_ms": spread([1e3 * c for _, c in swaps]),
        "host_copy_of_model_weights_ms": spread(host_copy_ms),
        "selections_kept_after_last_epoch_end": selections,
        # 5 evaluations + 5 swaps + one host copy per selected EMA (all 5 here).
        "predicted_ema_epoch_end_seconds": round(
            num_averages * statistics.median(wall["sgd_evaluate"])
            + num_averages * statistics.median(swap_ms) / 1e3
            + num_averages * statistics.median(host_copy_ms) / 1e3,
            3,
        ),
    }, ema


# 3) Memory.


def measure_memory(model, ema):
    """Bytes of the averages (from the callback's public state) vs the model's."""
    import keras
    import numpy as np

    def nbytes(variables):
        return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)

    # Re-derived independently of the callback: trainable weights plus the
    # BatchNorm moving statistics (bn_mode="eman"). ResNet-20's layers are flat.
    statistics_variables = [
        v
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in layer.non_trainable_weights
    ]
    averaged_bytes = nbytes(model.trainable_weights) + nbytes(statistics_variables)
    state = ema.get_state()
    average_bytes = sum(value.nbytes for key, value in state.items() if key.startswith("average/"))
    model_bytes = nbytes(model.weights)
    return {
        "model_weights_bytes": model_bytes,
        "model_weights_count": len(model.weights),
        "averaged_variables_bytes": averaged_bytes,
        "averages_bytes": average_bytes,
        "averages_over_averaged": round(average_bytes / averaged_bytes, 4),
        "averages_over_model_weights": round(average_bytes / model_bytes, 4),
        # Besides the averages: during an evaluation the swap holds one backup
        # of the averaged variables; in host memory each selected epoch keeps a
        # copy of all model weights, at most 2 per decay (accuracy and loss).
        "swap_backup_bytes_transient": averaged_bytes,
        "selected_host_copies_bytes_at_most": 2 * len(ema.decays) * model_bytes,
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if os.environ.setdefault("KERAS_BACKEND", "tensorflow") != "tensorflow":
        raise SystemExit(f"error: this benchmark measures the TensorFlow backend; unset KERAS_BACKEND "
                         f"(it is {os.environ['KERAS_BACKEND']!r})")
    config = TrainConfig(
        dataset="cifar10", model=args.model, data_dir=args.data_dir, batch_size=args.batch_size,
        limit_train=args.limit_train, limit_validation=args.limit_validation, lr=0.01,
    )
    from data import loading

    loading.check_data_available(config)
    load_before = load_averages()
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.1f} s, load {os.getloadavg()[0]:.1f}] {message}", flush=True)

    import keras

    from training.recipe import build_model

    data = loading.load_data(config)
    keras.utils.set_random_seed(config.seed)
    # The app's own model and optimizer (TorchSGD, coupled L2), constant rate.
    model = build_model(config, data, schedule=config.lr)
    log(f"data and model ready; {data.steps_per_epoch} steps per epoch")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_EVALUATION_WARNING)
        update = measure_update_overhead(args, model, data, log)
    evaluation, ema = measure_evaluation(args, model, data, log)
    memory = measure_memory(model, ema)
    import tensorflow as tf

    result = {
        "argv": argv,
        "command": "python bench/ema_overhead.py " + " ".join(argv),
        "config": config.to_dict(),
        "git_commit": clocks.git_commit(ROOT),
        "script_changed_since_commit": clocks.script_changed_since_commit(ROOT, "bench/ema_overhead.py"),
        "backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__, "python": platform.python_version()},
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_averages(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "update": update,
        "evaluation": evaluation,
        "memory": memory,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(result, file, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
