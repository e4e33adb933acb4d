"""The paper's claims that `python -m app.reproduce` checks, and the pages it writes.

`CLAIMS` states each claim with the paper's numbers; `BUILDERS` computes its
table, figure and headline from finished runs (evaluation/claim_tables.py,
evaluation/noise_claims.py); its verdict is the analysis plan's alone
(evaluation/plan_claims.py; its section of the page: evaluation/plan_page.py).
`write_claim` writes `<claim>.md/.csv/.json`, `write_index` the RESULTS.md of
a budget. Nothing here trains.
"""

import json
import os

from evaluation import claim_tables, noise_claims, plan_page, report, runs, scaling

CLAIMS = {
    "fig1a": "§3.2-3.3 Fig. 1a: validation accuracy of SGD and of the best EMA each epoch "
    "(warm-up + cosine): EMA ahead early, peaking before the end, meeting SGD as lr -> 0.",
    "fig1b": "§3.4 Fig. 1b: the largest decays fail without BN recompute and recover with it.",
    "table1": "§4.2 Table 1: test accuracy/loss of the baseline, EMA (acc.), EMA (loss) (BN "
    "recomputed once), SWA. Paper R18/C100: 77.63 / 78.55 / 78.07 / 78.69.",
    "table3": "§4.4 Table 3: churn and JS divergence between seeds, baseline vs EMA (loss). "
    "Paper R18/C100 churn 18.84 -> 12.71, JS 0.32 -> 0.09.",
    "table5": "§4.6 Table 5: ECE and ECE after temperature scaling, baseline vs EMA. "
    "Paper R18/C100 ECE 11.75 -> 9.46, with TS 4.67 -> 3.13.",
    "swa": "SWA paper §4: SWA vs SGD at the same budget (R18-like nets: +0.5-1.5 points on "
    "CIFAR-100; Table 1 of the EMA paper: 78.69 vs 77.63).",
    "fig2": "§4.3 Fig. 2: noisy labels (~40 %), clean test set each epoch: EMA's peak vs "
    "SGD's final accuracy (paper C100N: 64.8 vs 55.0).",
    "table2": "§4.3 Table 2: EMA (acc.) on CIFAR-N 'worse' beside published methods "
    "(paper C10N 86.71, C100N 65.15; CE standard 77.69 / 55.50).",
    "adda-constant-lr": "Adda et al. Table 1: constant vs cosine schedule, SGD vs EMA at "
    "several decays (constant: SGD 86.4, EMA 0.999 92.2; cosine: 91.4 for all).",
}
CLAIM_ORDER = tuple(CLAIMS)


BUILDERS = {"fig1a": claim_tables.fig1a, "fig1b": claim_tables.fig1b, "table1": claim_tables.table1,
            "table3": claim_tables.table3, "table5": claim_tables.table5, "swa": claim_tables.swa,
            "fig2": noise_claims.fig2, "table2": noise_claims.table2, "adda-constant-lr": noise_claims.adda}


def write_claim(claim, text, out, dirs, commands, command, wall_seconds, images, forward, run_seconds=0.0):
    """Builds one claim's outputs into `out`: <claim>.md, <claim>.csv, PNGs; returns their summary.

    `text` states the claim with the paper's numbers (`CLAIMS`).
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
    parts.append(f"Command: `{command}`. Its training runs took {run_seconds / 60:.0f} min here (2 CPU cores; "
                 f"sum of their summary.json wall times) and process about {images:,} training and "
                 f"{forward:,} forward images (evaluation, BN recompute); this invocation took "
                 f"{wall_seconds:.0f} s. Steps:\n\n")
    parts += [f"    {text}\n" for text in commands]
    markdown = os.path.join(out, f"{claim}.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write("".join(parts))
    verdict_path = os.path.join(out, f"{claim}.json")
    with open(verdict_path, "w", encoding="utf-8") as handle:
        json.dump({"claim": claim, "verdict": planned["verdict"], "would_read": planned["would_read"],
                   "exploratory": planned["exploratory"], "pending_seeds": planned["pending_seeds"],
                   "primary": planned["primary"]["statistic"].label,
                   "primary_interval": planned["primary"]["interval"].short(), "headline": result["headline"], "wall_seconds": round(wall_seconds, 1),
                   "train_run_seconds": round(run_seconds, 1),
                   "train_images": images, "forward_images": forward}, handle, indent=2)
    files = [markdown, csv_path, verdict_path] + list(result["figures"])
    return {"files": files, "headline": result["headline"], "verdict": planned["verdict"], "rows": result["rows"]}


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
    lines = ["| run | seed | commit | tree | command.txt is a step below |", "|---|---|---|---|---|"]
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
                     f"| {tree} | {matches} |")
    return "**Provenance** (each run's config.json and command.txt):\n\n" + "\n".join(lines)


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
