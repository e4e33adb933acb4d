"""The paper's claims that `python -m app.reproduce` checks, and the pages it writes.

The claims themselves (`CLAIMS`, with the papers' numbers) and the README's
status table are in evaluation/claim_list.py. `BUILDERS` computes each claim's
table, figure and headline from finished runs (evaluation/claim_tables.py,
evaluation/noise_claims.py); its verdict is the analysis plan's alone
(evaluation/plan_claims.py; its section of the page: evaluation/plan_page.py).
`write_claim` writes `<claim>.md/.csv/.json`, `write_index` the RESULTS.md of
a budget. Nothing here trains.
"""

import json
import os

from evaluation import claim_tables, noise_claims, plan_page, report, runs, scaling
from training import run_dir as run_directory

BUILDERS = {"fig1a": claim_tables.fig1a, "fig1b": claim_tables.fig1b, "table1": claim_tables.table1,
            "table3": claim_tables.table3, "table5": claim_tables.table5, "swa": claim_tables.swa,
            "fig2": noise_claims.fig2, "table2": noise_claims.table2, "adda-constant-lr": noise_claims.adda}


def write_claim(claim, text, out, dirs, commands, command, wall_seconds, images, forward, run_seconds=0.0,
                steps_run=None):
    """Builds one claim's outputs into `out`: <claim>.md, <claim>.csv, PNGs; returns their summary.

    `text` states the claim with the paper's numbers (evaluation/claim_list.py's `CLAIMS`).
    """
    result = BUILDERS[claim](dirs, out)
    # The verdict is the analysis plan's (docs/analysis-plan.md), or "exploratory" for runs that predate it.
    plan_text, planned = plan_page.section(claim, dirs)
    csv_path = report.write_csv(os.path.join(out, f"{claim}.csv"), result["rows"])
    parts = [f"# {claim}\n\n", f"**Claim.** {text}\n\n", f"**Ours.** {result['headline']}\n\n",
             plan_text + "\n"]
    if result["mechanism"]:
        parts.append(f"{result['mechanism']}\n\n")
    parts.append(result["table"] + "\n")
    for path in result["figures"]:
        parts.append(f"![{claim}]({os.path.basename(path)})\n\n")
    parts.append(_scaling_text(result) + "\n\n")
    parts.append(_provenance_text(result["runs"], commands) + "\n\n")
    searches = [name for name, flag in (("lr", " -m app.tune "), ("SWA-lr", " -m app.tune_swa "))
                if any(flag in f" {text} " for text in commands)]
    searched = " and ".join(searches) + (" searches" if len(searches) > 1 else " search")
    left_out = f"; the {searched} not counted: no trial records its time" if searches else ""
    parts.append(f"Command: `{command}`. Its training runs took {run_seconds / 60:.0f} min here (2 CPU cores; "
                 f"sum of their summary.json wall times{left_out}). "
                 f"All its steps{f', the {searched} included,' if searches else ''} process about {images:,} training "
                 f"and {forward:,} forward images (evaluation, BN recompute). "
                 f"{_last_call_text(steps_run, commands, wall_seconds)} Steps:\n\n")
    parts += [f"    {text}\n" for text in commands]
    markdown = os.path.join(out, f"{claim}.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write("".join(parts))
    verdict_path = os.path.join(out, f"{claim}.json")
    with open(verdict_path, "w", encoding="utf-8") as handle:
        json.dump({"claim": claim, "verdict": planned["verdict"], "would_read": planned["would_read"],
                   "exploratory": planned["exploratory"], "pending_seeds": planned["pending_seeds"],
                   "primary": planned["primary"]["statistic"].label,
                   "primary_interval": planned["primary"]["interval"].short(), "regime": plan_page.regime_summary(planned),
                   "headline": result["headline"], "wall_seconds": round(wall_seconds, 1),
                   "train_run_seconds": round(run_seconds, 1),
                   "train_images": images, "forward_images": forward}, handle, indent=2)
    files = [markdown, csv_path, verdict_path] + list(result["figures"])
    return {"files": files, "headline": result["headline"], "verdict": planned["verdict"], "rows": result["rows"]}


def _last_call_text(steps_run, commands, wall_seconds):
    """What the `app.reproduce` that wrote the page did: finished steps are kept, so a rerun may only render."""
    if steps_run is None:
        return ""
    if not steps_run:
        return (f"The last `app.reproduce` to write this page found all {len(commands)} steps done and only "
                f"rendered it.")
    return (f"The last `app.reproduce` to write this page ran {steps_run} of its {len(commands)} steps "
            f"(the others were done already) in {wall_seconds:.0f} s.")


def _scaling_text(result):
    """The budget's averaging geometry beside the paper's (evaluation/scaling.py)."""
    if result.get("outside_rule"):
        return f"**Budget vs paper.** {result['outside_rule']}"
    config = result["config"]
    swa_start = config.get("swa_start_epoch") if config.get("swa") else None
    rows = scaling.ratio_rows(runs.steps_per_epoch(config), config["epochs"], config.get("ema_decays", ()),
                              config["ema_every_steps"], config.get("warmup_epochs", 0), swa_start)
    # The runs an SWA page reads may be SGD's own-lr twins, which train no EMA: then no decay rows.
    decays = bool(config.get("ema_decays"))
    return (f"**Budget vs paper**: where the paper's {'averaging windows, decay releases, ' if decays else ''}lr "
            f"warm-up and SWA start fall, as fractions of its run (62,600 steps) and of this one "
            f"({runs.steps_per_epoch(config) * config['epochs']:,} steps); evaluation/scaling.py's rule (T=16, 1 − α "
            f"scaled by the ratio of the steps) makes the columns agree{', decays paired by rank' if decays else ''}:"
            "\n\n" + scaling.ratio_table(rows))


def _provenance_text(used, commands):
    """Which code and command produced each run the page reads (config.json's provenance, command.txt)."""
    lines = ["| run | seed | commit | tree | resumed (attempts.jsonl) | command.txt matches a step below |",
             "|---|---|---|---|---|---|"]
    planned = {" ".join(command.split()) for command in commands}
    for run in used:
        provenance = run.config.get("provenance") or {}
        commit = provenance.get("git_commit")
        dirty = provenance.get("git_dirty")
        tree = "unknown" if dirty is None else ("dirty" if dirty else "clean")
        try:
            with open(os.path.join(run.path, "command.txt"), encoding="utf-8") as handle:
                recorded = " ".join(handle.read().split())
        except OSError:
            recorded = None
        matches = "—" if recorded is None else ("yes" if _matches(recorded, planned) else f"no: `{recorded}`")
        lines.append(f"| {run.path} | {run.config.get('seed', '?')} | {commit[:10] if commit else 'not recorded'} "
                     f"| {tree} | {_resumes_text(run.path)} | {matches} |")
    return "**Provenance** (each run's config.json, attempts.jsonl and command.txt):\n\n" + "\n".join(lines)


def _resumes_text(path):
    """Where a run was resumed, under which commit, from its attempts.jsonl."""
    attempts = run_directory.read_attempts(path)
    if attempts is None:
        return "not recorded (run predates attempts.jsonl)"
    resumes = [a for a in attempts if a.get("resumed_at")]
    listed = ", ".join(f"epoch {a['resumed_at']['epoch']} at {(a.get('git_commit') or 'no commit')[:10]}"
                       f"{'' if a.get('git_dirty') is False else ' (tree not clean)'}" for a in resumes)
    earlier = "; earlier resumes not recorded" if any(a.get("note") for a in attempts) else ""
    return (listed or "no") + earlier


def _matches(recorded, planned):
    """A run's command.txt against the planned steps; a multi-seed step wrote it with all its --seeds."""
    return recorded in planned or any(recorded.split(" --seeds ")[0] == step.split(" --seeds ")[0] for step in planned)


def verdict_index(budget_dir, claim_order, link_prefix):
    """The claims written so far under `budget_dir`, in `claim_order`.

    Returns a Markdown verdict table, every written claim's page (its figure
    links prefixed with `link_prefix(claim)`) and the claims not written yet.
    """
    rows, pages, missing = [], [], []
    for claim in claim_order:
        folder = os.path.join(budget_dir, claim)
        if not os.path.exists(os.path.join(folder, f"{claim}.json")):
            missing.append(claim)
            continue
        with open(os.path.join(folder, f"{claim}.json"), encoding="utf-8") as handle:
            entry = json.load(handle)
        verdict = f"**{entry['verdict']}**" + (
            f", not final: the plan adds seeds once, up to {entry['pending_seeds']}"
            if entry.get("pending_seeds") else "")
        rows.append(f"| [{claim}](#{claim}) | {verdict} | {entry['headline']} |")
        with open(os.path.join(folder, f"{claim}.md"), encoding="utf-8") as handle:
            page = handle.read()
        page = page.replace(f"]({claim}.png)", f"]({link_prefix(claim)}{claim}.png)")
        pages.append(page.replace(f"# {claim}\n", f"## {claim}\n", 1))
    table = "| claim | verdict | ours |\n|---|---|---|\n" + "".join(row + "\n" for row in rows)
    return table, pages, missing


def write_index(budget_dir, claim_order):
    """`budget_dir/RESULTS.md`: a verdict table and every claim's page, for the claims written so far."""
    table, pages, missing = verdict_index(budget_dir, claim_order, lambda claim: f"{claim}/")
    text = table + "\n"
    if missing:
        text += "Not run yet: " + ", ".join(missing) + ".\n\n"
    path = os.path.join(budget_dir, "RESULTS.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n".join(pages))
    return path
