"""Where a result came from: versions, backend, device and the code's git commit.

Written into every run directory's config.json (`"provenance"`), so that a
number can be tied to the code and the machine that produced it. Not part of
the config compared on resume.
"""

import importlib.metadata
import os
import platform
import subprocess

PACKAGES = ("keras", "tensorflow", "jax", "tensorflow-datasets", "numpy", "keras-tuner")
# Committed results, not code: a rerun that deletes or adds them leaves the code clean.
RESULT_PATHS = ("reproductions",)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collect():
    """A JSON-able dict: python, package versions, Keras backend, devices, processes, git commit and
    dirtiness (of the code: changes under RESULT_PATHS do not count)."""
    import keras

    from training import distribution

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "keras_backend": keras.backend.backend(),
        "devices": [str(device) for device in keras.distribution.list_devices()],  # of every process
        "processes": distribution.process_count(),
        **_git(),
    }


def _git(root=ROOT):
    def run(*argv):
        result = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=10)
        if result.returncode:
            raise OSError(result.stderr.strip())
        return result.stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".",
                         *(f":(exclude){path}" for path in RESULT_PATHS)))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}
