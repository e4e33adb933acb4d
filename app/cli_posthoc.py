"""`app.train`'s post-hoc EMA flags (PowerFunctionEMA snapshots for `python -m app.posthoc`)."""

from app.errors import UsageError, choice, positive_int
from callbacks import power_profiles
from callbacks import power_snapshots
from callbacks.power_ema_options import DEFAULT_SIGMA_RELS


def add_arguments(parser):
    group = parser.add_argument_group("post-hoc EMA (Karras et al. 2024, EDM2; python -m app.posthoc)")
    group.add_argument(
        "--post-hoc-ema",
        action="store_true",
        help="also track power-function EMAs and save snapshots of them in RUN/power_ema/, "
        "from which python -m app.posthoc rebuilds the EMA of any decay at any epoch",
    )
    group.add_argument(
        "--post-hoc-sigma-rels",
        type=float,
        nargs="+",
        default=list(DEFAULT_SIGMA_RELS),
        help="relative widths of the tracked power-function EMAs (EDM2 §3)",
    )
    group.add_argument(
        "--post-hoc-snapshot-every-steps",
        type=positive_int,
        default=None,
        help="optimizer steps between snapshots (default: one epoch)",
    )
    group.add_argument(
        "--post-hoc-snapshot-dtype",
        default="float32",
        help="snapshot precision: float32 or float16 (half the disk)",
    )


def config_fields(args):
    """The TrainConfig fields of the post-hoc flags, checked."""
    choice(args.post_hoc_snapshot_dtype, power_snapshots.SNAPSHOT_DTYPES, "--post-hoc-snapshot-dtype")
    sigma_rels = tuple(args.post_hoc_sigma_rels)
    limit = power_profiles.gamma_to_sigma_rel(0.0)
    if len(set(sigma_rels)) != len(sigma_rels) or not all(0 < s < limit for s in sigma_rels):
        raise UsageError(f"--post-hoc-sigma-rels {' '.join(map(str, sigma_rels))}: expected distinct "
                         f"values in (0, {limit:.4f}) (EDM2 tracks 0.05 0.1)")
    return dict(
        post_hoc_ema=args.post_hoc_ema,
        post_hoc_sigma_rels=sigma_rels,
        post_hoc_snapshot_every_steps=args.post_hoc_snapshot_every_steps,
        post_hoc_snapshot_dtype=args.post_hoc_snapshot_dtype,
    )
