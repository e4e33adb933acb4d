"""`app.train`'s post-hoc EMA flags (PowerFunctionEMA snapshots for `python -m app.posthoc`)."""

from callbacks.arguments import InvalidArgument
from app.errors import UsageError, choice, flag_error, positive_int
from callbacks import power_profiles
from callbacks import power_snapshots
from callbacks.defaults import DEFAULT_SIGMA_RELS


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
        default=None,
        help="relative widths of the tracked power-function EMAs (EDM2 §3) "
        f"(default: {' '.join(map(str, DEFAULT_SIGMA_RELS))})",
    )
    group.add_argument(
        "--post-hoc-snapshot-every-steps",
        type=positive_int,
        default=None,
        help="optimizer steps between snapshots (default: one epoch)",
    )
    group.add_argument(
        "--post-hoc-snapshot-dtype",
        default=None,
        help="snapshot precision: float32 or float16 (half the disk) (default: float32)",
    )


def config_fields(args):
    """The TrainConfig fields of the post-hoc flags, checked."""
    given = {"--post-hoc-sigma-rels": args.post_hoc_sigma_rels,
             "--post-hoc-snapshot-every-steps": args.post_hoc_snapshot_every_steps,
             "--post-hoc-snapshot-dtype": args.post_hoc_snapshot_dtype}
    if not args.post_hoc_ema:
        for flag, value in given.items():
            if value is not None:  # it would do nothing, yet be saved into config.json
                raise UsageError(f"{flag} is for the power-function EMAs; add --post-hoc-ema")
    dtype = args.post_hoc_snapshot_dtype or "float32"
    choice(dtype, power_snapshots.SNAPSHOT_DTYPES, "--post-hoc-snapshot-dtype")
    sigma_rels = DEFAULT_SIGMA_RELS if args.post_hoc_sigma_rels is None else args.post_hoc_sigma_rels
    try:
        sigma_rels = power_profiles.checked_sigma_rels(sigma_rels)  # PowerFunctionEMA's rule
    except InvalidArgument as error:
        raise flag_error("--post-hoc-sigma-rels", args.post_hoc_sigma_rels, error) from None
    return dict(
        post_hoc_ema=args.post_hoc_ema,
        post_hoc_sigma_rels=sigma_rels,
        post_hoc_snapshot_every_steps=args.post_hoc_snapshot_every_steps,
        post_hoc_snapshot_dtype=dtype,
    )
