"""`app.train`'s SWA flags: the SWA branch off the baseline (training/swa_branch.py)."""

from app import inputs
from app.errors import UsageError, positive_int
from evaluation import scaling
from training import config as config_lib


def add_arguments(group):
    group.add_argument(
        "--swa",
        action="store_true",
        help="after training, branch SWA off the baseline's checkpoint at 75%% of the "
        "epochs: the rest of the budget (or --swa-epochs) at a constant (or cyclic) SWA "
        "learning rate, averaging the starting point and every epoch (SWA paper §4.1, "
        "Algorithm 1), in RUN/swa/",
    )
    group.add_argument(
        "--swa-start-epoch",
        type=int,
        default=None,
        help="first epoch (1-based) of the SWA branch (default: after 75%% of the epochs)",
    )
    group.add_argument(
        "--swa-epochs",
        type=positive_int,
        default=None,
        help="length of the SWA branch in epochs, also past --epochs (SWA paper Table 1: "
        "1.25 and 1.5 budgets) (default: the rest of the budget)",
    )
    group.add_argument(
        "--swa-lr",
        type=float,
        default=None,
        help="SWA learning rate of the branch (default: 0.05 for cifar100/cifar100n/"
        "tiny-imagenet, else 0.01; SWA paper App. A)",
    )
    group.add_argument(
        "--swa-lr-from",
        default=None,
        metavar="RUN",
        help="take the SWA learning rate python -m app.tune_swa chose: RUN (its "
        "swa-tuning/best_swa_lr.json) or that file",
    )
    group.add_argument(
        "--swa-cycle-epochs",
        type=positive_int,
        default=None,
        help="SWA capture period in epochs (cycle length of the cyclic schedule) (default: 1)",
    )
    group.add_argument(
        "--no-swa-include-start",
        action="store_true",
        help="average only the models captured in the branch, not the baseline "
        "checkpoint it starts from (which Algorithm 1 averages too)",
    )


def config_fields(args, epochs, dataset):
    """The TrainConfig fields of the SWA flags, checked and resolved."""
    if not args.swa:
        # A flag that would do nothing is refused, not saved into config.json (where a
        # resume compares it).
        for flag, given in (("--swa-start-epoch", args.swa_start_epoch is not None),
                            ("--swa-epochs", args.swa_epochs is not None),
                            ("--swa-lr", args.swa_lr is not None),
                            ("--swa-lr-from", args.swa_lr_from is not None),
                            ("--swa-cycle-epochs", args.swa_cycle_epochs is not None),
                            ("--no-swa-include-start", args.no_swa_include_start)):
            if given:
                raise UsageError(f"{flag} is for the SWA branch; add --swa")
        return dict(swa=False, swa_start_epoch=None, swa_lr=None, swa_cycle_epochs=1)
    if args.swa_cycle_epochs is None:
        args.swa_cycle_epochs = 1
    start_epoch = args.swa_start_epoch
    if start_epoch is None:
        # SWA paper §4.1: conventional training for 75 % of the budget.
        start_epoch = scaling.swa_start_epoch(epochs)
    if not 1 <= start_epoch <= epochs:
        raise UsageError(f"--swa-start-epoch must be in [1, {epochs}]; got {start_epoch}")
    if args.swa_lr_from is not None:
        if args.swa_lr is not None:
            raise UsageError("give --swa-lr or --swa-lr-from, not both")
        args.swa_lr = inputs.tuned_swa_lr(args.swa_lr_from)
    swa_lr = args.swa_lr if args.swa_lr is not None else config_lib.default_swa_lr(dataset)
    if not swa_lr > 0:
        raise UsageError(f"--swa-lr must be > 0; got {swa_lr}")
    if start_epoch < 2:
        raise UsageError(
            f"--swa-start-epoch must be >= 2 (the branch starts from a baseline checkpoint); got {start_epoch}"
        )
    swa_epochs = args.swa_epochs if args.swa_epochs is not None else epochs - start_epoch + 1
    if swa_epochs < args.swa_cycle_epochs:
        length = (f"--swa-epochs {swa_epochs}" if args.swa_epochs is not None
                  else f"the SWA branch (epochs {start_epoch}-{epochs})")
        raise UsageError(
            f"{length} is shorter than one --swa-cycle-epochs {args.swa_cycle_epochs} cycle; "
            f"use --swa-epochs {args.swa_cycle_epochs} or more, or shorter cycles"
        )
    return dict(
        swa=True,
        swa_start_epoch=start_epoch,
        swa_lr=swa_lr,
        swa_cycle_epochs=args.swa_cycle_epochs,
        swa_epochs=swa_epochs,
        swa_include_start=not args.no_swa_include_start,
    )
