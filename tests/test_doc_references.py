"""Every document the code cites is in the repository.

A module that says "see docs/fidelity.md" or "(FIDELITY.md)" sends its reader
to a file; this test finds each such reference in the Python sources and
checks that the file exists (a `docs/...` path from the repository root, a
bare upper-case name such as README.md at the root or in docs/).
"""

import os
import re

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
