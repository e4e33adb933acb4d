"""Size of the house: files and source lines per package, and the longest functions.

Issue 29's before/after numbers:  python bench/house_metrics.py [REPOSITORY_ROOT]
(counts every line of each package's *.py files, comments and docstrings included).
"""

import ast
import pathlib
import sys

PACKAGES = ("app", "callbacks", "models", "training", "tuning", "evaluation", "data", "utils")


def main(argv=None):
    root = pathlib.Path((argv or sys.argv[1:] or ["."])[0])
    total_lines = total_files = 0
    functions = []
    for package in PACKAGES:
        files = sorted((root / package).glob("*.py"))
        lines = sum(len(path.read_text(encoding="utf-8").splitlines()) for path in files)
        total_lines, total_files = total_lines + lines, total_files + len(files)
        print(f"{package:12s} {len(files):3d} files {lines:6d} lines")
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((node.end_lineno - node.lineno + 1, f"{package}/{path.name}:{node.name}"))
    print(f"{'total':12s} {total_files:3d} files {total_lines:6d} lines")
    functions.sort(reverse=True)
    print("longest functions:", ", ".join(f"{name} {length}" for length, name in functions[:8]))


if __name__ == "__main__":
    main()
