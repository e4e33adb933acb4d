"""Which runs may decide under the analysis plan: made from its commit or a later one, with a clean tree.

docs/analysis-plan.md: "Every verdict on a claim page is computed by this plan's rule from runs whose
`config.json` records a commit at or after the commit that added this file, with a clean tree". The plan's
commit is the last one that changed the file (`plan_commit`: stricter). A verdict reads the runs its
statistics read and those they depend on (`upstream_runs`); `exploratory_reason` says why any of them
cannot decide. The statistics: evaluation/plan_claims.py.
"""

import json
import os
import subprocess

from evaluation import runs
from training import run_dir as run_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN_FILE = os.path.join(ROOT, "docs", "analysis-plan.md")


def plan_commit():
    """The commit that last changed docs/analysis-plan.md (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", PLAN_FILE], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def upstream_runs(claim, dirs):
    """[(path, JSON with a `provenance`)] of what a claim's numbers come from without its statistics reading
    it: the lr search's trials (the lr of every run), seed 0's validation runs (the final runs' selected
    epochs, SGD's early-stopping epoch; the -sgd twin's too) and, for the claims that read SWA, the SWA lr
    search (app.tune_swa's choice file). Adda's runs have none of these."""
    if claim == "adda-constant-lr":
        return []
    search, validation = ("tuning_noisy", "noisy_validation") if claim in ("fig2", "table2") else ("tuning",
                                                                                                  "validation")
    validations = [dirs.get(key) for key in (validation, f"{validation}_sgd") if dirs.get(key)]
    files = [os.path.join(path, runs.CONFIG_FILE) for path in validations]
    if claim in ("table1", "swa"):
        files += [os.path.join(path, run_directory.SWA_TUNING_DIR, run_directory.SWA_TUNING_FILE)
                  for path in validations]
    if dirs.get(search) and os.path.isdir(dirs[search]):
        files += sorted(os.path.join(dirs[search], name, runs.CONFIG_FILE) for name in os.listdir(dirs[search])
                        if name.startswith("trial_"))
    found = []
    for path in files:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                shown = os.path.dirname(path) if path.endswith(runs.CONFIG_FILE) else path  # a run: its directory
                found.append((shown, json.load(handle)))
    return found


def exploratory_reason(groups, commit=None, upstream=()):
    """Why the runs of `groups` (and the `upstream` (path, config) pairs) cannot decide under the plan, or
    None when every one can."""
    commit = commit or plan_commit()
    if commit is None:
        return "the plan's commit is unknown (not a git checkout)"
    read = [(run.path, run.config) for group in groups for run in group.runs] + list(upstream)
    for path, config in read:
        reason = _unfit(config.get("provenance") or {}, commit, path, "was made from")
        if reason:
            return reason
        # A resumed run ran under each attempt's code (training/run_dir.py, attempts.jsonl; none for a run made
        # before that file existed, or a tuning trial): every attempt's code is held to the same rule.
        for attempt in (run_directory.read_attempts(path) if os.path.isdir(path) else None) or ():
            resumed = attempt.get("resumed_at")
            where = f"resumed at epoch {resumed['epoch']}" if resumed else "its first attempt"
            reason = _unfit(attempt, commit, f"{path} ({where})", "ran")
            if reason:
                return reason
    return None


def _unfit(code, commit, what, verb):
    """Why code recorded as {"git_commit", "git_dirty"} cannot decide under the plan, or None."""
    made = code.get("git_commit")
    if made is None or code.get("git_dirty") is not False:
        return f"{what} records no clean commit"
    descends = subprocess.run(["git", "merge-base", "--is-ancestor", commit, made], cwd=ROOT, capture_output=True,
                              timeout=10).returncode == 0
    return None if descends else f"{what} {verb} {made[:10]}, before the plan's commit {commit[:10]}"
