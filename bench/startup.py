"""Start-up time of every entry point: `--help` and a bad command line, against `python -c pass`.

Goal (issue: a researcher's first hour): both within 1 s, printing nothing but
the help or the one error line. Each command runs REPEATS times; the median is
kept. Results: bench/results/startup.json.

    python bench/startup.py
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_file  # noqa: E402

REPEATS = 5


def median_seconds(argv):
    times, stderr = [], ""
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        stderr = result.stderr
    return statistics.median(times), stderr.count("\n")


def main():
    empty = tempfile.mkdtemp()
    baseline, _ = median_seconds(["-c", "pass"])
    cases = {
        "train --help": ["-m", "app.train", "--help"],
        "train bad dataset": ["-m", "app.train", "--dataset", "cifar-10"],
        "train missing data": ["-m", "app.train", "--data-dir", empty,
                                                         "--out", os.path.join(empty, "o")],
        "tune --help": ["-m", "app.tune", "--help"],
        "tune missing data": ["-m", "app.tune", "--data-dir", empty,
                                                        "--out", os.path.join(empty, "t")],
        "evaluate --help": ["-m", "app.evaluate", "--help"],
        "evaluate bad run": ["-m", "app.evaluate", os.path.join(empty, "x")],
        "consistency --help": ["-m", "app.consistency", "--help"],
        "transfer --help": ["-m", "app.transfer", "--help"],
        "report --help": ["-m", "app.report", "--help"],
        "reproduce --help": ["-m", "app.reproduce", "--help"],
        "reproduce bad claim": ["-m", "app.reproduce", "table9"],
    }
    results = {"python -c pass": {"seconds": round(baseline, 3)}}
    for name, argv in cases.items():
        seconds, lines = median_seconds(argv)
        results[name] = {"seconds": round(seconds, 3), "ratio_to_python": round(seconds / baseline, 1),
                         "stderr_lines": lines}
        print(f"{name:<48}{seconds:7.2f} s  {seconds / baseline:6.1f}x python  stderr lines {lines}")
    results_file.write("startup", results)


if __name__ == "__main__":
    main()
