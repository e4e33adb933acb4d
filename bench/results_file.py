"""Writes a bench script's measurements to bench/results/<name>.json."""

import json
import os

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write(name, results):
    os.makedirs(DIRECTORY, exist_ok=True)
    path = os.path.join(DIRECTORY, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    return path
