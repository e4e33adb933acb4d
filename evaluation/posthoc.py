"""Post-hoc EMA of a run: which average to rebuild, from which snapshots, how well.

A run trained with `--post-hoc-ema` holds snapshots of power-function EMAs
(callbacks/power_ema.py) in RUN/power_ema/. `plan` turns the requested
profiles (the paper's EMA of a decay, with the run's period T and warm-up; or
a power function of a σ_rel) and stopping epochs into least-squares
combinations of those snapshots (callbacks/power_profiles.py), each with its
relative profile residual; `combine` adds the snapshots up into weights.
NumPy only: `app.posthoc` plans, and refuses what the snapshots cannot
represent, before it imports a backend.
"""

import dataclasses

import numpy as np

from callbacks import power_profiles
from callbacks import power_snapshots
from utils.errors import UsageError

DEFAULT_MAX_RESIDUAL = 0.05


@dataclasses.dataclass(frozen=True)
class Snapshot:
    step: int
    path: str
    index: int  # which tracked average in the file
    sigma_rel: float
    gamma: float


@dataclasses.dataclass
class Target:
    """One profile stopped at one epoch, and its reconstruction."""

    kind: str  # "ema" or "power"
    value: float  # the decay, or the σ_rel
    epoch: int  # 1-based
    step: int
    reconstruction: power_profiles.Reconstruction
    snapshots: list  # the `Snapshot`s the coefficients apply to

    @property
    def name(self):
        return f"EMA {self.value:g}" if self.kind == "ema" else f"power sigma_rel {self.value:g}"


def snapshots_of(directory):
    """Every tracked average of every snapshot file in `directory`, as `Snapshot`s (step order)."""
    found = []
    for step, path in power_snapshots.list_snapshots(directory):
        header = power_snapshots.read_header(path)
        for index, (sigma_rel, gamma) in enumerate(zip(header["sigma_rels"], header["gammas"])):
            found.append(Snapshot(step, path, index, sigma_rel, gamma))
    return found


def target_profile(kind, value, step, config):
    """The profile over θ_0..θ_step of the EMA of decay `value` as the run's MultiEMA would
    keep it (its --ema-every-steps, --ema-warmup, --ema-batch-scaling), or of the power function of σ_rel `value`."""
    if kind == "power":
        return power_profiles.power_profile(power_profiles.sigma_rel_to_gamma(value), step)
    batch_scale = config.get("batch_size", 128) / 128 if config.get("ema_batch_scaling") else 1.0
    return power_profiles.ema_profile(value, step, config.get("ema_every_steps", 1),
                                      config.get("ema_warmup", "steps"), batch_scale)


def plan_one(snapshots, kind, value, epoch, steps_per_epoch, config):
    step = epoch * steps_per_epoch
    profiles = [power_profiles.power_profile(s.gamma, s.step) for s in snapshots]
    # The EMA's period T: its profile is compared at that resolution (power_profiles.reconstruct).
    resolution = config.get("ema_every_steps", 1) if kind == "ema" else 1
    reconstruction = power_profiles.reconstruct(profiles, target_profile(kind, value, step, config), resolution)
    used = [snapshots[i] for i in reconstruction.snapshots]
    return Target(kind, value, epoch, step, reconstruction, used)


def plan(snapshots, config, steps_per_epoch, decays, sigma_rels, epochs, max_residual):
    """Every (profile, epoch) target, refusing in one line what the snapshots cannot represent."""
    last_step = max(s.step for s in snapshots)
    last_epoch = last_step // steps_per_epoch
    beyond = [e for e in epochs if e > last_epoch]
    if beyond:
        raise UsageError(f"--epochs {beyond[0]}: the run's snapshots end at step {last_step:,} "
                         f"(epoch {last_epoch}); use epochs in 1..{last_epoch}")
    targets = [plan_one(snapshots, kind, value, epoch, steps_per_epoch, config)
               for kind, values in (("ema", decays), ("power", sigma_rels)) for value in values
               for epoch in epochs]
    worst = max(targets, key=lambda t: t.reconstruction.residual)
    if worst.reconstruction.residual > max_residual:
        bad = sum(t.reconstruction.residual > max_residual for t in targets)
        raise UsageError(
            f"{worst.name} at epoch {worst.epoch}: the snapshots represent its profile only to a relative "
            f"least-squares residual of {worst.reconstruction.residual:.3g} (> --max-residual {max_residual:g}; "
            f"{bad} of {len(targets)} targets); ask for a wider profile or a later epoch, train with a smaller "
            "--post-hoc-snapshot-every-steps, or raise --max-residual")
    return targets


def combine(target):
    """The reconstructed average Σ x_i θ̂_i, one float64 array per averaged variable."""
    total = None
    for coefficient, snapshot in zip(target.reconstruction.coefficients, target.snapshots):
        averages = power_snapshots.read_averages(snapshot.path, snapshot.index)
        if total is None:
            total = [coefficient * a for a in averages]
        else:
            for accumulated, a in zip(total, averages):
                accumulated += coefficient * a
    return total


def relative_distance(a, b):
    """||a - b|| / ||b|| over lists of arrays."""
    difference = np.sqrt(sum(float(np.sum((np.asarray(x, "float64") - y) ** 2)) for x, y in zip(a, b)))
    return difference / np.sqrt(sum(float(np.sum(np.asarray(y, "float64") ** 2)) for y in b))
