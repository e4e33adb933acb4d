"""What the claim builders share: reading a claim's runs, per-seed tables, the result dict.

The builders: evaluation/claim_tables.py (the paper's protocol: Fig. 1a/1b,
Tables 1, 3, 5, SWA) and evaluation/noise_claims.py (label noise: Fig. 2,
Table 2; Adda et al.). Their pages: evaluation/claims.py.
"""

import dataclasses
import os

import numpy as np

from evaluation import report, runs
from utils.errors import UsageError


def group(*paths, seeds=None):
    """The runs behind `paths` (missing directories skipped) as one group; with `seeds`, exactly those seeds'
    runs (app.reproduce's --seeds): another claim's seeds in the same directory are not read, not even a
    half-trained one, and a named seed that is missing is an error."""
    paths = [path for path in paths if path and os.path.isdir(path)]
    if seeds is None:
        return runs.load_groups(paths)[0]
    chosen = []
    for path in paths:
        if os.path.exists(os.path.join(path, runs.CONFIG_FILE)):
            chosen.append(path)  # one run (seed 0's validation run): kept or not by the seed it records
        else:
            chosen += [directory for seed, directory in runs.seed_directories(path) if seed in seeds]
    found = runs.load_groups(chosen)[0] if chosen else None
    kept = [run for run in (found.runs if found else []) if run.config.get("seed") in seeds]
    missing = sorted(set(seeds) - {run.config.get("seed") for run in kept})
    if missing:
        raise UsageError(f"{', '.join(paths) or 'the run directories'} hold no finished run of seed "
                         f"{' '.join(map(str, missing))}; train it: python -m app.reproduce ... --seeds "
                         f"{' '.join(map(str, seeds))}")
    return dataclasses.replace(found, runs=kept)


def runs_of(dirs, *keys):
    """The runs of app.reproduce's directories `keys` (dirs["seeds"]: the seeds its command names)."""
    return group(*[dirs.get(key) for key in keys], seeds=dirs.get("seeds"))


def sgd_group(dirs, *keys):
    """The runs SGD's columns read: app.reproduce's `<key>_sgd` twins (SGD at its own tuned lr,
    docs/analysis-plan.md, Comparators) where they exist, else the EMA's runs themselves."""
    return group(*[dirs.get(f"{key}_sgd") or dirs.get(key) for key in keys], seeds=dirs.get("seeds"))


def paired_sgd(dirs, ema_group, *keys):
    """`sgd_group` with its runs in `ema_group`'s seed order (an SGD twin pairs with its EMA run seed by
    seed); a seed of `ema_group` that SGD lacks is an error, not a silently shorter pairing."""
    sgd = sgd_group(dirs, *keys)
    by_seed = {run.config.get("seed"): run for run in sgd.runs}
    missing = [seed(run) for run in ema_group.runs if run.config.get("seed") not in by_seed]
    if missing:
        raise UsageError(f"{sgd.runs[0].path} and the runs beside it hold no seed {missing[0]} to pair with "
                         f"{ema_group.runs[0].path}'s; train it (python -m app.reproduce)")
    return dataclasses.replace(sgd, runs=[by_seed[run.config.get("seed")] for run in ema_group.runs])


def has_twin(dirs, *keys):
    """Whether SGD's columns read runs of their own (`<key>_sgd`: the two tuned lrs differ)."""
    return any(dirs.get(f"{key}_sgd") for key in keys)


def lr_columns(twin):
    """(header, row key) of a per-epoch table's lr: with an SGD twin, each run's own schedule ("lr", "sgd_lr")."""
    return [("lr (EMA's runs)", "lr"), ("lr (SGD's runs)", "sgd_lr")] if twin else [("lr", "lr")]


def validation(dirs):
    """The 80/20 validation runs: seed 0's (`validation`) and the other seeds' (`validation_seeds`)."""
    return runs_of(dirs, "validation", "validation_seeds")


def column(run, name):
    return np.array([row.get(name, np.nan) for row in run.history], dtype="float64")


def epoch_means(runs, name):
    """Per run: the mean over all its epochs of history column `name` (fig2's statistic: plan and page)."""
    return [float(np.mean(column(run, name))) for run in runs]


def mean_std(values):
    """(mean, sample std or None for one value) of the finite values (report.mean_std)."""
    return report.mean_std(values)[:2]


def pm(mean, std, scale=100, digits=2):
    return report.format_mean_std(mean, std, scale, digits)


def largest_decay(run):
    return max(run.summary.get("ema", {}), key=float)


def seed(run):
    return str(run.config.get("seed", "?"))


def evaluated(group):
    """Each run's evaluation.json (app.evaluate on the test split), or a ValueError naming the command."""
    for run in group.runs:
        if run.evaluation is None:
            raise ValueError(f"{run.path} has no evaluation.json; run `python -m app.evaluate {run.path}`")
    return [run.evaluation for run in group.runs]


def test_values(group, key, metric="accuracy"):
    """Per seed: `models[key][metric]` of evaluation.json (whole test split unless --limit-test)."""
    return [evaluation["models"][key][metric] for evaluation in evaluated(group)]


def test_examples(group):
    return evaluated(group)[0]["test_examples"]


def per_seed_table(group, columns, digits=2, scale=100):
    """Rows per seed, then mean ± sd: `columns` = [(label, per-seed values)]."""
    lines = [[seed(run)] + [f"{scale * values[i]:.{digits}f}" for _, values in columns]
             for i, run in enumerate(group.runs)]
    lines.append(["mean ± sd"] + [pm(*mean_std(values), scale, digits) for _, values in columns])
    return report.markdown_table(["seed"] + [label for label, _ in columns], lines)


def result(rows, table, headline, group, figures_drawn=(), mechanism="", extra_runs=()):
    """A builder's output: numbers, never a verdict (a page's verdict is evaluation/plan_claims.py's).

    `extra_runs`: other runs the page read (an SGD twin's); one that is already in `group` is listed once.
    """
    read = list(group.runs)
    read += [run for run in extra_runs if all(run.path != other.path for other in read)]
    return dict(rows=rows, table=table, figures=list(figures_drawn), headline=headline, mechanism=mechanism,
                runs=read, config=group.config)


def release_text(config):
    released = runs.warmup_release_epochs(config)
    parts = [f"{d} at epoch {e}" if e else f"{d} never (held at the warm-up value all run)"
             for d, e in released.items()]
    return (f"Decay warm-up min(α, (t+1)/(t+10)) ({config.get('ema_warmup', 'steps')}, "
            f"{runs.steps_per_epoch(config)} steps/epoch, T={config['ema_every_steps']}): released " + ", ".join(parts) + ".")


def recovery_window(group):
    """(first, last) epochs, 1-based and inclusive, where the analysis plan measures Fig. 1b's failure and
    recovery: from the largest decay's release by the decay warm-up to the end (the last epoch alone if the
    warm-up never releases it). The plan's statistic and the page's table both read this window."""
    largest = sorted(group.runs[0].summary["ema"], key=float)[-1]
    last = group.config["epochs"]
    return runs.warmup_release_epochs(group.config)[largest] or last, last


def consistency(directory, seeds=None):
    """app.consistency's consistency.json of a directory of seeds; with `seeds`, only the pairs of those
    seeds (the directory may hold seeds another claim added): per-pair lists, means and accuracies."""
    import itertools
    import json

    with open(os.path.join(directory, runs.CONSISTENCY_FILE), encoding="utf-8") as handle:
        data = json.load(handle)
    if seeds is None or sorted(data["seeds"]) == sorted(seeds):
        return data
    missing = sorted(set(seeds) - set(data["seeds"]))
    if missing or "pair_seeds" not in data:
        raise UsageError(f"{directory}/{runs.CONSISTENCY_FILE} holds seeds {data['seeds']}, not "
                         f"{sorted(seeds)}; run `python -m app.consistency {directory}` again")
    kept_seeds = [s for s in data["seeds"] if s in seeds]
    pairs = [i for i, pair in enumerate(data["pair_seeds"]) if set(pair) <= set(seeds)]
    models = {}
    for method, entry in data["models"].items():
        entry = dict(entry)
        entry["accuracy_by_seed"] = [a for s, a in zip(data["seeds"], entry["accuracy_by_seed"]) if s in seeds]
        entry["accuracy"] = float(np.mean(entry["accuracy_by_seed"]))
        for key in ("churn", "js_divergence"):
            entry[f"{key}_by_pair"] = [entry[f"{key}_by_pair"][i] for i in pairs]
            entry[key] = float(np.mean(entry[f"{key}_by_pair"]))
        if "js_divergence_bits" in entry:
            entry["js_divergence_bits"] = entry["js_divergence"] / np.log(2)
        models[method] = entry
    return {**data, "seeds": kept_seeds, "pairs": len(pairs), "models": models,
            "pair_seeds": [list(pair) for pair in itertools.combinations(kept_seeds, 2)]}
