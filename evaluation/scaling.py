"""The budget-scaling rule: a small run as a miniature of the paper's protocol.

A run's averaging geometry is set by four fractions of its length S (optimizer
steps of the 80/20 validation run): an EMA's window T / (1 - α) / S, the step
the decay warm-up min(α, (t+1)/(t+10)) releases it at (§4.1, t counted in
steps) over S, the lr warm-up over S, and where SWA starts. The paper's
protocol (§4.1, Table 22: 40,000 training images at batch 128 = 313 steps per
epoch, 200 epochs, T = 16, decays 0.968 ... 0.998, 5 warm-up epochs) has
windows of 0.8 ... 12.8 % of the run and releases 0.998 at 7.2 %. The release
step is about 9 / (1 - α) and the window T / (1 - α), so both fractions match
the paper's at once only with the paper's T = 16; then

    1 - α_small = (1 - α_paper) * S_paper / S_small,

and the lr warm-up and SWA start keep their fractions of the epochs (2.5 %,
75 % as in Izmailov et al. §4). `ratio_rows` recomputes all four fractions for
a given run, beside the paper's, for every claim page.
"""

import math

from callbacks.warmup import warmup_release_step

PAPER_DECAYS = (0.968, 0.984, 0.992, 0.996, 0.998)
PAPER_EVERY_STEPS = 16
PAPER_WARMUP_EPOCHS = 5
PAPER_EPOCHS = 200
PAPER_STEPS_PER_EPOCH = math.ceil(50000 * 0.8 / 128)  # the 80 % split of CIFAR's 50,000 at batch 128: 313
PAPER_STEPS = PAPER_STEPS_PER_EPOCH * PAPER_EPOCHS  # 62,600
SWA_START_FRACTION = 0.75  # Izmailov et al. §4: SGD for ~75 % of the budget, then SWA


def scaled_decays(steps, digits=4):
    """The paper's decays for a run of `steps` steps at the paper's T (rounded to `digits`)."""
    factor = PAPER_STEPS / steps
    decays = tuple(round(1 - (1 - decay) * factor, digits) for decay in PAPER_DECAYS)
    if decays[0] <= 0:
        raise ValueError(f"a run of {steps} steps is too short for the rule: the smallest decay "
                         f"would be {decays[0]:g} (needs > {PAPER_STEPS * 0.032:,.0f} steps)")
    return decays


def scaled_warmup_epochs(epochs):
    """The paper's 5-of-200-epoch lr warm-up at `epochs` (2.5 %)."""
    return PAPER_WARMUP_EPOCHS / PAPER_EPOCHS * epochs


def swa_start_epoch(epochs):
    """The first SWA epoch: SGD runs for 75 % of `epochs` (rounded down), the branch from the next."""
    return int(SWA_START_FRACTION * epochs) + 1


def ratio_rows(steps_per_epoch, epochs, decays, every_steps, warmup_epochs, swa_start=None):
    """[(quantity, paper, this budget)] as % of the run: each decay's window and release, lr warm-up, SWA start.

    Paired by rank from the largest: the largest decay here against the paper's largest, and so on down (a
    run that keeps the largest decay alone, as app.reproduce's final runs do, pairs it with 0.998).
    """
    steps = steps_per_epoch * epochs
    rows = []
    for paper_decay, decay in list(zip(sorted(PAPER_DECAYS, reverse=True), sorted(decays, reverse=True)))[::-1]:
        rows.append((f"window T/(1-α), α={paper_decay:g} / {decay:g}",
                     _percent(PAPER_EVERY_STEPS / (1 - paper_decay), PAPER_STEPS),
                     _percent(every_steps / (1 - decay), steps)))
        rows.append((f"decay released (step), α={paper_decay:g} / {decay:g}",
                     _percent(warmup_release_step(paper_decay), PAPER_STEPS),
                     _percent(warmup_release_step(decay), steps)))
    rows.append(("lr warm-up", _percent(PAPER_WARMUP_EPOCHS, PAPER_EPOCHS), _percent(warmup_epochs, epochs)))
    if swa_start is not None:
        rows.append(("SWA start (epochs before the branch)", _percent(SWA_START_FRACTION * PAPER_EPOCHS, PAPER_EPOCHS),
                     _percent(swa_start - 1, epochs)))
    return rows


def _percent(part, whole):
    return 100.0 * part / whole


def ratio_table(rows):
    """Markdown for `ratio_rows`."""
    lines = ["| fraction of the run | paper (%) | this budget (%) |", "|---|---|---|"]
    lines += [f"| {name} | {paper:.1f} | {ours:.1f} |" for name, paper, ours in rows]
    return "\n".join(lines)
