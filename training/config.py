"""The one configuration object of a training run.

Config flows one way: command line -> `TrainConfig` (frozen) -> `build_*`
functions -> run directory (`config.json`). Defaults that depend on the dataset
or the model follow the paper's setup (Morales-Brotons et al., App. F / Table 22).
"""

import dataclasses
import json

from callbacks.defaults import BN_MODES as EMA_BN_MODES
from callbacks.defaults import DEFAULT_DECAYS as DEFAULT_EMA_DECAYS
from callbacks.defaults import DEFAULT_EVERY_STEPS
from callbacks.defaults import DEFAULT_SIGMA_RELS
from callbacks.warmup import WARMUP_MODES as EMA_WARMUP_MODES
from data.datasets import CIFAR10N_LABELS, DATASETS as _DATASETS

# Choices and defaults owned elsewhere (the data layer, the callbacks), here
# under the names of the flags they check; none of these imports Keras.
DATASETS = tuple(_DATASETS)
LABEL_NOISE = tuple(CIFAR10N_LABELS)
# The names of `models.MODELS`, here without importing Keras so that bad
# input is reported at once (tests/test_cli.py checks they agree).
MODEL_NAMES = ("preresnet164", "resnet18", "resnet20", "resnet34", "vgg16", "wrn28_10")
SCHEDULES = ("cosine", "constant", "multistep", "step", "linear")
# When the EMAs' BatchNorm statistics are recomputed: never, every epoch (and
# once more for the selected models at the end), or only at the end.
BN_RECOMPUTE_MODES = ("none", "epoch", "end")
# Which epoch of each EMA a run keeps: the best on validation (paper §4.1) or the last.
EMA_SELECT_MODES = ("best", "final")
# Which epochs MultiEMA evaluates the EMAs at: all (the curves), or only the fixed selected ones.
EMA_EVALUATE_MODES = ("every-epoch", "selected")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

# Paper Table 22: CIFAR-10/100 200 epochs, Tiny-ImageNet 150.
DEFAULT_EPOCHS = {"tiny-imagenet": 150}
DEFAULT_EPOCHS_OTHER = 200
# Paper Table 22: ResNets 1e-4; Wide ResNet and VGG-16 5e-4.
WEIGHT_DECAY_BY_MODEL_PREFIX = {"wrn": 5e-4, "vgg": 5e-4}
DEFAULT_WEIGHT_DECAY = 1e-4
# CIFAR-N experiments use ResNet-34 (paper §4.3); the rest ResNet-18 (§4.1).
DEFAULT_MODEL = {"cifar10n": "resnet34", "cifar100n": "resnet34"}
DEFAULT_MODEL_OTHER = "resnet18"
# SWA paper App. A, ResNets: constant SWA learning rate 0.01 on CIFAR-10,
# 0.05 on CIFAR-100 (used here for every 100+-class dataset).
SWA_LR_BY_DATASET = {"cifar100": 0.05, "cifar100n": 0.05, "tiny-imagenet": 0.05}
DEFAULT_SWA_LR = 0.01
EMA_REFERENCE_BATCH = 128  # the paper's batch (Table 22), for which its decays are given


def ema_batch_scale(config):
    """B / 128 with `--ema-batch-scaling`, else 1 (callbacks/warmup.py `decays_at`)."""
    return config.batch_size / EMA_REFERENCE_BATCH if config.ema_batch_scaling else 1.0


def whole_if_integral(epochs):
    """`epochs` as an int when it is whole (5.0 -> 5), else the float (0.75)."""
    epochs = float(epochs)
    return int(epochs) if epochs.is_integer() else epochs


def default_swa_lr(dataset):
    return SWA_LR_BY_DATASET.get(dataset, DEFAULT_SWA_LR)


def default_epochs(dataset):
    return DEFAULT_EPOCHS.get(dataset, DEFAULT_EPOCHS_OTHER)


def default_model(dataset):
    return DEFAULT_MODEL.get(dataset, DEFAULT_MODEL_OTHER)


def default_weight_decay(model):
    for prefix, value in WEIGHT_DECAY_BY_MODEL_PREFIX.items():
        if model.startswith(prefix):
            return value
    return DEFAULT_WEIGHT_DECAY


# Field names in the config.json of older runs -> today's.
RENAMED_FIELDS = {"ema_bn": "ema_bn_mode"}


def with_added_fields(values):
    """A config.json's dict with the fields added since, as that run had them."""
    values = dict(values)
    if values.get("swa") and values.get("swa_epochs") is None and values.get("swa_start_epoch"):
        # Before --swa-epochs the SWA branch ran to the end of the budget.
        values["swa_epochs"] = values["epochs"] - values["swa_start_epoch"] + 1
    return values


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = "cifar10"
    model: str = "resnet18"
    epochs: int = 200
    lr: float = 0.1
    batch_size: int = 128
    # Forward passes only: 1.09x the images/s of batch 128 on 2 CPU cores
    # (bench/eval_batch_size.py), identical accuracy.
    eval_batch_size: int = 512
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    seed: int = 0
    seeds: tuple = ()
    precision: str = "float32"
    data_dir: str | None = None
    cifar_n_dir: str | None = None
    out: str | None = None
    limit_train: int | None = None
    limit_validation: int | None = None
    full_train: bool = False
    validation_fraction: float = 0.2
    split_seed: int = 0
    schedule: str = "cosine"
    warmup_epochs: float = 5  # an int when whole (config.json: 5, not 5.0)
    label_noise: str = "worse"
    # Weight averaging (callbacks/); an empty tuple turns EMA off.
    ema_decays: tuple = DEFAULT_EMA_DECAYS
    ema_every_steps: int = DEFAULT_EVERY_STEPS
    ema_warmup: str = "steps"
    # Busbridge et al. (2023): the decays are for batch EMA_REFERENCE_BATCH and
    # act as a^(B/128) at batch B, the warm-up counted in batch-128 steps.
    ema_batch_scaling: bool = False
    # The final run's EMA epochs, chosen on a validation run (paper §4.1):
    # {"<decay>": {"accuracy": epoch, "loss": epoch}}, 1-based; None: select
    # on this run's evaluation split.
    ema_select_epochs: dict | None = None
    stop_epochs_from: str | None = None
    # "best": select by validation accuracy / loss (or at the stop epochs);
    # "final": keep every EMA's last epoch (Adda et al. read the final epoch).
    ema_select: str = "best"
    # "every-epoch": every EMA evaluated after every epoch (the curves); "selected": each only at
    # the epochs fixed in advance (ema_select_epochs), which a final run's tables read.
    ema_evaluate: str = "every-epoch"
    ema_bn_mode: str = "eman"
    bn_recompute: str = "end"
    swa: bool = False
    swa_start_epoch: int | None = None  # first epoch of the SWA branch (1-based)
    swa_lr: float | None = None
    swa_cycle_epochs: int = 1
    # The branch's length in epochs, also past `epochs` (SWA paper Table 1's
    # 1.25 and 1.5 budgets); resolved from the command line: the rest of the budget.
    swa_epochs: int | None = None
    swa_include_start: bool = True  # average the branch's starting point too (SWA paper Algorithm 1)
    bootstrap_every_epochs: int = 0
    track_stability: bool = False
    # Data parallelism (training/distribution.py): devices of one synchronous
    # run (None: every accelerator, else 1), resolved before the run starts.
    devices: int | None = None
    sync_batch_norm: bool = False
    # Model parallelism, JAX (training/model_parallel.py): "BATCHxMODEL" mesh, e.g. "2x4"; None: off.
    model_parallel: str | None = None
    # Post-hoc EMA (callbacks/power_ema.py): power-function EMAs snapshotted
    # every N steps (None: every epoch) into RUN/power_ema/ for app.posthoc.
    post_hoc_ema: bool = False
    post_hoc_sigma_rels: tuple = DEFAULT_SIGMA_RELS
    post_hoc_snapshot_every_steps: int | None = None
    post_hoc_snapshot_dtype: str = "float32"
    checkpoint_every_steps: int | None = None
    keep_checkpoint: bool = False
    deterministic: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        names = {field.name for field in dataclasses.fields(cls)}
        values = with_added_fields({RENAMED_FIELDS.get(key, key): value for key, value in values.items()})
        values = {key: value for key, value in values.items() if key in names}
        for key in ("ema_decays", "seeds", "post_hoc_sigma_rels"):
            if key in values:
                values[key] = tuple(values[key])
        if isinstance(values.get("ema_warmup"), bool):  # before it named its unit
            values["ema_warmup"] = "steps" if values["ema_warmup"] else "none"
        return cls(**values)
