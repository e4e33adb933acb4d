"""The budgets of `python -m app.reproduce`: the runs of each claim's chain, as data.

`paper` is the paper's configuration (Table 22: ResNet-18 on CIFAR-100 /
ResNet-34 on CIFAR-100N, 200 epochs, decays 0.968...0.998, T=16, learning
rate from the one-shot tuning `app.tune`), for a GPU; `small` fits a 2-core
CPU as a miniature of it under the budget-scaling rule (evaluation/scaling.py:
ResNet-20, 5,000 CIFAR-10 images at batch 32, 120 epochs (SMALL_PROTOCOL, chosen by the
regime pilots; label noise 5,000 × 60), the paper's
averaging windows and release steps as fractions of the run); `tiny` is the
test suite's. Each family of runs (the CIFAR protocol, label noise, Adda et
al.'s) is one `Setup`; app/reproduce.py turns them into its steps.
"""

import dataclasses
import math
import os

from evaluation import scaling


@dataclasses.dataclass(frozen=True)
class Setup:
    """One family of runs of a budget (e.g. the CIFAR protocol)."""

    dataset: str
    model: str
    epochs: int
    decays: tuple
    every_steps: int
    lr: list  # ["--lr", "0.1"] or ["--lr-from", DIR]
    limit_train: int | None = None
    limit_validation: int | None = None
    batch_size: int = 128
    extra: tuple = ()

    def argv(self, data_dir):
        argv = ["--dataset", self.dataset, "--model", self.model, "--epochs", str(self.epochs),
                "--batch-size", str(self.batch_size), *self.lr,
                "--ema-decays", *[f"{d:g}" for d in self.decays],
                "--ema-every-steps", str(self.every_steps), *self.extra]
        if self.limit_train:
            argv += ["--limit-train", str(self.limit_train)]
        if self.limit_validation:
            argv += ["--limit-validation", str(self.limit_validation)]
        if data_dir:
            argv += ["--data-dir", data_dir]
        return argv


# The small budget's CIFAR protocol, training images x epochs, chosen by docs/analysis-plan.md's
# regime pilots (experiments/regime_pilots.py, experiments/results/regime-pilots/pilots.md): P3,
# the only pilot whose SGD run fits its training set while the lr is high (R1 99.84 %, R2 +1.52
# points), at 2x the pre-plan 10,000 x 30 samples. 120 epochs put the SWA start at exactly 75 %.
SMALL_PROTOCOL = (5000, 120)


def setups(budget, out):
    """{family: Setup} of a budget."""
    if budget == "paper":
        tuned = ["--lr-from", os.path.join(out, "tuning")]
        return {
            "protocol": Setup("cifar100", "resnet18", 200, (0.968, 0.984, 0.992, 0.996, 0.998), 16, tuned),
            "noisy": Setup("cifar100n", "resnet34", 200, (0.968, 0.984, 0.992, 0.996, 0.998), 16,
                           ["--lr-from", os.path.join(out, "tuning-noisy")]),
            "adda": Setup("cifar10", "resnet20", 180, (0.9, 0.99, 0.999, 0.9995, 0.9997), 1,
                          ["--lr", "0.1"], extra=ADDA_FLAGS),
        }
    if budget == "small":
        # The budget-scaling rule (evaluation/scaling.py): with the paper's T=16, decays
        # scaled by 62,600 / (this run's steps) keep its windows (0.8-12.8 % of the run)
        # and release steps (0.998's at 7.2 %); lr warm-up 2.5 %; lr tuned on the
        # validation split (app.tune). Training images x epochs: SMALL_PROTOCOL.
        images, epochs = SMALL_PROTOCOL
        decays = scaling.scaled_decays(math.ceil(images / 32) * epochs)
        tuned = ["--lr-from", os.path.join(out, "tuning")]
        warmup = ["--warmup-epochs", f"{scaling.scaled_warmup_epochs(epochs):g}"]
        noisy_warmup = ["--warmup-epochs", f"{scaling.scaled_warmup_epochs(60):g}"]
        return {
            "protocol": Setup("cifar10", "resnet20", epochs, decays, scaling.PAPER_EVERY_STEPS, tuned, images, 2000,
                              batch_size=32, extra=tuple(warmup)),
            # Fewer images for more epochs (SGD must reach the memorization phase): 157 x 60
            # = 9,420 steps, decays scaled to them.
            "noisy": Setup("cifar10n", "resnet20", 60, scaling.scaled_decays(math.ceil(5000 / 32) * 60),
                           scaling.PAPER_EVERY_STEPS,
                           ["--lr-from", os.path.join(out, "tuning-noisy")], 5000, 2000,
                           batch_size=32, extra=tuple(noisy_warmup)),
            # Adda et al.'s own protocol (every step, no decay warm-up), outside the rule.
            "adda": Setup("cifar10", "resnet20", 30, (0.9, 0.99, 0.999), 1, ["--lr", "0.1"], 10000, 2000,
                          extra=ADDA_FLAGS),
        }
    # tiny: the test suite's (seconds).
    decays = (0.5, 0.9)
    return {
        "protocol": Setup("cifar10", "resnet20", 3, decays, 1, ["--lr", "0.05"], 128, 64, 64),
        "noisy": Setup("cifar10n", "resnet20", 3, decays, 1, ["--lr", "0.05"], 128, 64, 64),
        "adda": Setup("cifar10", "resnet20", 3, decays, 1, ["--lr", "0.05"], 128, None, 64, extra=ADDA_FLAGS),
    }


# Adda et al. App. A: 45k/5k split, plain momentum 0.9, EMA after every step
# without warm-up, no learning-rate warm-up.
ADDA_FLAGS = ("--validation-fraction", "0.1", "--no-nesterov", "--ema-warmup", "none",
               "--warmup-epochs", "0")


# The SWA learning rates app.tune_swa tries on the validation split (docs/analysis-plan.md,
# Comparators: the SWA paper's range, App. A); the SWA branch runs to the budget's end.
SWA_LR_GRID = {"paper": (0.01, 0.02, 0.05), "small": (0.01, 0.02, 0.05), "tiny": (0.01, 0.05)}
