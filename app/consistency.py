"""`python -m app.consistency RUN_DIR`: prediction consistency between seeds (paper §4.4, Table 3).

RUN_DIR holds `seed-<k>/` runs of one setup (`python -m app.train --seeds ...`),
at least two. For the SGD model at the end of training (`baseline`) and for
the EMA (by default early-stopped at the lowest validation loss, the largest
decay, BatchNorm statistics recomputed once after training, as the paper's
Table 3), and for SGD early-stopped (on validation; on test in a --full-train run
without --stop-epochs-from) where the runs kept it
(`sgd_early`, docs/analysis-plan.md's comparator), every seed predicts the
test split; then churn (fraction of test samples whose top-1 class differs)
and the Jensen-Shannon divergence (natural log, mean over samples) are
averaged over all pairs of seeds, and the accuracy
over seeds. Runs trained without EMAs compare SGD's models only. Writes
RUN_DIR/consistency.json (shape: evaluation/report.py) and
prints the table. A seed whose weights are gone (committed results keep
none) is read from the test logits `app.evaluate` saved (`test_logits.npz`).
Evidence: tests/test_consistency.py counts the churn directly from the two
seeds' saved weights, and gets the same table from the saved logits.

Example:

    python -m app.consistency runs/cifar100-resnet18 --limit-test 2000
"""

import itertools
import json
import math
import os

from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, UsageError, add_run_reading_arguments, entry_point
from evaluation.runs import EMA_METHODS
from training.run_dir import CONSISTENCY_FILE, TEST_LOGITS_FILE

CRITERIA = {criterion: method for method, criterion in EMA_METHODS.items()}  # --criterion -> method


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.consistency",
        description="Pairwise churn and JS divergence between seeds, SGD baseline vs EMA (Table 3).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory of seed-<k>/ run directories")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="EMA decay compared (default: the largest the runs kept)")
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default=None,
                        help="the EMA early-stopped at lowest validation loss (the paper's) or best accuracy "
                        "(default: loss)")
    add_run_reading_arguments(parser)
    return parser


@entry_point
def main(argv):
    """Runs the command line; returns the consistency dict (exit status 2 on bad input)."""
    return measure(prepare(argv))


def prepare(argv):
    """Everything that can fail because of the user, before any prediction."""
    args = build_parser().parse_args(argv)
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in (0, 1); got {args.ema_decay:g}")
    from utils import quiet
    from evaluation import predictions, runs

    if not os.path.isdir(args.run_dir) or os.path.exists(os.path.join(args.run_dir, runs.CONFIG_FILE)):
        raise UsageError(f"{args.run_dir} is not a directory of seed-<k>/ runs; "
                         "pass the --out of `python -m app.train --seeds 0 1 2`")
    groups = runs.load_groups([args.run_dir])  # one setup, distinct seeds, finished runs
    if len(groups) != 1:
        raise UsageError(f"{args.run_dir} mixes datasets or models; keep one setup per multi-seed directory")
    group = groups[0]
    if len(group.runs) < 2:
        raise UsageError(f"{args.run_dir} holds {len(group.runs)} seed; train at least 2 (--seeds 0 1)")
    # Runs without EMAs (e.g. app.reproduce's SGD twins) compare SGD's models only.
    with_ema = any(run.config.get("ema_decays") for run in group.runs)
    if not with_ema:
        given = [flag for flag, value in (("--ema-decay", args.ema_decay), ("--criterion", args.criterion))
                 if value is not None]
        if given:
            raise UsageError(f"the runs in {args.run_dir} kept no EMA, so {given[0]} has nothing to choose; "
                             f"drop {given[0]}")
    criterion = args.criterion or "loss"
    method = CRITERIA[criterion] if with_ema else None
    chosen_by_run, decay_key = [], None
    for run in group.runs:
        if with_ema:
            decay_key = predictions.choose_decay(run, args.ema_decay)
            if decay_key is None:
                raise UsageError(f"{run.path} kept no EMA; train with --ema-decays")
        chosen = predictions.method_weights(run, decay_key, predictions.saved_weights(run, require_files=False))
        if with_ema and method not in chosen:
            raise UsageError(f"{run.path} selected no EMA by {criterion}; train for at least one epoch")
        chosen_by_run.append(chosen)
    # SGD early-stopped (weights/sgd_early), the early-stopped EMA's comparator (the plan's), where every seed has it
    # (a seed evaluated before app.evaluate cached its logits, its weights gone, has not).
    early = all("sgd_early" in chosen and predictions.can_predict(run, chosen["sgd_early"])
                for run, chosen in zip(group.runs, chosen_by_run))
    seeds = []
    for run, chosen in zip(group.runs, chosen_by_run):
        weights = {"baseline": chosen["baseline"], **({"sgd_early": chosen["sgd_early"]} if early else {}),
                   **({method: chosen[method]} if with_ema else {})}
        cached = None  # (logits by stem, labels) where the weights are gone (committed results keep none)
        if not all(os.path.isfile(predictions.weights_path(run.path, name)) for name in weights.values()):
            cached = predictions.cached_test_logits(run, list(weights.values()), args.limit_test)
        seeds.append({"run": run, "weights": weights, "cached": cached})
    names = {tuple(seed["weights"].values()) for seed in seeds}
    if len(names) != 1:
        raise UsageError(f"the seeds in {args.run_dir} saved different EMA models ({sorted(names)}); "
                         "train every seed with the same flags")
    config = predictions.run_config(group.runs[0], args.data_dir)
    if any(seed["cached"] is None for seed in seeds):
        predictions.check_data(config, args.limit_test)
        quiet.import_tensorflow()  # the runs are fine: now the heavy imports
    return {"directory": args.run_dir, "config": config, "seeds": seeds, "decay_key": decay_key,
            "criterion": criterion if with_ema else None, "limit_test": args.limit_test, "batch_size": args.batch_size}


def measure(plan):
    """Predicts the test split with every seed's models; writes consistency.json; prints the table."""
    import numpy as np

    from evaluation import metrics, predictions

    # Seeds differ only in `seed` (checked by load_groups): one copy of the data serves all.
    cached = [seed["cached"] for seed in plan["seeds"] if seed["cached"] is not None]
    if len(cached) < len(plan["seeds"]):
        print(f"{plan['directory']}: loading the {plan['config'].dataset} data ...", flush=True)
        data = predictions.load_run_data(plan["config"], limit_test=plan["limit_test"],
                                         batch_size=plan["batch_size"])
        labels = data.test.labels
    else:
        labels = cached[0][1]
    if any(not np.array_equal(seed_labels, labels) for _, seed_labels in cached):
        raise UsageError(f"the test labels saved in {plan['directory']}'s {TEST_LOGITS_FILE} files differ "
                         "from each other or from the data; run `python -m app.evaluate` on every seed again")
    probabilities = {}  # method -> [per seed (N, classes)]
    accuracies = {}
    count, number = sum(len(seed["weights"]) for seed in plan["seeds"]), 0
    for seed in plan["seeds"]:
        label = f"seed {seed['run'].config.get('seed')}"
        if seed["cached"] is None:
            predictor = predictions.RunPredictor(seed["run"], plan["config"], data)
        else:
            print(f"{label}: its weights are gone; using the test logits app.evaluate saved in "
                  f"{os.path.join(seed['run'].path, TEST_LOGITS_FILE)}", flush=True)
        for method, name in seed["weights"].items():
            number += 1
            if seed["cached"] is None:
                print(f"predicting {len(labels):,} test images with {count} models: {label} "
                      f"{predictions.describe(name)} {number}/{count} ...", flush=True)
                logits = predictor.logits(name, data.test)
            else:
                logits = seed["cached"][0][name]
            probabilities.setdefault(method, []).append(metrics.softmax(logits))
            accuracies.setdefault(method, []).append(metrics.accuracy(logits, labels))
    models = {}
    for method, name in plan["seeds"][0]["weights"].items():
        models[method] = {
            "weights": name,
            "accuracy": float(sum(accuracies[method]) / len(accuracies[method])),
            "accuracy_by_seed": accuracies[method],
            "churn_by_pair": metrics.pairwise_values(metrics.churn, probabilities[method]),
            "js_divergence_by_pair": metrics.pairwise_values(metrics.jensen_shannon_divergence, probabilities[method]),
        }
        models[method]["churn"] = float(np.mean(models[method]["churn_by_pair"]))
        models[method]["js_divergence"] = float(np.mean(models[method]["js_divergence_by_pair"]))
        # The paper's Table 3 gives no unit and reaches 0.85 > ln 2: report both.
        models[method]["js_divergence_bits"] = models[method]["js_divergence"] / math.log(2)
    if plan["criterion"]:  # the EMA's entry (runs without EMAs have none)
        method = CRITERIA[plan["criterion"]]
        models[method].update(decay=float(plan["decay_key"]),
                              bn_recomputed=models[method]["weights"].endswith("_bn"))
    seeds = [seed["run"].config.get("seed") for seed in plan["seeds"]]
    result = {
        "split": "test",
        "test_examples": len(labels),
        "seeds": seeds,
        "pairs": len(seeds) * (len(seeds) - 1) // 2,
        "pair_seeds": [list(pair) for pair in itertools.combinations(seeds, 2)],  # order of the *_by_pair lists
        "criterion": plan["criterion"],
        "js_divergence_unit": "nats (natural log); js_divergence_bits in bits (log base 2)",
        "models": models,
    }
    from utils.files import atomic_write_text

    path = os.path.join(plan["directory"], CONSISTENCY_FILE)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(format_table(result, path), flush=True)
    return result


def format_table(result, path):
    lines = [f"\nPrediction consistency on {result['test_examples']} test examples, seeds "
             f"{', '.join(map(str, result['seeds']))} ({result['pairs']} pairs)"]
    lines.append(f"{'model':<30}{'accuracy (%)':>13}{'churn (%)':>11}{'JS (nats)':>10}{'JS (bits)':>10}")
    for method, entry in result["models"].items():
        label = {"baseline": "SGD (final)", "sgd_early": "SGD (early-stopped)"}.get(method) or (
            f"EMA {entry['decay']:g} ({result['criterion']})" + (" + BN recomputed" if entry["bn_recomputed"] else ""))
        lines.append(f"{label:<30}{entry['accuracy'] * 100:>13.2f}{entry['churn'] * 100:>11.2f}"
                     f"{entry['js_divergence']:>10.4f}{entry['js_divergence'] / math.log(2):>10.4f}")
    lines.append(f"-> {path}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
