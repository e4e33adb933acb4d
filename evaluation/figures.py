"""The paper's Figures 1a, 1b and 2 from history.csv files, mean over seeds (matplotlib, Agg).

- Fig. 1a: validation accuracy of SGD and of the best EMA at each epoch
  (`ema_best_val_accuracy`: the maximum over decays, BN as tracked during
  training, as in the paper's caption), with the learning rate on a second axis.
- Fig. 1b: every decay's `ema_<d>_val_accuracy`, and `ema_<d>_bn_val_accuracy`
  dashed when the run recomputed BN statistics every epoch.
- Fig. 2 (label noise, cifar10n / cifar100n): as Fig. 1a, but the EMA of one
  decay (the reported one, by default the largest), as the paper's caption says
  "The decay rate used for the EMA is α=0.998".

The paper smooths Fig. 1 with a sliding window of 5 epochs; `smoothing_window`
(a trailing mean) does the same when asked. Defaults to 1 (raw curves).
"""

import math
import warnings

import numpy as np

FIGURE_SIZE_INCHES = (8.0, 4.5)
DOTS_PER_INCH = 150  # 1200 x 675 pixels
DATASET_TITLES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "cifar10n": "CIFAR-10N",
    "cifar100n": "CIFAR-100N",
    "tiny-imagenet": "Tiny-ImageNet",
}
LABEL_NOISE_DATASETS = ("cifar10n", "cifar100n")


def seed_curves(runs, column):
    """(epochs, values (seeds, epochs)) of one history column; NaN where a seed has no value."""
    epochs = sorted({int(row["epoch"]) for run in runs for row in run.history})
    values = np.full((len(runs), len(epochs)), np.nan)
    position = {epoch: index for index, epoch in enumerate(epochs)}
    for row_index, run in enumerate(runs):
        for row in run.history:
            values[row_index, position[int(row["epoch"])]] = row.get(column, math.nan)
    return np.array(epochs), values


def mean_curve(runs, column):
    """(epochs, mean over seeds) of one history column; NaN where no seed has a value."""
    epochs, values = seed_curves(runs, column)
    counts = np.sum(np.isfinite(values), axis=0)
    sums = np.nansum(values, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return epochs, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _band(axes, runs, column, colour, smoothing_window):
    """Shades the range (min to max) over seeds of one column, when there are several seeds."""
    if len(runs) < 2:
        return
    epochs, values = seed_curves(runs, column)
    smoothed = np.stack([smooth(row, smoothing_window) for row in values])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs (a column some epochs lack)
        low, high = np.nanmin(smoothed, axis=0), np.nanmax(smoothed, axis=0)
    axes.fill_between(epochs, 100 * low, 100 * high, color=colour, alpha=0.18, linewidth=0)


def smooth(values, window):
    """Trailing mean over the last `window` finite values (NaN stays NaN)."""
    if window <= 1:
        return values
    result = np.full_like(values, np.nan)
    for index in range(len(values)):
        if np.isfinite(values[index]):
            recent = values[max(0, index - window + 1) : index + 1]
            result[index] = np.mean(recent[np.isfinite(recent)])
    return result


def has_column(runs, column):
    return any(column in run.history[0] for run in runs if run.history)


def dataset_title(group):
    title = DATASET_TITLES.get(group.dataset, group.dataset)
    if group.dataset == "cifar10n":
        title += f" ('{group.config.get('label_noise', 'worse')}' training labels)"
    elif group.dataset == "cifar100n":
        title += " (noisy training labels)"
    return title


def _split_label(group):
    split = group.config.get("evaluation_split", "validation")
    return "test" if split == "test" else "validation"


def _accuracy_axis_label(group):
    """The y-axis of a per-epoch curve; a test curve on part of the test set says which part (Fig. 2)."""
    limit = group.config.get("limit_validation")
    if _split_label(group) == "test" and limit:
        return f"test accuracy (%), first {limit:,} images"
    return f"{_split_label(group)} accuracy (%)"


def _seeds_text(group):
    count = len(group.runs)
    return f"mean of {count} seeds, shaded: their range" if count > 1 else "1 seed"


def _new_figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    # Constrained layout leaves room for a legend outside the axes (below them), clear of the curves.
    figure, axes = pyplot.subplots(figsize=FIGURE_SIZE_INCHES, dpi=DOTS_PER_INCH, layout="constrained")
    return pyplot, figure, axes


def _label_epochs(axes, group):
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(_accuracy_axis_label(group))
    axes.grid(alpha=0.3)


def _save(pyplot, figure, path):
    figure.savefig(path, dpi=DOTS_PER_INCH)  # not bbox_inches="tight": keeps the pixel size fixed
    pyplot.close(figure)


def plot_ema_vs_sgd(group, path, ema_column, ema_label, smoothing_window=1, sgd_group=None):
    """Fig. 1a / Fig. 2: SGD and one EMA curve, learning rate on a second y-axis.

    `sgd_group`: the runs of the SGD curve where they are not the EMA's (SGD at its own tuned lr).
    """
    pyplot, figure, axes = _new_figure()
    sgd_runs = (sgd_group or group).runs
    epochs, sgd = mean_curve(sgd_runs, "val_accuracy")
    sgd_label = "SGD" if sgd_group is None else f"SGD (lr {sgd_group.config['lr']:g})"
    lines = axes.plot(epochs, 100 * smooth(sgd, smoothing_window), color="tab:blue", label=sgd_label)
    _band(axes, sgd_runs, "val_accuracy", "tab:blue", smoothing_window)
    # Two runs, two learning rates: each curve says its own.
    curve_label = ema_label if sgd_group is None else f"{ema_label} (lr {group.config['lr']:g})"
    if has_column(group.runs, ema_column):
        _, ema = mean_curve(group.runs, ema_column)
        lines += axes.plot(epochs, 100 * smooth(ema, smoothing_window), color="tab:red", label=curve_label)
        _band(axes, group.runs, ema_column, "tab:red", smoothing_window)
    _label_epochs(axes, group)
    if has_column(group.runs, "lr"):
        lr_axes = axes.twinx()
        schedules = [(group, "gray", "learning rate η")]
        if sgd_group is not None and has_column(sgd_group.runs, "lr"):
            schedules = [(group, "tab:red", "η of the EMA's run"), (sgd_group, "tab:blue", "η of SGD's run")]
        for runs_group, color, label in schedules:
            lr_epochs, lr = mean_curve(runs_group.runs, "lr")
            lines += lr_axes.plot(lr_epochs, lr, color=color, linestyle=":", alpha=0.7, label=label)
        lr_axes.set_ylabel("learning rate η")
        lr_axes.set_ylim(bottom=0)
    # Below the axes and a figure title: neither covers a curve nor is clipped (issue 27).
    figure.legend(lines, [line.get_label() for line in lines], loc="outside lower center", ncols=len(lines),
                  fontsize="small")
    figure.suptitle(f"{dataset_title(group)} / {group.model}\n{ema_label} vs SGD, {_seeds_text(group)}")
    _save(pyplot, figure, path)
    return path


def ema_decay_keys(runs):
    """The decays (as written in the column names, e.g. '0.998') found in history.csv, sorted."""
    keys = set()
    for run in runs:
        for column in run.history[0] if run.history else ():
            if column.startswith("ema_") and column.endswith("_val_accuracy") and "_bn_" not in column:
                middle = column[len("ema_") : -len("_val_accuracy")]
                try:
                    float(middle)
                except ValueError:
                    continue  # ema_best_val_accuracy
                keys.add(middle)
    return sorted(keys, key=float)


def identical_until(runs, key, keys):
    """`(other decay, last epoch)` when decay `key` logged exactly the numbers of a
    smaller decay from epoch 1 on (the decay warm-up held both), else None."""
    best = None
    for other in keys:
        if float(other) >= float(key):
            continue
        last = 0
        for rows in zip(*(run.history for run in runs)):
            if all(row.get(f"ema_{key}_val_loss") == row.get(f"ema_{other}_val_loss") for row in rows):
                last = int(rows[0]["epoch"])
            else:
                break
        if last and (best is None or last >= best[1]):
            best = (other, last)  # the longest shared stretch
    return best


def plot_decays(group, path, smoothing_window=1):
    """Fig. 1b: each decay's EMA accuracy; BN-recomputed versions dashed in the same colour."""
    pyplot, figure, axes = _new_figure()
    colours = pyplot.get_cmap("tab10")
    decays = ema_decay_keys(group.runs)
    for index, key in enumerate(decays):
        colour = colours(index % 10)
        epochs, values = mean_curve(group.runs, f"ema_{key}_val_accuracy")
        label = f"α={key}"
        twin = identical_until(group.runs, key, decays)
        if twin is not None:
            label += f" (= α={twin[0]} to epoch {twin[1]})"
        axes.plot(epochs, 100 * smooth(values, smoothing_window), color=colour, label=label)
        _band(axes, group.runs, f"ema_{key}_val_accuracy", colour, smoothing_window)
        if has_column(group.runs, f"ema_{key}_bn_val_accuracy"):
            epochs, values = mean_curve(group.runs, f"ema_{key}_bn_val_accuracy")
            axes.plot(
                epochs, 100 * smooth(values, smoothing_window), color=colour, linestyle="--",
                label=f"α={key}, BN recomputed",
            )
    _label_epochs(axes, group)
    figure.legend(loc="outside lower center", ncols=2 if len(decays) > 3 else 1, fontsize="small")
    figure.suptitle(f"{dataset_title(group)} / {group.model}\nEMA per decay, {_seeds_text(group)}")
    _save(pyplot, figure, path)
    return path


def plot_posthoc_heatmap(result, history, path):
    """app.posthoc's heatmap: profile x stopping epoch -> validation accuracy of the rebuilt average.

    A cell whose decay the run also tracked shows, below, that EMA's accuracy
    as logged during training (its BatchNorm statistics as tracked, so it is
    not the same BN treatment as the rebuilt one unless the run recomputed
    every epoch); the best rebuilt cell is outlined.
    """
    pyplot, figure, axes = _new_figure()
    targets = result["targets"]
    epochs = sorted({row["epoch"] for row in targets})
    profiles = list(dict.fromkeys((row["profile"], row["value"]) for row in targets))
    grid = np.full((len(profiles), len(epochs)), np.nan)
    for row in targets:
        grid[profiles.index((row["profile"], row["value"])), epochs.index(row["epoch"])] = 100 * row["val_accuracy"]
    image = axes.imshow(grid, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes, label="validation accuracy (%), rebuilt")
    by_epoch = {int(row["epoch"]): row for row in history}
    for i, (kind, value) in enumerate(profiles):
        for j, epoch in enumerate(epochs):
            text = f"{grid[i, j]:.1f}"
            logged = by_epoch.get(epoch, {}).get(f"ema_{value:g}_val_accuracy") if kind == "ema" else None
            if logged is not None and not math.isnan(logged):
                text += f"\ntracked {100 * logged:.1f}"
            shade = "white" if grid[i, j] < np.nanmean(grid) else "black"
            axes.text(j, i, text, ha="center", va="center", fontsize=7, color=shade)
    best = result["best"]
    bi, bj = profiles.index((best["profile"], best["value"])), epochs.index(best["epoch"])
    axes.add_patch(pyplot.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axes.set_xticks(range(len(epochs)), [str(e) for e in epochs])
    axes.set_yticks(range(len(profiles)),
                    [f"EMA {v:g}" if k == "ema" else f"power σ_rel {v:g}" for k, v in profiles])
    axes.set_xlabel("stopping epoch")
    axes.set_title(f"Post-hoc EMA: {len(result['snapshots'])} snapshots of σ_rel "
                   f"{', '.join(f'{s:g}' for s in result['sigma_rels_tracked'])}; BatchNorm "
                   f"{'recomputed' if result['bn'] == 'recompute' else 'averaged'}; best outlined\n"
                   "tracked: the EMA the run itself kept, as logged during training (its BN as tracked)", fontsize=9)
    _save(pyplot, figure, path)
