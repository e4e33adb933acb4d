"""Clocks for the benchmarks: wall and CPU time, step timing inside `fit`, spreads.

CPU time is the process's, all threads: less sensitive than wall time to other
jobs on the shared cores.
"""

import os
import statistics
import subprocess
import time


def make_step_clock():
    """A callback timing the training loop and its steps, in wall and CPU time; placed last."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.train_begin = now()
            self.batch_ends = []

        def on_train_batch_end(self, batch, logs=None):
            # Last among the callbacks: a step includes the EMA update.
            self.batch_ends.append(now())

        def on_train_end(self, logs=None):
            self.train_end = now()

        def timing(self):
            # The loop, not fit(): no set-up, no iterator teardown. Steady:
            # from the end of the first step to the end of the last.
            (wall_begin, cpu_begin), (wall_end, cpu_end) = self.train_begin, self.train_end
            (first_wall, first_cpu), (last_wall, last_cpu) = self.batch_ends[0], self.batch_ends[-1]
            intervals = len(self.batch_ends) - 1
            return {
                "train_loop_seconds": wall_end - wall_begin,
                "train_loop_cpu_seconds": cpu_end - cpu_begin,
                "steady_ms_per_step": 1e3 * (last_wall - first_wall) / intervals,
                "steady_cpu_ms_per_step": 1e3 * (last_cpu - first_cpu) / intervals,
            }

    return StepClock()


def spread(values):
    """Median, min, max and all values, rounded for the JSON."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }


def now():
    """(wall, CPU) seconds; CPU time is the process's, all threads, and is
    less sensitive than wall time to other jobs on the shared cores."""
    return time.perf_counter(), time.process_time()


def timed(fn):
    """(wall, CPU) seconds that `fn()` took."""
    wall, cpu = now()
    fn()
    wall_end, cpu_end = now()
    return wall_end - wall, cpu_end - cpu


def load_averages():
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def git_commit(root):
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def script_changed_since_commit(root, script):
    try:
        return bool(subprocess.run(
            ["git", "status", "--porcelain", "--", script],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None
