"""Regime pilots (docs/analysis-plan.md, "The regime the claims need"): which training images x epochs
make SGD fit its training set while the lr is still high, judged on the regime row alone.

Trains the plan's pilots P1-P3 (and amendment 1's P4 when P1-P3 leave no candidate) one after
another with `python -m app.train` (seed 0, lr 0.2, batch 32, the largest scaled decay only), then writes `pilots.md` and `pilots.json` beside the runs
with each pilot's regime row (evaluation/regime.py) and the plan's choice. A rerun resumes an
unfinished pilot and skips finished ones; `--report-only` reads what exists.

    nohup python experiments/regime_pilots.py --data-dir ../shared/data/tfds > regime-pilots.log 2>&1 &

Run it from a clean checkout: each run records its commit and whether the tree was clean.
"""

import argparse
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation import regime, runs, scaling  # noqa: E402

BATCH_SIZE = 32
LR = 0.2
SEED = 0
LIMIT_VALIDATION = 2000
PRE_PLAN_SAMPLES = 10000 * 30
# (name, training images, epochs), in the plan's order; P4 is amendment 1's, run only when
# the rule over P1-P3 has no candidate.
PILOTS = (("P1", 5000, 60), ("P2", 2500, 120), ("P3", 5000, 120), ("P4", 1250, 240))
AMENDMENT_PILOTS = ("P4",)


def pilot_argv(images, epochs, out, data_dir):
    steps = math.ceil(images / BATCH_SIZE) * epochs
    largest = scaling.scaled_decays(steps)[-1]
    argv = ["--dataset", "cifar10", "--model", "resnet20", "--epochs", str(epochs),
            "--batch-size", str(BATCH_SIZE), "--lr", f"{LR:g}", "--seed", str(SEED),
            "--ema-decays", f"{largest:g}", "--ema-every-steps", str(scaling.PAPER_EVERY_STEPS),
            "--warmup-epochs", f"{scaling.scaled_warmup_epochs(epochs):g}",
            "--limit-train", str(images), "--limit-validation", str(LIMIT_VALIDATION), "--out", out]
    return argv + (["--data-dir", data_dir] if data_dir else [])


def _rule(rows):
    """The plan's choice rule as first written, over finished pilots."""
    single = [r for r in rows if r["samples"] <= PRE_PLAN_SAMPLES and r["regime"]]
    reached = [r for r in single if r["regime"]["reached"]]
    if reached:
        return max(reached, key=lambda r: r["images"])["name"], "reaches the regime at 1x, most images"
    double = [r for r in rows if r["samples"] > PRE_PLAN_SAMPLES and r["regime"] and r["regime"]["reached"]]
    if double:
        return double[0]["name"], "no 1x pilot reaches the regime; this 2x pilot does"
    fallback = [r for r in single if r["regime"]["r2_met"]]
    if fallback:
        best = max(fallback, key=lambda r: r["regime"]["final_train_accuracy"])
        return best["name"], "no pilot reaches the regime: the 1x pilot with the highest R1 meeting R2"
    return None, "no pilot reaches the regime and no 1x pilot meets R2"


def choose(rows):
    """The plan's choice among the pilots, with amendment 1: see docs/analysis-plan.md."""
    first = _rule([r for r in rows if r["name"] not in AMENDMENT_PILOTS])
    amended = [r for r in rows if r["name"] in AMENDMENT_PILOTS and r["regime"]]
    if first[0] is not None or not amended:
        return first
    chosen = _rule(rows)
    if chosen[0] is not None:
        return chosen[0], chosen[1] + " (amendment 1 added P4)"
    single = [r for r in rows if r["samples"] <= PRE_PLAN_SAMPLES and r["regime"] and r["regime"]["r1_met"]]
    if single:
        best = min(single, key=lambda r: r["regime"]["late_validation_gain"])
        return best["name"], ("no pilot reaches the regime: the 1x pilot with the smallest R2 meeting R1 "
                              "(amendment 1); every page says regime not reached")
    return None, "no pilot reaches the regime, none meets R1"


def decided(rows):
    """(choice, why) once the finished pilots decide it, else (None, why not yet).

    The rule reads the 2x pilot only when no 1x pilot reaches the regime: once
    every 1x pilot has finished and one of them reaches it, P3 is not needed;
    amendment 1's P4 is read only when P1-P3 leave no candidate.
    """
    first = [r for r in rows if r["name"] not in AMENDMENT_PILOTS]
    single = [r for r in first if r["samples"] <= PRE_PLAN_SAMPLES]
    if all(r["regime"] for r in single) and any(r["regime"]["reached"] for r in single):
        return choose([r for r in first if r["regime"]])
    if not all(r["regime"] for r in first):
        return None, "pilots not finished"
    if _rule(first)[0] is not None:
        return choose(first)
    if all(r["regime"] for r in rows):
        return choose(rows)
    return None, "pilots not finished (P1-P3 leave no candidate: amendment 1 runs P4)"


def report(out):
    rows = []
    for name, images, epochs in PILOTS:
        path = os.path.join(out, name)
        entry = {"name": name, "images": images, "epochs": epochs, "samples": images * epochs, "regime": None}
        if os.path.exists(os.path.join(path, runs.SUMMARY_FILE)):
            run = runs.read_run(path)
            entry["regime"] = regime.regime_row(run.history)
            # The epochs' own times, summed over every attempt (summary.json's wall time counts the last
            # attempt only when a pilot was resumed).
            entry["wall_seconds"] = (run.summary.get("timing") or {}).get("epoch_seconds")
            entry["provenance"] = run.config.get("provenance")
        rows.append(entry)
    chosen, why = decided(rows)
    lines = ["# Regime pilots (docs/analysis-plan.md)", "",
             "ResNet-20, CIFAR-10, seed 0, 80/20 split (2,000 validation images), batch 32, lr 0.2, cosine.", "",
             "| pilot | images × epochs | regime row | time (its epochs, 2 cores) |", "|---|---|---|---|"]
    for r in rows:
        text = (regime.regime_text(r["regime"]) if r["regime"] else
                "not run: the choice rule did not need it" if chosen else
                "not finished")
        wall = f"{r['wall_seconds'] / 60:.0f} min" if r.get("wall_seconds") else "—"
        lines.append(f"| {r['name']} | {r['images']:,} × {r['epochs']} | {text} | {wall} |")
    lines += ["", f"Choice: {chosen or '—'} ({why})."]
    with open(os.path.join(out, "pilots.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "pilots.json"), "w", encoding="utf-8") as handle:
        json.dump({"pilots": rows, "chosen": chosen, "why": why}, handle, indent=2, default=str)
    print("\n".join(lines))
    return chosen, why


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="experiments/results/regime-pilots")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
        for name, images, epochs in PILOTS:
            path = os.path.join(args.out, name)
            if os.path.exists(os.path.join(path, runs.SUMMARY_FILE)):
                continue
            if report(args.out)[0] is not None:
                break  # decided: the remaining pilots cannot change the choice (CPU hours are scarce)
            command = [sys.executable, "-m", "app.train", *pilot_argv(images, epochs, path, args.data_dir)]
            print(" ".join(command), flush=True)
            subprocess.run(command, check=False)
            report(args.out)
    report(args.out)


if __name__ == "__main__":
    main()
