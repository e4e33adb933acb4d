"""Stages in git what the unfinished steps of `app.reproduce` need to resume, so that a fresh checkout goes on.

    python experiments/park_runs.py [--budget small] [--seeds 0 1 2] [--out reproductions] [--dry-run]

A session on this project's CPU machine lasts 3 hours and the next one starts
from a fresh checkout of main: what .gitignore keeps out of git (checkpoints,
the weights each average has selected so far, SWA's branch point, KerasTuner's
trial checkpoints) is gone, and a run longer than a session (the small budget's
seed-0 validation run: 120 epochs of ~200 s here) would start over every time.

First stop the runs with SIGTERM (each saves a checkpoint at its step's end and
says so), then run this. It stages the results git keeps anyway (`git add
OUT/<budget>`: config.json, which a resume compares, histories, summaries) and,
for every step of `app.reproduce all` that is not done, force-adds (`git add
-f`) the ignored files it resumes from or reads: a train or tune step's whole
run directory (checkpoint `last.npz`, the weights selected so far, a SWA
branch's checkpoint, trials), an evaluate step's `weights/`, app.tune_swa's
branch point and branches; never what a rerun does not read: TensorBoard event
files (a resumed run's curves start at the epoch it resumed from), logs, locks,
`checkpoint/previous.npz`, `best.keras`, half-written `.partial-*` files.
Files parked earlier that no unfinished step needs any more, or that are gone
(a finished run deletes its checkpoint), leave the index (`git rm --cached`;
they stay on disk, ignored). It prints what it staged; committing is left to
you.
"""

import argparse
import fnmatch
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# What a rerun rebuilds or never reads (path patterns, relative to the repository).
NOT_NEEDED = ("*/tensorboard/*", "*events.out.tfevents.*", "*.log", "*/run.lock",
              "*/checkpoint/previous.npz", "*/best.keras", "*/.partial-*")
LARGEST_MIB = 100  # no file of a ResNet-20 run comes near; a paper-budget one might: refused, not staged


def needed_directories(steps):
    """{directory: subpaths or None (all of it)} that the steps that are not done resume from or read."""
    from training import run_dir as run_directory
    from training import swa_tuning

    needed = {}

    def need(directory, parts=None):
        if parts is None or needed.get(directory, set()) is None:
            needed[directory] = None
        else:
            needed.setdefault(directory, set()).update(parts)

    for step in steps:
        if step.done():
            continue
        if step.command in ("train", "tune"):  # the run or search being written: its checkpoints and selections
            need(os.path.dirname(step.done_files[0]))
        elif step.command == "evaluate":  # the weights it tests, of each run it tests
            for path in step.done_files:
                need(os.path.dirname(path), {run_directory.WEIGHTS_DIR})
        elif step.command == "tune_swa":  # the branch point and the branches tried so far
            run = step.argv[0]
            need(run, {os.path.relpath(swa_tuning.branch_point(run), run), run_directory.SWA_TUNING_DIR})
        # consistency reads the final runs' test logits, which are tracked (.gitignore's exception).
    return needed


def _git(root, *argv):
    result = subprocess.run(["git", "--literal-pathspecs", *argv], cwd=root, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: git {' '.join(argv[:2])} failed: {result.stderr.strip()}")
    return [path for path in result.stdout.split("\0") if path]


def _wanted(path, needed):
    if any(fnmatch.fnmatch(path, pattern) for pattern in NOT_NEEDED):
        return False
    for directory, parts in needed.items():
        if not path.startswith(directory + "/"):
            continue
        inside = path[len(directory) + 1:]
        if parts is None or any(inside == part or inside.startswith(part + "/") for part in parts):
            return True
    return False


def park(out, needed, dry_run=False, root=ROOT):
    """Stages `out` and the ignored files under it that `needed` asks for; unstages the ignored others.

    Paths may be relative to the repository `root` or absolute. Returns (parked, unparked) file paths,
    relative to `root`.
    """
    def relative(path):
        return os.path.relpath(os.path.join(root, path), root)  # also "./x" and absolute paths

    out = relative(out)
    needed = {relative(directory): parts for directory, parts in needed.items()}
    ignored = _git(root, "ls-files", "-z", "--cached", "--others", "--ignored", "--exclude-standard", "--", out)
    present = [path for path in ignored if os.path.isfile(os.path.join(root, path))]
    tracked = set(_git(root, "ls-files", "-z", "--cached", "--ignored", "--exclude-standard", "--", out))
    added = sorted(path for path in present if _wanted(path, needed))
    removed = sorted(path for path in tracked if path not in added)
    large = [path for path in added if os.path.getsize(os.path.join(root, path)) > LARGEST_MIB * 2**20]
    if large:
        sys.exit(f"error: {large[0]} is over {LARGEST_MIB} MiB, too large for git; keep it on a disk that "
                 "outlives the session instead (nothing was staged)")
    if not dry_run:
        if os.path.isdir(os.path.join(root, out)):
            _git(root, "add", "--", out)  # also stages the deletion of parked files that are gone
        for start in range(0, len(added), 200):
            _git(root, "add", "--force", "--", *added[start:start + 200])
        for start in range(0, len(removed), 200):
            _git(root, "rm", "--cached", "--quiet", "--ignore-unmatch", "--", *removed[start:start + 200])
    return added, removed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="small", help="app.reproduce's budget. Defaults to small.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="app.reproduce's --seeds. Defaults to its default.")
    parser.add_argument("--out", default=None, help="app.reproduce's --out (runs in OUT/<budget>/). Defaults to its default.")
    parser.add_argument("--dry-run", action="store_true", help="print what would be staged; stage nothing")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the plan's paths are relative to the repository, as app.reproduce runs them
    from app import reproduce, reproduce_plan

    defaults = reproduce.build_parser().parse_args(["all"])
    out = os.path.join(args.out or defaults.out, args.budget)
    seeds = tuple(args.seeds or defaults.seeds)
    steps, *_ = reproduce_plan.plan(args.budget, out, "unused", seeds)
    needed = needed_directories([step for claim_steps in steps.values() for step in claim_steps])
    added, removed = park(out, needed, args.dry_run)
    size = sum(os.path.getsize(path) for path in added) / 2**20
    verb = "would stage" if args.dry_run else "staged"
    for path in added:
        print(f"park   {path}")
    for path in removed:
        print(f"unpark {path}")
    print(f"{verb} {len(added)} files ({size:.1f} MiB) that unfinished steps need, from {len(needed)} directories; "
          f"{len(removed)} parked earlier leave the index" + ("" if args.dry_run else "; now commit them"))
    return added, removed


if __name__ == "__main__":
    main()
