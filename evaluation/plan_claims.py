"""The analysis plan's statistics, verdicts, power rows and regime rows for every claim.

docs/analysis-plan.md fixes, per claim, one primary statistic (a per-seed
difference, its direction or equivalence margin) and the secondary ones; this
module computes them from the run directories app.reproduce writes (`dirs`:
validation, validation_seeds, final, noisy_validation, noisy_final,
adda_constant, adda_cosine, the searches tuning and tuning_noisy; `<key>_sgd`
for SGD's twins) and applies the plan's one policy
(`evaluation/stats.py`): paired t intervals, margin 0 or ±1.0 point, seeds
needed at the observed spread, "not decidable at this budget" beyond 8.

A verdict counts only when every run it reads, and every run those depend on
(the lr searches' trials, seed 0's validation runs, the SWA lr search), was
made from the plan's commit or a later one, with a clean tree
(evaluation/plan_provenance.py); otherwise the page labels it exploratory.
Where a pre-plan run lacks what the plan's statistic reads (the last-epoch EMA, SGD's early-stopped weights), the nearest quantity
it holds is used and named as such. experiments/exploratory_reanalysis.py
applies this to the pre-plan runs. The page's section: evaluation/plan_page.py.
"""

import dataclasses

import numpy as np

from evaluation import claim_common as common
from evaluation import regime, stats
from evaluation.plan_provenance import exploratory_reason, upstream_runs
from training import run_dir as run_directory
from utils.errors import UsageError

NATS = " nats ×100"  # NLL and JS differences at the plan's one bound format (2 decimals): hundredths of a nat


@dataclasses.dataclass
class Statistic:
    """One statistic of a claim: per-seed values `a` and `b` (per pair of seeds with `pairs`), compared as a − b."""

    label: str
    a: list
    b: list
    primary: bool = False
    equivalence: bool = False
    higher_is_better: bool = True
    note: str = ""
    unit: str = " points"  # what the page's numbers are: accuracy/ECE points, or NATS
    pairs: bool = False  # Table 3: the values are pairs of seeds (docs/analysis-plan.md, One policy)

    @property
    def margin(self):
        return stats.EQUIVALENCE_MARGIN if self.equivalence else 0.0

    def assess(self, seconds_per_seed=None, rerun=None):
        interval = dataclasses.replace(stats.paired_interval(self.a, self.b), unit=self.unit)
        if self.pairs:
            interval = dataclasses.replace(interval, method=f"paired t over {interval.n} pairs of seeds, "
                                                            "as if independent")
        diffs = np.asarray(self.a, "float64") - np.asarray(self.b, "float64")
        if self.equivalence:
            verdict = stats.equivalence_verdict(interval)
            needed = stats.seeds_needed(diffs, stats.EQUIVALENCE_MARGIN, equivalence=True)
            rule = f"equivalence within ±{100 * stats.EQUIVALENCE_MARGIN:.1f} points"
        else:
            verdict = stats.verdict(interval, 0.0, higher_is_better=self.higher_is_better)
            needed = stats.seeds_needed(diffs, 0.0)
            rule = f"direction ({'>' if self.higher_is_better else '<'} 0)"
        seeds = None if needed is None else stats.seeds_for_pairs(needed) if self.pairs else needed
        if verdict == "inconclusive" and (seeds is None or seeds > stats.MAX_SEEDS):
            verdict = "not decidable at this budget"
        return {"interval": interval, "verdict": verdict, "rule": rule, "seeds_needed": seeds, "diffs": diffs,
                "power": stats.power_text(interval, needed, seconds_per_seed, pairs=self.pairs, rerun=rerun)}


def seconds_per_seed(group):
    """The fastest seed's wall time (summary.json, every attempt): the seeds do the same work, so what a
    slower one adds is other load on the shared cores, or a pause of the process."""
    times = [run.summary.get("wall_time_seconds") for run in group.runs]
    times = [t for t in times if t is not None]
    return float(min(times)) if times else float("nan")


def _cost(*groups):
    """Seconds a seed costs: one run of each distinct group a claim reads (the SGD-lr twins too)."""
    return sum(seconds_per_seed(group) for group in _distinct(*groups))


def _test(group, method, metric="accuracy"):
    return common.test_values(group, method, metric)


def _has_method(group, method):
    return all(method in evaluation["models"] for evaluation in common.evaluated(group))


# The claims: each returns (statistics, the groups whose SGD runs give the regime rows, seconds per seed).


def fig1a(dirs):
    final = common.runs_of(dirs, "final")
    decay = common.largest_decay(final.runs[0])
    validation = common.validation(dirs)
    sgd = common.paired_sgd(dirs, validation, "validation", "validation_seeds")
    sgd_final = common.paired_sgd(dirs, final, "final")
    if _has_method(final, "ema_final"):
        primary = Statistic(f"EMA α={decay} (acc., BN recomputed) at its validation-selected epoch − the same EMA at "
                            "the last epoch, test", _test(final, "ema_acc"), _test(final, "ema_final"), primary=True)
    elif exploratory_reason([final]) is None:
        raise UsageError(f"{final.runs[0].path}/evaluation.json has no ema_final (the last epoch's EMA), which the "
                         "plan's fig1a reads; train the final runs with this code and run `python -m app.evaluate`")
    else:  # pre-plan runs kept no last-epoch EMA: their per-epoch curve of the first 2,000 test images
        selected, last, epochs = [], [], []
        for run in final.runs:
            epoch = run.summary["ema"][decay]["best_val_accuracy"]["epoch"]
            column = common.column(run, f"ema_{decay}_val_accuracy")
            selected.append(column[epoch - 1])
            last.append(column[-1])
            epochs.append(epoch)
        total = final.config["epochs"]
        primary = Statistic(
            f"EMA α={decay} at its validation-selected epoch − the same EMA at the last epoch (test subset)",
            selected, last, primary=True,
            note=(f"Nearest the pre-plan runs hold: EMA α={decay} (tracked BN) on the final runs' per-epoch curve of "
                  f"the first 2,000 test images, at the epoch chosen on validation ({epochs} of {total}, i.e. "
                  + ", ".join(f"{100 * e / total:.0f} %" for e in epochs) + " of the run; paper App. B: always < 75 %) "
                  "minus the same EMA at the last epoch. The plan reads the whole test set with BN recomputed once."))
    lead = [float(np.mean(common.column(r, "ema_best_val_accuracy") - common.column(s, "val_accuracy")))
            for r, s in zip(validation.runs, sgd.runs)]
    end_ema = [float(common.column(r, "ema_best_val_accuracy")[-1]) for r in validation.runs]
    end_sgd = [float(common.column(s, "val_accuracy")[-1]) for s in sgd.runs]
    secondary = [Statistic("best EMA − SGD, mean over all epochs (validation)", lead, [0.0] * len(lead)),
                 Statistic("best EMA − SGD at the last epoch (validation)", end_ema, end_sgd, equivalence=True)]
    secondary += _early_stopped_sgd(final, sgd_final, "ema_acc", f"EMA α={decay} (acc.), test,")
    total = validation.config["epochs"]
    epochs = [run.summary["ema"][decay]["best_val_accuracy"]["epoch"] for run in validation.runs]
    secondary[0].note = (f"Selected epoch of EMA α={decay} (best validation accuracy) per seed "
                         f"({', '.join(common.seed(run) for run in validation.runs)}): "
                         + ", ".join(f"{e} of {total} ({100 * e / total:.0f} %)" for e in epochs)
                         + "; paper App. B: always < 75 %.")
    return ([primary] + secondary, _distinct(validation, final, sgd, sgd_final),
            _cost(final, validation, sgd, sgd_final))


def fig1b(dirs):
    group = common.validation(dirs)
    sgd_group = common.paired_sgd(dirs, group, "validation", "validation_seeds")
    decays = sorted(group.runs[0].summary["ema"], key=float)
    smallest, largest = decays[0], decays[-1]
    release, last = common.recovery_window(group)
    recovery = {d: recovery_per_seed(group, d, release - 1, None) for d in (smallest, largest)}
    tracked_lead = [float(np.mean((common.column(run, f"ema_{largest}_val_accuracy")
                                   - common.column(s, "val_accuracy"))[release - 1:]))
                    for run, s in zip(group.runs, sgd_group.runs)]
    return ([Statistic(f"[BN recomputed − tracked] of α={largest} minus that of α={smallest}, mean over epochs "
                       f"{release}-{last} (validation)", recovery[largest], recovery[smallest], primary=True),
             Statistic(f"[recomputed − tracked] of α={largest} alone, epochs {release}-{last}", recovery[largest],
                       [0.0] * len(group.runs)),
             Statistic(f"α={largest} with tracked BN − SGD, epochs {release}-{last}", tracked_lead,
                       [0.0] * len(group.runs))],
            _distinct(group, sgd_group), _cost(group, sgd_group))


def recovery_per_seed(group, decay, first, stop):
    """Per seed: mean over epochs [first, stop) (0-based) of BN-recomputed minus tracked validation accuracy."""
    return [float(np.mean((common.column(run, f"ema_{decay}_bn_val_accuracy")
                           - common.column(run, f"ema_{decay}_val_accuracy"))[first:stop])) for run in group.runs]


def _early_stopped_sgd(group, sgd, method, label, metric="accuracy", **options):
    """The plan's comparator wherever an early-stopped EMA is compared: EMA − SGD early-stopped on validation."""
    if not _has_method(sgd, "sgd_early"):
        return []
    return [_noting_final_sgd(Statistic(f"{label} − SGD early-stopped on validation", _test(group, method, metric),
                                        _test(sgd, "sgd_early", metric), **options), sgd)]


def _noting_final_sgd(statistic, sgd):
    """Says so on a row against SGD early-stopped when that model is SGD's final one in every run read."""
    if all(_early_stopped_at_last_epoch(run) for run in sgd.runs):
        statistic.note = ("SGD's epoch chosen on validation is its last in every run read, so SGD early-stopped "
                          "is SGD's final model here: this row compares with SGD's final model.")
    return statistic


def _early_stopped_at_last_epoch(run):
    sgd = (run.summary or {}).get("sgd") or {}
    early, final = sgd.get("early_stopped") or {}, sgd.get("final") or {}
    return early.get("epoch") is not None and early.get("epoch") == final.get("epoch")


def _distinct(*groups):
    """The groups a claim read, each once (an SGD twin is the EMA's own group where the lrs agree)."""
    kept = []
    for group in groups:
        if all(group.runs[0].path != other.runs[0].path for other in kept):
            kept.append(group)
    return kept


def table1(dirs):
    final = common.runs_of(dirs, "final")
    sgd = common.paired_sgd(dirs, final, "final")
    ema, baseline = _test(final, "ema_acc"), _test(sgd, "baseline")
    statistics = [Statistic("EMA (acc.) − baseline, test accuracy", ema, baseline, primary=True),
                  Statistic("EMA (loss) − baseline", _test(final, "ema_loss"), baseline)]
    statistics += _early_stopped_sgd(final, sgd, "ema_acc", "EMA (acc.)")
    statistics.append(Statistic("test loss (NLL): EMA (acc.) − baseline", _test(final, "ema_acc", "loss"),
                                _test(sgd, "baseline", "loss"), higher_is_better=False, unit=NATS))
    swa_method = "swa_budget" if _has_method(sgd, "swa_budget") else "swa"  # SWA at the budget's end
    if _has_method(sgd, swa_method):
        statistics.append(Statistic("EMA (acc.) − SWA at the budget's end", ema, _test(sgd, swa_method),
                                    equivalence=True))
    validation = common.validation(dirs)
    sgd_validation = common.paired_sgd(dirs, validation, "validation", "validation_seeds")
    return statistics, _distinct(final, sgd), _cost(final, validation, sgd, sgd_validation)


def swa(dirs):
    final = common.sgd_group(dirs, "final")  # SWA branches off SGD: the runs at SGD's lr
    method = "swa_budget" if _has_method(final, "swa_budget") else "swa"
    statistics = [Statistic("SWA at the budget's end − SGD's last epoch, test accuracy", _test(final, method),
                            _test(final, "baseline"), primary=True)]
    if method == "swa_budget" and _has_method(final, "swa"):
        statistics.append(Statistic("SWA at the branch's end − SGD's last epoch", _test(final, "swa"),
                                    _test(final, "baseline")))
    # A seed more is a final run at each tuned lr (the EMA's too, which the other claims read).
    return statistics, [final], _cost(common.runs_of(dirs, "final"), final)


def table3(dirs):
    final = common.runs_of(dirs, "final")
    sgd = common.paired_sgd(dirs, final, "final")
    ema_models = common.consistency(dirs["final"], dirs.get("seeds"))["models"]
    sgd_models = common.consistency(dirs.get("final_sgd") or dirs["final"], dirs.get("seeds"))["models"]
    ema, baseline = ema_models["ema_loss"], sgd_models["baseline"]
    statistics = [Statistic("churn: EMA (loss) − baseline, per pair of seeds", ema["churn_by_pair"],
                            baseline["churn_by_pair"], primary=True, higher_is_better=False, pairs=True),
                  Statistic("JS divergence: EMA (loss) − baseline", ema["js_divergence_by_pair"],
                            baseline["js_divergence_by_pair"], higher_is_better=False, unit=NATS, pairs=True)]
    if "sgd_early" in sgd_models:
        statistics.append(Statistic("churn: EMA (loss) − SGD early-stopped on validation", ema["churn_by_pair"],
                                    sgd_models["sgd_early"]["churn_by_pair"], higher_is_better=False, pairs=True))
    return statistics, _distinct(final, sgd), _cost(final, sgd)


def table5(dirs):
    group = common.validation(dirs)
    sgd = common.paired_sgd(dirs, group, "validation", "validation_seeds")
    statistics = [Statistic("ECE: EMA (loss) − baseline (80/20 runs, 100 equal-mass bins)",
                            _test(group, "ema_loss", "ece"), _test(sgd, "baseline", "ece"), primary=True,
                            higher_is_better=False)]
    secondary = (("excess ECE after TS (T on the hold-out; ECE − a calibrated model's at those confidences)",
                  "ece_temperature_scaled_excess", " points"),
                 ("NLL", "loss", NATS), ("NLL after TS (T on the hold-out)", "loss_temperature_scaled", NATS),
                 ("excess ECE after TS (T fitted on the test split's first half, scored on the second)",
                  ("test_half", "ece_excess"), " points"),
                 ("NLL after TS (T fitted on the test split's first half, scored on the second)",
                  ("test_half", "loss"), NATS))
    for label, key, unit in secondary:
        ema, baseline = _calibration(group, "ema_loss", key), _calibration(sgd, "baseline", key)
        if None not in ema + baseline:  # evaluation.json files written before these numbers lack them
            statistics.append(Statistic(f"{label}: EMA (loss) − baseline", ema, baseline, higher_is_better=False,
                                        unit=unit))
    statistics += _early_stopped_sgd(group, sgd, "ema_loss", "ECE: EMA (loss)", "ece", higher_is_better=False)
    return statistics, _distinct(group, sgd), _cost(group, sgd)


def _calibration(group, method, key):
    """Per seed: evaluation.json's `models[method][key]` (`key` a name or a (name, field) path), None if absent."""
    values = []
    for evaluation in common.evaluated(group):
        value = evaluation["models"][method]
        for part in (key,) if isinstance(key, str) else key:
            value = value.get(part) if isinstance(value, dict) else None
        values.append(value)
    return values


def fig2(dirs):
    group = common.runs_of(dirs, "noisy_final")
    sgd_group = common.paired_sgd(dirs, group, "noisy_final")
    decay = common.largest_decay(group.runs[0])
    ema = common.epoch_means(group.runs, f"ema_{decay}_val_accuracy")
    sgd = common.epoch_means(sgd_group.runs, "val_accuracy")
    statistics = [Statistic(f"EMA α={decay} − SGD, mean over all epochs of the clean test curve (first 2,000)",
                            ema, sgd, primary=True, note=_not_ahead_text(group, sgd_group, decay))]
    if _has_method(sgd_group, "sgd_early"):  # the plan's fig2 model: BN tracked (table2's reads it recomputed)
        tracked = run_directory.ema_stem(decay, "accuracy")
        evaluations = common.evaluated(group)
        for run, evaluation in zip(group.runs, evaluations):
            if tracked not in evaluation.get("by_weights", {}):
                raise UsageError(f"{run.path}/evaluation.json has no {tracked} (the EMA with tracked BN, which the "
                                 f"plan's fig2 reads); run `python -m app.evaluate {run.path}` again")
        statistics.append(_noting_final_sgd(Statistic(
            f"EMA α={decay} (acc., BN tracked), clean test, − SGD early-stopped on validation",
            [e["by_weights"][tracked]["accuracy"] for e in evaluations], _test(sgd_group, "sgd_early")), sgd_group))
    return statistics, _distinct(group, sgd_group), _cost(group, sgd_group)


def _not_ahead_text(group, sgd_group, decay):
    """Descriptive, beside fig2's primary: the plan reads "dominates" as the mean over epochs, so say where the
    EMA's curve was not ahead of SGD's (mean over seeds, and per seed)."""
    ema = [common.column(run, f"ema_{decay}_val_accuracy") for run in group.runs]
    sgd = [common.column(run, "val_accuracy") for run in sgd_group.runs]
    behind = [np.flatnonzero(e <= s) + 1 for e, s in zip(ema, sgd)]
    mean = np.flatnonzero(np.mean(ema, axis=0) <= np.mean(sgd, axis=0)) + 1
    listed = ", ".join(map(str, mean)) if len(mean) else "none"
    return (f"Described, not tested: the plan reads \"dominates\" as this mean over epochs, not epoch by epoch. "
            f"Epochs where the EMA's mean curve is at or below SGD's: {listed} (of {len(ema[0])}); in each seed's own "
            f"curves: {', '.join(str(len(b)) for b in behind)} epochs (seeds in the order of the table).")


def table2(dirs):
    group = common.runs_of(dirs, "noisy_final")
    sgd = common.paired_sgd(dirs, group, "noisy_final")
    statistics = [Statistic("EMA (acc.) − CE (SGD's last epoch), clean test", _test(group, "ema_acc"),
                            _test(sgd, "baseline"), primary=True)]
    statistics += _early_stopped_sgd(group, sgd, "ema_acc", "EMA (acc.)")
    return statistics, _distinct(group, sgd), _cost(group, sgd)


def adda(dirs):
    constant, cosine = common.runs_of(dirs, "adda_constant"), common.runs_of(dirs, "adda_cosine")
    decay = _adda_decay(constant)

    def ema(group):
        return [run.evaluation["by_weights"][f"ema_{decay}_acc"]["accuracy"] for run in group.runs]

    gain_constant = np.subtract(ema(constant), _test(constant, "baseline"))
    gain_cosine = np.subtract(ema(cosine), _test(cosine, "baseline"))
    holdout = constant.config.get("limit_validation")
    chosen = (f"How the plan's \"decay chosen on the 10 % hold-out\" is read (as this code did before the plan's "
              f"runs): the decay with the best final-epoch accuracy on the constant-lr runs' hold-out "
              f"({f'its first {holdout:,} images' if holdout else 'all of it'}), mean over the seeds read, EMA "
              f"with its tracked BN statistics (no recompute), and the same decay for the cosine runs, so both "
              f"schedules compare one EMA. Chosen: {decay}. Its test accuracies, too, are the EMA's with tracked BN "
              f"(Adda et al. say nothing of recomputing BN statistics).")
    return ([Statistic(f"constant lr: EMA {decay} − SGD, final epoch, test", ema(constant),
                       _test(constant, "baseline"), primary=True, note=chosen),
             Statistic(f"cosine: EMA {decay} − SGD, final epoch, test", ema(cosine), _test(cosine, "baseline"),
                       equivalence=True),
             Statistic("constant-lr gain − cosine gain", list(gain_constant), list(gain_cosine))],
            [constant, cosine], _cost(constant, cosine))  # a seed is one run of each


def _adda_decay(group):
    """The decay chosen on the 10 % hold-out: best final-epoch hold-out accuracy, mean over seeds."""
    decays = sorted(group.runs[0].summary["ema"], key=float)
    return max(decays, key=lambda d: np.mean([run.history[-1][f"ema_{d}_val_accuracy"] for run in group.runs]))


CLAIMS = {"fig1a": fig1a, "fig1b": fig1b, "table1": table1, "swa": swa, "table3": table3, "table5": table5,
          "fig2": fig2, "table2": table2, "adda-constant-lr": adda}


def assess(claim, dirs):
    """{verdict, rows (one per statistic), regime (one per SGD run), exploratory, primary}."""
    statistics, regime_groups, seconds = CLAIMS[claim](dirs)
    reason = exploratory_reason(regime_groups, upstream=upstream_runs(claim, dirs))
    seeds_read = sorted({run.config.get("seed") for group in regime_groups for run in group.runs})
    rows = []
    for statistic in statistics:
        primary = statistic.primary
        result = statistic.assess(seconds if primary else None,
                                  rerun=(claim, seeds_read) if primary and not reason else None)
        rows.append({"statistic": statistic, **result})
    primary = next(row for row in rows if row["statistic"].primary)
    regime_rows = [(group, run, _regime_row(run)) for group in regime_groups for run in group.runs]
    # Undecided at the first 3 seeds with n* within the budget: the plan adds seeds once, up to n*.
    n = primary["interval"].n
    first_read = (stats.seeds_for_pairs(n) if primary["statistic"].pairs else n) <= stats.FIRST_SEEDS
    pending = primary["seeds_needed"] if primary["verdict"] == "inconclusive" and first_read and not reason else None
    return {"verdict": "exploratory" if reason else primary["verdict"], "would_read": primary["verdict"],
            "exploratory": reason, "rows": rows, "primary": primary, "regime": regime_rows,
            "pending_seeds": pending, "groups": regime_groups}


def _regime_row(run):
    try:
        return regime.regime_row(run.history)
    except ValueError:  # a run shorter than the row's windows (the test suite's tiny budget)
        return None
