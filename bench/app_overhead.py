"""What `app.train` costs around `model.fit`: training images/s, app vs bare fit.

The app's run (all callbacks: divergence guard, MultiEMA with 5 decays and T=16,
its per-epoch evaluation, BN recompute at the end, history/TensorBoard logging,
checkpoints) against a bare `model.fit` of the same compiled model on the same
training stream, with only `EpochTimer` to time it. Both report training
images/s as `EpochTimer` measures it (epoch begin to the last batch's end; the
evaluation after it is not training time). Pairs alternate (bare, app, bare,
app, ...; the app in its own process, as a user runs it) so that drift on the shared cores hits both; the first epoch of each
run (graph tracing) is dropped. Goal: app / bare >= 0.97.
Results: bench/results/app_overhead.json.

    python bench/app_overhead.py [--pairs 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_file  # noqa: E402

from utils import quiet  # noqa: E402

quiet.import_tensorflow()

from data import loading  # noqa: E402
from training import recipe  # noqa: E402
from training import run_dir  # noqa: E402
from training.history import EpochTimer  # noqa: E402
from training.run_dir import read_history  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "shared", "data", "tfds")
ARGV = ["--dataset", "cifar10", "--model", "resnet20", "--data-dir", TFDS_DIR, "--limit-train", "3840",
        "--limit-validation", "1000", "--epochs", "4"]


def bare(config, data):
    import keras

    keras.utils.set_random_seed(config.seed)
    schedule = recipe.build_schedule(config, data.steps_per_epoch)
    model = recipe.build_model(config, data, schedule)
    timer = EpochTimer(config.batch_size, live=False)
    rates = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(timer.timings()["train_images_per_second"])

    model.fit(data.train_from(0), steps_per_epoch=data.steps_per_epoch, epochs=config.epochs,
              callbacks=[timer, Record()], verbose=0, shuffle=False)
    return rates[1:]


def app(out):
    # The command itself, as a user runs it (its own process: the rates come from its history.csv).
    subprocess.run([sys.executable, "-m", "app.train", *ARGV, "--out", out], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return [row["train_images_per_second"] for row in read_history(os.path.join(out, "history.csv"))][1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    results = {"bare": [], "app": []}
    with tempfile.TemporaryDirectory() as tmp:
        config = data = None
        for pair in range(args.pairs):
            out = os.path.join(tmp, f"run-{pair}")
            results["app"] += app(out)
            if config is None:  # the bare fit trains exactly the config the app ran
                config = run_dir.load_config(out)
                data = loading.load_data(config)
            results["bare"] += bare(config, data)
    bare_rate, app_rate = statistics.median(results["bare"]), statistics.median(results["app"])
    summary = {"bare_images_per_second": round(bare_rate, 1), "app_images_per_second": round(app_rate, 1),
               "ratio": round(app_rate / bare_rate, 3), "epochs": results}
    print(f"training images/s: bare fit {bare_rate:.1f}, app.train {app_rate:.1f}, "
          f"ratio {app_rate / bare_rate:.3f} (goal >= 0.97; medians over {len(results['app'])} epochs each)")
    results_file.write("app_overhead", summary)


if __name__ == "__main__":
    main()
