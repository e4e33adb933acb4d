"""Every document the code cites is in the repository.

A module that says "see docs/fidelity.md" or "(FIDELITY.md)" sends its reader
to a file; this test finds each such reference in the Python sources and
checks that the file exists (a `docs/...` path from the repository root, a
bare upper-case name such as README.md at the root or in docs/).
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# "docs/fidelity.md", "docs/results/x.md"; or a bare "README.md", "FIDELITY.md".
REFERENCE = re.compile(r"(?<![\w/.-])(docs/[\w/.-]+\.md|[A-Z][A-Z_-]*\.md)\b")
SKIPPED_DIRS = {".git", "__pycache__", ".venv", ".venv-ci", "reproductions"}


def python_sources():
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in SKIPPED_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def test_every_cited_document_exists():
    missing = []
    for path in python_sources():
        if os.path.samefile(path, __file__):  # its docstring's examples
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for reference in set(REFERENCE.findall(text)):
            candidates = [reference] if "/" in reference else [reference, os.path.join("docs", reference)]
            if not any(os.path.isfile(os.path.join(ROOT, c)) for c in candidates):
                missing.append(f"{os.path.relpath(path, ROOT)}: {reference}")
    assert not missing, missing


def test_the_readmes_status_table_is_written_from_the_committed_claim_files():
    """README.md's status of the results is experiments/publish_results.py's table of reproductions/small/
    (issue 27: regenerated from the same data as the claim pages), not a hand-written copy."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import publish_results
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert publish_results.readme_status(text) == text, (
        "README.md's status table is stale: run python experiments/publish_results.py --readme")


def test_the_status_table_reads_each_claims_verdict_interval_and_regime(tmp_path):
    from evaluation.claim_list import status_table

    def claim(name, **entry):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.json").write_text(json.dumps({"claim": name, **entry}))

    claim("table1", verdict="inconclusive", would_read="inconclusive", pending_seeds=5,
          primary="EMA (acc.) − SGD, test", primary_interval="+0.40 [-0.10, +0.90]",
          regime={"runs": 3, "measured": 2, "reached": 1, "final_train_accuracy": [0.951, 0.9824]})
    claim("table3", verdict="exploratory", would_read="holds", pending_seeds=None, primary="churn",
          primary_interval="-2.00 [-3.00, -1.00]",
          regime={"runs": 2, "measured": 0, "reached": 0, "final_train_accuracy": None})
    claim("swa", verdict="holds", headline="a page from before the plan: no primary statistic")
    lines = status_table(str(tmp_path), ("fig1a", "table1", "table3", "swa"), "r/").splitlines()
    assert lines[2:] == [
        "| [table1](r/table1/table1.md) | **inconclusive** (not final: up to 5 seeds) | EMA (acc.) − SGD, test: "
        "+0.40 [-0.10, +0.90] | 1 of 3 (2 measured); 95.1-98.2 % |",
        "| [table3](r/table3/table3.md) | exploratory (the plan's rule would read: holds) | churn: "
        "-2.00 [-3.00, -1.00] | not measured (runs too short for the row) |",
        "", "Not yet run under the plan: fig1a, swa."]
