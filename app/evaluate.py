"""`python -m app.evaluate RUN_DIR`: test accuracy, NLL and calibration of every saved model.

Paper §4.6 / Table 5 and App. B: for the SGD model at the end of training, the
EMA early-stopped at best validation accuracy and at lowest validation loss
(every decay the run kept, BatchNorm statistics as tracked and recomputed once
after training) and SWA where present, on the test split: accuracy, NLL, ECE
with M=100 equal-mass bins (Nixon et al. 2019) and ECE after temperature
scaling (Guo et al. 2017) with T fitted by NLL on the run's 20 % hold-out
(as the run saw it: its `--limit-validation` applies), and after it the test
NLL and the excess ECE (ECE minus a calibrated model's at the same
confidences: 100 bins put a floor under any model). A `--full-train` run has
no hold-out: its hold-out temperature fields are null (fitting T on the test
images it is measured on would flatter it). Every run also gets `test_half`: T
fitted on the first half of the test split, scored on the second
(`evaluation.metrics.temperature_checks`; docs/analysis-plan.md, table5).

Writes RUN_DIR/evaluation.json (shape: evaluation/report.py) and prints a
table; also RUN_DIR/test_logits.npz, the test logits of `baseline`,
`sgd_early`, `ema_acc` and `ema_loss`, which `app.consistency` uses when the
weights are gone.
`models` holds the paper's methods (`baseline`, `ema_acc`, `ema_loss` of one
decay, `--ema-decay` or the largest, BN recomputed; `swa`) for Table 5;
`by_weights` holds every weights file's numbers (App. B). A RUN_DIR holding
`seed-<k>/` runs is evaluated seed by seed. Evidence: tests/test_evaluate.py
recomputes the numbers from the saved weights with NumPy.

Example:

    python -m app.evaluate runs/cifar100-resnet18 --limit-test 1000
"""

import json
import os

from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, UsageError, add_run_reading_arguments, entry_point

EVALUATION_FILE = "evaluation.json"


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.evaluate",
        description="Test accuracy, NLL, ECE and ECE after temperature scaling of a run's saved models.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run directory, or a directory of seed-<k>/ run directories")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="EMA decay of the `ema_acc`/`ema_loss` entries (default: the largest the run kept)")
    add_run_reading_arguments(parser)
    return parser


@entry_point
def main(argv):
    """Runs the command line; returns {run path: evaluation dict} (exit status 2 on bad input)."""
    plans = prepare(argv)
    return {plan["run"].path: evaluate(plan) for plan in plans}


def prepare(argv):
    """Everything that can fail because of the user, for every seed, before any prediction."""
    args = build_parser().parse_args(argv)
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in (0, 1); got {args.ema_decay:g}")
    from utils import quiet
    from evaluation import predictions

    plans = []
    for run in predictions.expand_runs(args.run_dir):
        names = predictions.saved_weights(run)
        decay_key = predictions.choose_decay(run, args.ema_decay)
        config = predictions.run_config(run, args.data_dir)
        predictions.check_data(config, args.limit_test)
        quiet.import_tensorflow()  # the run is fine: now the heavy imports
        plans.append({"run": run, "config": config, "names": names, "decay_key": decay_key,
                      "methods": predictions.method_weights(run, decay_key, names),
                      "limit_test": args.limit_test, "batch_size": args.batch_size})
    return plans


def evaluate(plan):
    """Predicts with every saved model of one run, writes evaluation.json, prints the table."""
    from evaluation import predictions

    run, config, names = plan["run"], plan["config"], plan["names"]
    print(f"{run.path}: loading the {config.dataset} data ...", flush=True)
    data = predictions.load_run_data(config, limit_test=plan["limit_test"], batch_size=plan["batch_size"])
    predictor = predictions.RunPredictor(run, config, data)
    images = f"{len(data.test):,} test" + ("" if data.validation is None else
                                           f" + {len(data.validation):,} validation (for T)")
    by_weights = {}
    cached_names = {plan["methods"][method] for method in predictions.CACHED_METHODS if method in plan["methods"]}
    cached_logits = {}
    first_with = {}  # weights digest -> the first name holding those weights
    for number, name in enumerate(names, 1):
        progress = f"evaluating {len(names)} models on {images} images: {predictions.describe(name)} {number}/{len(names)}"
        same = first_with.setdefault(predictions.weights_digest(run.path, name), name)
        if same != name:  # e.g. an EMA whose accuracy and loss selections are one epoch: one model
            print(f"{progress}: the same weights as {predictions.describe(same)}, its numbers", flush=True)
            by_weights[name] = {**by_weights[same], "weights": predictions.relative_weights_path(name)}
            if name in cached_names:
                cached_logits[name] = predictor.logits(same, data.test)
            continue
        print(f"{progress} ...", flush=True)
        test_logits = predictor.logits(name, data.test)
        if name in cached_names:
            cached_logits[name] = test_logits
        holdout_logits = None if data.validation is None else predictor.logits(name, data.validation)
        by_weights[name] = {"weights": predictions.relative_weights_path(name),
                            **model_metrics(test_logits, data, holdout_logits)}
    models = {}
    for method, name in plan["methods"].items():
        models[method] = dict(by_weights[name])
        if method.startswith("ema_"):
            models[method].update(decay=float(plan["decay_key"]), bn_recomputed=name.endswith("_bn"))
    result = {
        "split": "test",
        "test_examples": len(data.test),
        "temperature_fitted_on": None if data.validation is None else "validation",
        "validation_examples": None if data.validation is None else len(data.validation),
        "ece_bins": _ece_bins(),
        "ema_decay": plan["decay_key"],
        "models": models,
        "by_weights": by_weights,
    }
    if data.validation is None:
        result["note"] = ("trained with --full-train: no hold-out split to fit a temperature on, "
                          "so temperature, ece_temperature_scaled, loss_temperature_scaled and "
                          "ece_temperature_scaled_excess are null (test_half fits T on test images only)")
    from utils.files import atomic_write_text

    atomic_write_text(os.path.join(run.path, EVALUATION_FILE), json.dumps(result, indent=2) + "\n")
    # For app.consistency once the weights are gone (they are not kept with committed results).
    predictions.save_test_logits(run.path, cached_logits, data.test.labels, plan["limit_test"])
    print(format_table(run.path, result), flush=True)
    return result


def _ece_bins():
    from evaluation import metrics

    return metrics.ECE_BINS


def model_metrics(test_logits, data, holdout_logits=None):
    """`evaluation.metrics.calibration`'s entries; without a hold-out the temperature ones are None."""
    from evaluation import metrics

    labels = data.test.labels
    if holdout_logits is not None:
        calibrated = metrics.calibration(test_logits, labels, holdout_logits, data.validation.labels)
        return {**calibrated, **metrics.temperature_checks(test_logits, labels, calibrated["temperature"])}
    return {
        "accuracy": metrics.accuracy(test_logits, labels),
        "loss": metrics.negative_log_likelihood(test_logits, labels),
        "ece": metrics.expected_calibration_error(metrics.softmax(test_logits), labels),
        "temperature": None,
        "ece_temperature_scaled": None,
        **metrics.temperature_checks(test_logits, labels),
    }


def format_table(path, result):
    from evaluation import predictions

    reported = {entry["weights"]: method for method, entry in result["models"].items()}
    lines = [f"\n{path}: {result['test_examples']} test examples, ECE with "
             f"{result['ece_bins']} equal-mass bins, temperature fitted on "
             f"{result['temperature_fitted_on'] or '— (no hold-out: --full-train)'}"]
    # One space before each number column: a diverged model's NLL (392.3663) stays apart from its neighbours.
    width = max(34, *(len(predictions.describe(name)) + 1 for name in result["by_weights"]))
    lines.append(f"{'model':<{width}}{'accuracy':>9} {'NLL':>8} {'ECE':>7} {'T':>6} {'ECE w/ TS':>10}  table")

    def number(value, scale, digits):
        return "—" if value is None else f"{value * scale:.{digits}f}"

    for name, entry in result["by_weights"].items():
        lines.append(
            f"{predictions.describe(name):<{width}}{number(entry['accuracy'], 100, 2):>9}"
            f" {number(entry['loss'], 1, 4):>8} {number(entry['ece'], 100, 2):>7}"
            f" {number(entry['temperature'], 1, 3):>6} {number(entry['ece_temperature_scaled'], 100, 2):>10}"
            f"  {reported.get(entry['weights'], '')}"
        )
    if result["ema_decay"] is not None:
        lines.append(f"table: the rows app.report's tables take (paper Table 5); ema_acc and ema_loss are EMA "
                     f"{result['ema_decay']}: --ema-decay, by default the largest decay kept, the one the paper "
                     f"reports, which need not be the best here")
    lines.append(f"(accuracy and ECE in %) -> {os.path.join(path, EVALUATION_FILE)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
