"""Command line of `python -m app.train`: flags -> a validated `TrainConfig`.

Every user error becomes a `UsageError` with one line naming the fix, raised
here before any data is read or any file is written. The flags and their
checks come in groups, one function each: data, training, EMAs; SWA and
post-hoc EMA in app/cli_swa.py and app/cli_posthoc.py.
"""

from app import cli_model_parallel
from app import cli_posthoc
from app import cli_swa
from app import inputs
from callbacks.arguments import InvalidArgument
from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, UsageError, choice, flag_error, positive_int
from callbacks import arguments
from training import config as config_lib


def build_parser(prog="python -m app.train", out_help="run directory (default: runs/<dataset>-<model>-<timestamp>)"):
    parser = OneLineArgumentParser(
        prog=prog,
        description=(
            "Train a paper model with SGD (Nesterov) and several EMAs of its "
            "weights at once; evaluate every average each epoch; write a run "
            "directory (config, history.csv, summary.json, TensorBoard logs, "
            "weights)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    _add_data_arguments(parser.add_argument_group("data"))
    _add_training_arguments(parser.add_argument_group("training"), out_help)
    averaging = parser.add_argument_group("weight averaging")
    _add_ema_arguments(averaging)
    cli_swa.add_arguments(averaging)
    averaging.add_argument("--track-stability", action="store_true",
                           help="per-epoch prediction stability of SGD and each EMA and the "
                           "EMA-SGD weight distance (Adda et al.; one extra prediction pass per model)")
    averaging.add_argument("--bootstrap-every-epochs", type=int, default=0,
                           help="every K epochs copy the slowest EMA into the SGD model (paper App. C; 0: off)")
    cli_posthoc.add_arguments(parser)
    cli_model_parallel.add_arguments(parser)
    return parser


def parse_config(argv, model_names=config_lib.MODEL_NAMES):
    """Parses and validates `argv`; returns a frozen `TrainConfig`."""
    args = build_parser().parse_args(argv)
    ema_modes = _ema_modes(args)
    data = _data_fields(args)
    training = _training_fields(args, model_names)
    training.update(cli_model_parallel.config_fields(args, training["batch_size"]))  # its mesh sets `devices`
    ema = _ema_fields(args, training["epochs"])
    return config_lib.TrainConfig(
        **data,
        **training,
        **ema_modes,
        **ema,
        **cli_swa.config_fields(args, training["epochs"], args.dataset),
        **cli_posthoc.config_fields(args),
        track_stability=args.track_stability,
    )


def _add_data_arguments(group):
    group.add_argument("--dataset", default="cifar10", help=f"dataset, one of: {', '.join(config_lib.DATASETS)}")
    group.add_argument("--label-noise", default="worse",
                       help="cifar10n training label: worse (~40%% noise, the paper's), aggre, "
                       "random1, random2, random3; test labels are always clean")
    group.add_argument("--data-dir", default=None, help="TFDS data directory (default: TFDS's own, or $TFDS_DATA_DIR)")
    group.add_argument("--cifar-n-dir", default=None,
                       help="directory with the CIFAR-N annotation files (cifar10n/cifar100n)")
    group.add_argument("--limit-train", type=positive_int, default=None,
                       help="keep only the first N training examples (smoke runs)")
    group.add_argument("--limit-validation", type=positive_int, default=None,
                       help="evaluate on only the first N examples of the validation (or, with "
                       "--full-train, test) split each epoch (smoke runs)")
    group.add_argument("--full-train", action="store_true",
                       help="train on 100%% of the training set and evaluate on the test set "
                       "(default: seeded 80/20 train/validation split, paper §4.1)")
    group.add_argument("--validation-fraction", type=float, default=0.2,
                       help="held-out fraction of the training set (paper: 0.2; Adda et al.: 0.1, 45k/5k)")
    group.add_argument("--split-seed", type=int, default=0,
                       help="seed of the 80/20 split (kept fixed across training seeds)")


def _data_fields(args):
    choice(args.dataset, config_lib.DATASETS, "dataset")
    choice(args.label_noise, config_lib.LABEL_NOISE, "label noise")
    if args.full_train:
        args.validation_fraction = 0.2  # unused, kept comparable across runs
    elif not 0.0 < args.validation_fraction < 1.0:
        raise UsageError(f"--validation-fraction must be in (0, 1); got {args.validation_fraction}")
    return dict(dataset=args.dataset, label_noise=args.label_noise, data_dir=args.data_dir,
                cifar_n_dir=args.cifar_n_dir, limit_train=args.limit_train, limit_validation=args.limit_validation,
                full_train=args.full_train, validation_fraction=args.validation_fraction,
                split_seed=args.split_seed)


def _add_training_arguments(group, out_help):
    group.add_argument("--model", default=None,
                       help="model name (default: resnet34 for cifar10n/cifar100n, else resnet18)")
    group.add_argument("--epochs", type=int, default=None,
                       help="training epochs (default: 150 for tiny-imagenet, else 200)")
    group.add_argument("--lr", type=float, default=None, help="initial learning rate (default: 0.1)")
    group.add_argument("--lr-from", default=None, metavar="TUNER_DIR",
                       help="take the initial learning rate (and any other tuned value) from "
                       "TUNER_DIR/best.json written by python -m app.tune (or from a result file of it: "
                       "TUNER_DIR/best_sgd_final.json, the lr SGD's last epoch picks)")
    group.add_argument("--batch-size", type=positive_int, default=None,
                       help="batch size: the global batch, split across --devices (default: 128, "
                       "or the one --lr-from's search chose)")
    group.add_argument("--devices", type=positive_int, default=None,
                       help="data-parallel devices of one run: MirroredStrategy (TensorFlow) or "
                       "keras.distribution.DataParallel (JAX) (default: every GPU/TPU, else 1)")
    group.add_argument("--sync-batch-norm", action="store_true",
                       help="TensorFlow: BatchNorm statistics over the global batch, not per replica "
                       "(on JAX they always are)")
    group.add_argument("--eval-batch-size", type=positive_int, default=512,
                       help="batch size of the per-epoch evaluations (forward passes only; same results)")
    group.add_argument("--weight-decay", type=float, default=None,
                       help="coupled L2 weight decay (default: 5e-4 for wrn*/vgg*, else 1e-4)")
    group.add_argument("--momentum", type=float, default=0.9, help="momentum")
    group.add_argument("--no-nesterov", action="store_true",
                       help="plain (heavy-ball) momentum instead of the paper's Nesterov (Adda et al.)")
    group.add_argument("--schedule", default="cosine",
                       help=f"learning-rate schedule, one of: {', '.join(config_lib.SCHEDULES)}")
    group.add_argument("--warmup-epochs", type=float, default=None,
                       help="linear warm-up epochs, fractions allowed (default: 5 for cosine, else 0)")
    group.add_argument("--seed", type=int, default=0, help="random seed")
    group.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="independent runs, one per seed, into OUT/seed-<k>/ (replaces --seed)")
    group.add_argument("--precision", default="float32",
                       help="Keras dtype policy: float32, mixed_float16, mixed_bfloat16 (the averages stay float32)")
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic ops: the same seed gives identical weights and metrics (slower)")
    group.add_argument("--keep-checkpoint", action="store_true",
                       help="keep checkpoint/ (model, optimizer and every average's state) after the run "
                       "finishes; by default it is deleted then, as nothing resumes a finished run")
    group.add_argument("--checkpoint-every-steps", type=positive_int, default=None,
                       help="also checkpoint every N optimizer steps within an epoch "
                       "(a checkpoint is always written at every epoch end)")
    group.add_argument("--out", default=None, help=out_help)


def _training_fields(args, model_names):
    """The model, its optimization and where it runs: checked, defaults resolved (--lr-from's too)."""
    choice(args.schedule, config_lib.SCHEDULES, "schedule")
    choice(args.precision, config_lib.PRECISIONS, "precision")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds has duplicates: {' '.join(map(str, args.seeds))}")
    model = args.model or config_lib.default_model(args.dataset)
    if model_names is not None:
        choice(model, tuple(model_names), "model")
    epochs = args.epochs if args.epochs is not None else config_lib.default_epochs(args.dataset)
    if epochs < 1:
        raise UsageError(f"--epochs must be >= 1; got {epochs}")
    if args.lr_from is not None:
        inputs.apply_tuned(args)
    lr = 0.1 if args.lr is None else args.lr
    batch_size = 128 if args.batch_size is None else args.batch_size
    if not lr > 0:
        raise UsageError(f"--lr must be > 0; got {lr}")
    if not 0.0 <= args.momentum < 1.0:
        raise UsageError(f"--momentum must be in [0, 1); got {args.momentum}")
    weight_decay = args.weight_decay if args.weight_decay is not None else config_lib.default_weight_decay(model)
    if weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0; got {weight_decay}")
    warmup_epochs = args.warmup_epochs
    if warmup_epochs is None:
        warmup_epochs = min(5, epochs - 1) if args.schedule == "cosine" else 0
    warmup_epochs = config_lib.whole_if_integral(warmup_epochs)
    if not 0 <= warmup_epochs < epochs:
        raise UsageError(f"--warmup-epochs must be in [0, epochs); got {warmup_epochs} with --epochs {epochs}")
    if args.devices is not None and batch_size % args.devices:
        raise UsageError(f"--batch-size {batch_size} does not split across --devices {args.devices}; "
                         f"use a multiple of {args.devices}")
    return dict(model=model, epochs=epochs, lr=lr, batch_size=batch_size, eval_batch_size=args.eval_batch_size,
                devices=args.devices, sync_batch_norm=args.sync_batch_norm, weight_decay=weight_decay,
                momentum=args.momentum, nesterov=not args.no_nesterov, seed=args.seed,
                seeds=tuple(args.seeds or ()), precision=args.precision, out=args.out, schedule=args.schedule,
                warmup_epochs=warmup_epochs, checkpoint_every_steps=args.checkpoint_every_steps,
                keep_checkpoint=args.keep_checkpoint, deterministic=args.deterministic)


def _add_ema_arguments(group):
    group.add_argument("--ema-decays", type=float, nargs="*", default=list(config_lib.DEFAULT_EMA_DECAYS),
                       help="EMA decays kept in parallel (none: no EMA)")
    group.add_argument("--ema-every-steps", "--ema-every", dest="ema_every_steps", type=positive_int,
                       default=None,
                       help="update the EMAs every N optimizer steps, the period T (effective decay a^(1/N)) "
                       f"(default: {config_lib.DEFAULT_EVERY_STEPS})")
    group.add_argument("--ema-batch-scaling", action="store_true",
                       help="the decays are for batch 128 (the paper's): at --batch-size B they act as a^(B/128), "
                       "the warm-up counted in batch-128 steps (EMA scaling rule, Busbridge et al. 2023)")
    group.add_argument("--ema-warmup", default=None,
                       help="decay warm-up min(a, (t+1)/(t+10)): t counts optimizer steps "
                       "(steps, paper §4.1), EMA updates (updates), or no warm-up (none, Adda et al.) "
                       "(default: steps)")
    group.add_argument("--stop-epochs-from", default=None, metavar="RUN",
                       help="final run (--full-train): keep each EMA, and SGD's early-stopped weights, at "
                       "the epochs selected on the validation run RUN (its summary.json), paper §4.1; "
                       "without it a --full-train run selects on the test set and says so")
    group.add_argument("--ema-select", default=None,
                       help="which epoch of each EMA is saved and tested: best (best validation accuracy, "
                       "lowest validation loss, paper §4.1) or final (the last epoch, Adda et al.'s Table 1) "
                       "(default: best)")
    group.add_argument("--ema-evaluate", default=None,
                       help="when the EMAs are evaluated: every-epoch (the curves), or selected: each EMA only at "
                       "the epochs fixed in advance (--stop-epochs-from, --ema-select final), skipping the other "
                       "evaluations; --bn-recompute epoch and --track-stability still evaluate every EMA every epoch "
                       "(default: every-epoch)")
    group.add_argument("--ema-bn-mode", "--ema-bn", dest="ema_bn_mode", default=None,
                       help="EMA BatchNorm statistics: eman (EMA of the trained model's) or copy (default: eman)")
    group.add_argument("--bn-recompute", default=None,
                       help="recompute EMA BatchNorm statistics: none, epoch (every epoch for the "
                       "curves, and once more for the selected EMA models at the end), end (only "
                       "once, for the selected EMA models) (default: end)")


# Flags that act on the EMAs only, and their defaults: with no --ema-decays a given one would do nothing.
# (--stop-epochs-from is not one: it also picks the epoch of SGD's early-stopped weights.)
_EMA_FLAGS = {"ema_every_steps": ("--ema-every-steps", config_lib.DEFAULT_EVERY_STEPS),
              "ema_warmup": ("--ema-warmup", "steps"), "ema_select": ("--ema-select", "best"),
              "ema_evaluate": ("--ema-evaluate", "every-epoch"),
              "ema_bn_mode": ("--ema-bn-mode", "eman"), "bn_recompute": ("--bn-recompute", "end"),
              "ema_batch_scaling": ("--ema-batch-scaling", False)}
EMA_ONLY_FLAGS = tuple(flag for flag, _ in _EMA_FLAGS.values())  # app.reproduce drops these from runs without EMAs


def _ema_modes(args):
    """The EMA-only flags, defaults filled in: refused without --ema-decays, checked against their choices."""
    for dest, (flag, default) in _EMA_FLAGS.items():
        if getattr(args, dest) in (None, False):
            setattr(args, dest, default)
        elif not args.ema_decays:
            raise UsageError(f"{flag} acts on the EMAs, and --ema-decays gives none; give decays or drop {flag}")
    choice(args.ema_bn_mode, config_lib.EMA_BN_MODES, "--ema-bn-mode")
    choice(args.ema_select, config_lib.EMA_SELECT_MODES, "--ema-select")
    choice(args.ema_evaluate, config_lib.EMA_EVALUATE_MODES, "--ema-evaluate")
    choice(args.ema_warmup, config_lib.EMA_WARMUP_MODES, "--ema-warmup mode")
    choice(args.bn_recompute, config_lib.BN_RECOMPUTE_MODES, "--bn-recompute mode")
    return {dest: getattr(args, dest) for dest in _EMA_FLAGS}


def _ema_fields(args, epochs):
    """The decays, which epochs they are kept at, and the bootstrap."""
    decays = ()
    if args.ema_decays:  # MultiEMA's own rule (callbacks/arguments.py), as a one-line error
        try:
            decays = arguments.checked_decays(args.ema_decays)
        except InvalidArgument as error:
            raise flag_error("--ema-decays", args.ema_decays, error) from None
    select_epochs = None
    if args.stop_epochs_from is not None:
        if not args.full_train:
            raise UsageError("--stop-epochs-from is for the final --full-train run; add --full-train")
        if args.ema_select == "final":
            raise UsageError("--ema-select final keeps the last epoch; drop --stop-epochs-from, "
                             "which keeps the validation run's epochs")
        select_epochs = inputs.stop_epochs_from(args.stop_epochs_from, decays, epochs)
    elif args.ema_select == "final":
        select_epochs = {f"{decay:g}": {"accuracy": epochs, "loss": epochs} for decay in decays}
    if args.ema_evaluate == "selected" and select_epochs is None:
        raise UsageError("--ema-evaluate selected evaluates each EMA only at epochs fixed in advance; add "
                         "--stop-epochs-from RUN (a final run) or --ema-select final, or drop --ema-evaluate")
    if args.bootstrap_every_epochs < 0:
        raise UsageError("--bootstrap-every-epochs must be >= 0")
    if args.bootstrap_every_epochs and not decays:
        raise UsageError("--bootstrap-every-epochs needs at least one --ema-decays value")
    return dict(ema_decays=decays, ema_select_epochs=select_epochs,
                stop_epochs_from=args.stop_epochs_from, bootstrap_every_epochs=args.bootstrap_every_epochs)
