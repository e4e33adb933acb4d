"""What the claim builders share: reading a claim's runs, per-seed tables, the result dict.

The builders: evaluation/claim_tables.py (the paper's protocol: Fig. 1a/1b,
Tables 1, 3, 5, SWA) and evaluation/noise_claims.py (label noise: Fig. 2,
Table 2; Adda et al.). Their pages: evaluation/claims.py.
"""

import os

import numpy as np

from evaluation import report, runs


def group(*paths):
    """The runs behind `paths` (missing directories skipped) as one group."""
    return runs.load_groups([path for path in paths if path and os.path.isdir(path)])[0]


def sgd_group(dirs, *keys):
    """The runs SGD's columns read: app.reproduce's `<key>_sgd` twins (SGD at its own tuned lr,
    docs/analysis-plan.md, Comparators) where they exist, else the EMA's runs themselves."""
    return group(*[dirs.get(f"{key}_sgd") or dirs.get(key) for key in keys])


def validation(dirs):
    """The 80/20 validation runs of every seed (the first seed's run and the others')."""
    return group(dirs["validation"], dirs.get("validation_seeds"))


def column(run, name):
    return np.array([row.get(name, np.nan) for row in run.history], dtype="float64")


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
    """A builder's output: numbers, never a verdict (a page's verdict is evaluation/plan_claims.py's)."""
    return dict(rows=rows, table=table, figures=list(figures_drawn), headline=headline, mechanism=mechanism,
                runs=list(group.runs) + list(extra_runs), config=group.config)


def release_text(config):
    released = runs.warmup_release_epochs(config)
    parts = [f"{d} at epoch {e}" if e else f"{d} never (held at the warm-up value all run)"
             for d, e in released.items()]
    return (f"Decay warm-up min(α, (t+1)/(t+10)) ({config.get('ema_warmup', 'steps')}, "
            f"{runs.steps_per_epoch(config)} steps/epoch, T={config['ema_every_steps']}): released " + ", ".join(parts) + ".")
