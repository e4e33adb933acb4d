"""Renders the "EMA vs SGD" TensorBoard chart of a run to a PNG (for docs/).

Reads the run's TensorBoard event files with TensorBoard's own reader (the
same scalars the dashboard shows) and draws the tags of the custom-scalars
chart "EMA vs SGD" (validation accuracy of SGD, of the best EMA and of SWA)
with the learning rate on a second axis.

    python experiments/render_tensorboard_chart.py runs/cifar10-resnet20-12ep docs/ema-vs-sgd.png
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CURVES = (
    ("val_accuracy/sgd", "SGD"),
    ("val_accuracy/ema_best", "EMA (best decay at each epoch)"),
    ("val_accuracy/swa", "SWA"),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("png")
    args = parser.parse_args(argv)
    events = EventAccumulator(os.path.join(args.run_dir, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    figure, accuracy_axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    for tag, label in CURVES:
        if tag in tags:
            scalars = events.Scalars(tag)
            accuracy_axis.plot([s.step for s in scalars], [100 * s.value for s in scalars],
                               marker="o", markersize=3, label=f"{label}  ({tag})")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    accuracy_axis.set_ylabel("validation accuracy (%)")
    accuracy_axis.grid(alpha=0.3)
    lr_axis = accuracy_axis.twinx()
    lr = events.Scalars("learning_rate")
    lr_axis.plot([s.step for s in lr], [s.value for s in lr], color="gray", linestyle="--",
                 label="learning rate (learning_rate)")
    lr_axis.set_ylabel("learning rate")
    lines = accuracy_axis.get_legend_handles_labels()
    more = lr_axis.get_legend_handles_labels()
    accuracy_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    accuracy_axis.set_title(f"EMA vs SGD — TensorBoard scalars of {os.path.basename(os.path.normpath(args.run_dir))}",
                            fontsize=10)
    figure.tight_layout()
    figure.savefig(args.png)
    print(args.png)


if __name__ == "__main__":
    main()
