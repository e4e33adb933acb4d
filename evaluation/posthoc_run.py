"""`app.posthoc`'s heavy half: rebuild each planned average, fix its BatchNorm, evaluate, write.

The plan (app/posthoc.py `prepare`, evaluation/posthoc.py) is checked; this
imports the backend, loads the run's data as `app.train` built it (the same
validation split, the same one augmented pass for BatchNorm statistics), and
evaluates every reconstruction in one rebuilt model.
"""

import csv
import io
import json
import os
import warnings

import numpy as np

from evaluation import posthoc
from utils.files import atomic_write_text


def evaluate(plan):
    """Every target's validation metrics, the tracked-vs-rebuilt comparison, the best target."""
    from utils import quiet

    quiet.import_tensorflow()
    import keras

    from callbacks import variables
    from data import loading
    from evaluation import predictions

    config = plan["config"]
    data = loading.load_data(config)
    model = predictions.build_model(config, data.num_classes, data.image_size)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    indices = _weight_indices(plan["snapshots"])
    statistics = {id(v) for v in variables.batch_norm_statistics(model)}
    is_statistic = [id(model.weights[i]) in statistics for i in indices]
    evaluator = _Evaluator(model, data, indices, plan["bn"])
    rows, best = [], None
    for number, target in enumerate(plan["targets"]):
        weights = posthoc.combine(target)
        metrics = evaluator.evaluate(weights)
        row = _row(target, metrics)
        rows.append(row)
        print(f"[{number + 1}/{len(plan['targets'])}] {target.name} epoch {target.epoch}: "
              f"val accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} "
              f"(profile residual {target.reconstruction.residual:.2g})", flush=True)
        if best is None or metrics["accuracy"] > best[0]["val_accuracy"]:
            best = (row, variables.host_copy(model.weights))
    comparisons = []
    for key, target in plan["tracked"].items():
        comparisons.append(_compare(plan, evaluator, model, key, target, indices, is_statistic))
    model.set_weights(best[1])
    os.makedirs(plan["out"], exist_ok=True)
    model.save_weights(os.path.join(plan["out"], BEST_WEIGHTS))
    return {
        "run": plan["path"],
        "bn": plan["bn"],
        "max_residual": plan["max_residual"],
        "validation_examples": data.num_validation_examples,
        "snapshots": sorted({s.step for s in plan["snapshots"]}),
        "sigma_rels_tracked": sorted({s.sigma_rel for s in plan["snapshots"]}),
        "targets": rows,
        "best": dict(best[0], weights=BEST_WEIGHTS),
        "tracked_vs_rebuilt": comparisons,
    }


BEST_WEIGHTS = "best.weights.h5"


class _Evaluator:
    """Puts averaged weights into the model, fixes BatchNorm as asked, evaluates on the validation split."""

    def __init__(self, model, data, indices, bn):
        self.model, self.data, self.indices, self.bn = model, data, indices, bn
        self.initial = model.get_weights()

    def evaluate(self, averaged, recompute=None):
        from callbacks.batch_norm import recompute_batch_norm

        weights = list(self.initial)
        for index, value in zip(self.indices, averaged):
            weights[index] = np.asarray(value, dtype=weights[index].dtype)
        self.model.set_weights(weights)
        if self.bn == "recompute" if recompute is None else recompute:
            recompute_batch_norm(self.model, self.data.train_one_pass)
        return self.model.evaluate(self.data.validation, verbose=0, return_dict=True)


def _compare(plan, evaluator, model, key, target, indices, is_statistic):
    """A tracked EMA at its selected epoch against its reconstruction from the snapshots."""
    from training import run_dir as run_directory

    rebuilt = posthoc.combine(target)
    _load_weights(model, run_directory.weights_path(plan["path"], run_directory.ema_stem(key, "accuracy")))
    weights = model.get_weights()
    tracked = [weights[i] for i in indices]
    split = {flag: ([r for r, s in zip(rebuilt, is_statistic) if s == flag],
                    [t for t, s in zip(tracked, is_statistic) if s == flag]) for flag in (False, True)}
    # Both with BatchNorm recomputed over the same pass: the run saved the tracked one so (`_bn`).
    _load_weights(model, run_directory.weights_path(plan["path"], run_directory.ema_stem(key, "accuracy", True)))
    tracked_metrics = model.evaluate(evaluator.data.validation, verbose=0, return_dict=True)
    rebuilt_metrics = evaluator.evaluate(rebuilt, recompute=True)
    comparison = {
        "decay": float(key),
        "epoch": target.epoch,
        "profile_residual": target.reconstruction.residual,
        "coefficient_abs_sum": target.reconstruction.amplification,
        "relative_weight_distance": posthoc.relative_distance(*split[False]),
        "relative_bn_statistics_distance": posthoc.relative_distance(*split[True]) if split[True][1] else None,
        "tracked_val_accuracy": tracked_metrics["accuracy"],
        "rebuilt_val_accuracy": rebuilt_metrics["accuracy"],
        "accuracy_difference_points": 100 * (rebuilt_metrics["accuracy"] - tracked_metrics["accuracy"]),
        "tracked_val_loss": tracked_metrics["loss"],
        "rebuilt_val_loss": rebuilt_metrics["loss"],
    }
    print(f"tracked EMA {key} (epoch {target.epoch}) vs rebuilt: relative weight distance "
          f"{comparison['relative_weight_distance']:.2e}, val accuracy {comparison['tracked_val_accuracy']:.4f} "
          f"vs {comparison['rebuilt_val_accuracy']:.4f} (both BN recomputed)", flush=True)
    return comparison


def _load_weights(model, path):
    with warnings.catch_warnings():
        # The run's file also holds its SGD slots; this evaluation-only model has none to fill.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def _weight_indices(snapshots):
    from callbacks import power_snapshots

    return power_snapshots.read_header(snapshots[-1].path)["weight_indices"]


def _row(target, metrics):
    return {
        "profile": target.kind,
        "value": target.value,
        "epoch": target.epoch,
        "step": target.step,
        "snapshots_used": len(target.snapshots),
        "profile_residual": target.reconstruction.residual,
        "coefficient_abs_sum": target.reconstruction.amplification,
        "val_accuracy": metrics["accuracy"],
        "val_loss": metrics["loss"],
    }


def write(plan, result):
    """posthoc.json, posthoc.csv, posthoc.md and heatmap.png in the output directory; prints the tables."""
    from evaluation import figures
    from evaluation import runs

    out = plan["out"]
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "posthoc.json"), json.dumps(result, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(result["targets"][0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["targets"])
    atomic_write_text(os.path.join(out, "posthoc.csv"), buffer.getvalue())
    tables = format_tables(result)
    atomic_write_text(os.path.join(out, "posthoc.md"), tables + "\n")
    history = runs.read_history(os.path.join(plan["path"], "history.csv"))
    figures.plot_posthoc_heatmap(result, history, os.path.join(out, "heatmap.png"))
    print(tables)
    print(f"wrote {out}/ (posthoc.json, posthoc.csv, posthoc.md, heatmap.png, {BEST_WEIGHTS}) "
          f"in {result['wall_time_seconds']} s", flush=True)


def format_tables(result):
    lines = [f"Post-hoc EMA of {result['run']}: validation accuracy (%) of each rebuilt average, BatchNorm "
             f"{'recomputed' if result['bn'] == 'recompute' else 'as averaged'}; "
             f"{len(result['snapshots'])} snapshots of sigma_rel "
             f"{', '.join(f'{s:g}' for s in result['sigma_rels_tracked'])}", ""]
    epochs = sorted({row["epoch"] for row in result["targets"]})
    lines.append("| profile | " + " | ".join(f"epoch {e}" for e in epochs) + " | worst residual |")
    lines.append("|---|" + "---|" * (len(epochs) + 1))
    profiles = list(dict.fromkeys((row["profile"], row["value"]) for row in result["targets"]))
    for kind, value in profiles:
        cells = {row["epoch"]: row for row in result["targets"] if (row["profile"], row["value"]) == (kind, value)}
        name = f"EMA {value:g}" if kind == "ema" else f"power sigma_rel {value:g}"
        worst = max(row["profile_residual"] for row in cells.values())
        lines.append(f"| {name} | " + " | ".join(f"{100 * cells[e]['val_accuracy']:.2f}" for e in epochs)
                     + f" | {worst:.2g} |")
    best = result["best"]
    best_name = f"EMA {best['value']:g}" if best["profile"] == "ema" else f"power sigma_rel {best['value']:g}"
    lines += ["", f"Best: {best_name} at epoch {best['epoch']}: {100 * best['val_accuracy']:.2f} % "
              f"(saved as {best['weights']})"]
    if result["tracked_vs_rebuilt"]:
        lines += ["", "Tracked EMA (MultiEMA, at its selected epoch) vs its reconstruction from the snapshots; "
                  "both with BatchNorm recomputed:", "",
                  "| decay | epoch | profile residual | relative weight distance | relative BN stat. distance "
                  "| tracked acc. | rebuilt acc. | difference (points) |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in result["tracked_vs_rebuilt"]:
            bn = "-" if c["relative_bn_statistics_distance"] is None else f"{c['relative_bn_statistics_distance']:.2e}"
            lines.append(f"| {c['decay']:g} | {c['epoch']} | {c['profile_residual']:.2g} | "
                         f"{c['relative_weight_distance']:.2e} | {bn} | {100 * c['tracked_val_accuracy']:.2f} | "
                         f"{100 * c['rebuilt_val_accuracy']:.2f} | {c['accuracy_difference_points']:+.2f} |")
    return "\n".join(lines)
