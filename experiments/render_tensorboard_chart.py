"""Renders a run's "EMA vs SGD" TensorBoard scalars to a PNG (for docs/).

Reads the run's TensorBoard event files with TensorBoard's own reader (the
scalars the dashboard shows), in the layout of training/tensorboard_logging.py:
one TensorBoard run per model, `RUN/tensorboard/sgd/`, `ema_<decay>/`,
`ema_best/`, and with `--swa` the branch's `RUN/swa/tensorboard/swa/`, all with
the tag `val_accuracy`. It draws the validation accuracy per epoch of SGD, of
the best EMA at each epoch (`ema_best`), of each decay when the run has more
than one, and of SWA when the run has the branch, with the learning rate
(`learning_rate` of `sgd/`, and of the SWA branch's `sgd/`) on a second axis.
The BN-recomputed EMAs (`ema_<decay>_bn/`) are left out. Runs written before
that layout (tags such as `val_accuracy/sgd` in `RUN/tensorboard/` itself) are
not read.

    python experiments/render_tensorboard_chart.py RUN docs/ema-vs-sgd.png
"""

import argparse
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

FIGURE_SIZE_INCHES = (8.0, 5.0)
DOTS_PER_INCH = 150  # 1200 x 750 pixels, as evaluation/figures.py
DECAY_RUN = re.compile(r"^ema_(?P<decay>\d*\.?\d+)$")  # not ema_best, not ema_<decay>_bn


def read_scalars(run_dir, tag):
    """`(epochs, values)` of `tag` in the TensorBoard run `run_dir`; empty lists without it."""
    if not os.path.isdir(run_dir):
        return [], []
    # size 0: every event, not TensorBoard's sample of 10,000.
    events = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()  # also drops the events a resumed run rewrote (its SessionLog START)
    if tag not in events.Tags()["scalars"]:
        return [], []
    scalars = events.Scalars(tag)
    return [s.step for s in scalars], [s.value for s in scalars]


def decay_runs(tensorboard_dir):
    """The `ema_<decay>` runs, by increasing decay."""
    names = [name for name in os.listdir(tensorboard_dir) if DECAY_RUN.match(name)]
    return sorted(names, key=lambda name: float(DECAY_RUN.match(name)["decay"]))


def curves(run_dir):
    """`[(label, TensorBoard run dir, style)]` of the validation-accuracy curves to draw."""
    tensorboard_dir = os.path.join(run_dir, "tensorboard")
    decays = decay_runs(tensorboard_dir)
    found = [("SGD  (sgd)", os.path.join(tensorboard_dir, "sgd"), dict(color="C0", linewidth=1.5))]
    best = "best EMA at each epoch  (ema_best)"
    if len(decays) == 1:  # then ema_best is that decay's curve
        best = f"EMA {DECAY_RUN.match(decays[0])['decay']}  (ema_best)"
    found.append((best, os.path.join(tensorboard_dir, "ema_best"), dict(color="C3", linewidth=1.5, zorder=3)))
    if len(decays) > 1:
        for index, name in enumerate(decays):
            found.append((f"EMA {DECAY_RUN.match(name)['decay']}  ({name})", os.path.join(tensorboard_dir, name),
                          dict(color=f"C{4 + index}", linewidth=0.8, alpha=0.7)))
    found.append(("SWA  (swa/tensorboard/swa)", os.path.join(run_dir, "swa", "tensorboard", "swa"),
                  dict(color="C2", linewidth=1.5)))
    return found


def subtitle(run_dir):
    """Dataset, model and budget from the run's config.json ('' without one)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return ""
    with open(path) as file:
        config = json.load(file)
    text = f"{config.get('dataset')} / {config.get('model')}, {config.get('epochs')} epochs"
    if config.get("limit_train"):
        text += f", {config['limit_train']:,} training images"
    if config.get("limit_validation"):
        text += f", {config['limit_validation']:,} validation images"
    return text


def render(run_dir, png):
    """Draws the chart of `run_dir` into `png`; returns the labels of the curves drawn."""
    figure, accuracy_axis = plt.subplots(figsize=FIGURE_SIZE_INCHES, dpi=DOTS_PER_INCH, layout="constrained")
    lines = []
    for label, tensorboard_run, style in curves(run_dir):
        epochs, values = read_scalars(tensorboard_run, "val_accuracy")
        if epochs:
            lines += accuracy_axis.plot(epochs, [100 * value for value in values], marker="o", markersize=2,
                                        label=label, **style)
    accuracy_axis.set_xlabel("epoch (TensorBoard step)")
    accuracy_axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    accuracy_axis.set_ylabel("validation accuracy (%)  (val_accuracy)")
    accuracy_axis.grid(alpha=0.3)
    lr_axis = accuracy_axis.twinx()
    for label, tensorboard_run, linestyle in (
        ("learning rate  (sgd/learning_rate)", os.path.join(run_dir, "tensorboard", "sgd"), "--"),
        ("SWA branch's learning rate", os.path.join(run_dir, "swa", "tensorboard", "sgd"), ":"),
    ):
        epochs, values = read_scalars(tensorboard_run, "learning_rate")
        if epochs:
            lines += lr_axis.plot(epochs, values, color="gray", linestyle=linestyle, linewidth=1, label=label)
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_ylim(bottom=0)
    # Below the axes and a figure title: neither covers a curve nor is clipped (as evaluation/figures.py).
    figure.legend(lines, [line.get_label() for line in lines], loc="outside lower center", ncols=2,
                  fontsize="small")
    name = os.path.basename(os.path.normpath(run_dir))
    figure.suptitle("\n".join(filter(None, (f"EMA vs SGD: TensorBoard scalars of run {name}", subtitle(run_dir)))),
                    fontsize="medium")
    figure.savefig(png, dpi=DOTS_PER_INCH)  # not bbox_inches="tight": keeps the pixel size fixed
    plt.close(figure)
    return [line.get_label() for line in lines]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory of python -m app.train")
    parser.add_argument("png")
    args = parser.parse_args(argv)
    sgd = os.path.join(args.run_dir, "tensorboard", "sgd")
    if not os.path.isdir(sgd):
        parser.error(f"no TensorBoard run {sgd}/; pass a run directory of python -m app.train "
                     "(one TensorBoard run per model, training/tensorboard_logging.py)")
    labels = render(args.run_dir, args.png)
    print(f"{args.png}: " + "; ".join(labels))
    return labels


if __name__ == "__main__":
    main()
