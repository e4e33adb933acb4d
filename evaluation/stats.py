"""Paired confidence intervals and the three verdicts of the claim pages.

A claim compares two methods trained from the same seeds (EMA vs the SGD run
it averages, SWA vs SGD): the per-seed differences d_s carry the pairing, and
their mean has the t-based interval

    mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)

(n = 3 seeds: t = 4.30). A claim states a direction and a margin (e.g. "EMA
beats SGD by at least 0 points"); the verdict is symmetric:

- **holds**: the whole interval lies beyond the margin, on the claimed side;
- **does not hold**: the whole interval lies on the other side;
- **inconclusive**: the interval contains the margin.

One seed gives no interval (verdict inconclusive unless `fallback_se` is
given, e.g. a binomial standard error over the test images).
"""

import dataclasses
import math

import numpy as np
from scipy import stats as scipy_stats

VERDICTS = ("holds", "does not hold", "inconclusive")
# docs/analysis-plan.md adds: an undecided claim whose seeds needed exceed the budget, and a page whose runs
# predate the plan (or record no clean commit).
PLAN_VERDICTS = VERDICTS + ("not decidable at this budget", "exploratory")
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """The mean of paired differences and its two-sided `level` interval."""

    mean: float
    low: float
    high: float
    n: int
    method: str  # how the interval was computed, for the page
    scale: float = 100.0  # how `text` shows it: accuracy differences in points by default
    unit: str = " points"
    digits: int = 2

    @property
    def half_width(self):
        return (self.high - self.low) / 2

    def text(self):
        scale, unit, digits = self.scale, self.unit, self.digits
        if math.isnan(self.low):
            return f"{scale * self.mean:+.{digits}f}{unit} (n={self.n}, no interval)"
        return (f"{scale * self.mean:+.{digits}f}{unit}, 95 % CI [{self._bound(self.low)}, "
                f"{self._bound(self.high)}] ({self.method})")

    def short(self):
        """`+0.15 [-0.69, +0.997]` for a table cell; the mean alone without an interval."""
        mean = f"{self.scale * self.mean:+.{self.digits}f}"
        return mean if math.isnan(self.low) else f"{mean} [{self._bound(self.low)}, {self._bound(self.high)}]"

    def _bound(self, value):
        """One format for every bound (docs/analysis-plan.md): 2 decimals; a bound that rounds onto a
        margin is decided by its unrounded value (`verdict`), and the page says so (`rounds_onto`)."""
        return f"{self.scale * value:+.{self.digits}f}"

    def rounds_onto(self, margin):
        """True when a bound differs from ±`margin` but shows as it (+0.997 as "+1.00" at ±1 point,
        -0.004 as "-0.00" at 0)."""
        def magnitude(value):
            return f"{abs(self.scale * value):.{self.digits}f}"

        return any(value not in (margin, -margin) and magnitude(value) == magnitude(margin)
                   for value in (self.low, self.high))


def paired_interval(a, b, level=LEVEL, fallback_se=None):
    """The t-interval of mean(a - b) over paired samples (one value per seed each)."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired samples need the same 1-D length; got {a.shape} and {b.shape}")
    diff = a - b
    n, mean = len(diff), float(diff.mean())
    if n >= 2:
        se = float(diff.std(ddof=1)) / math.sqrt(n)
        half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * se
        return Interval(mean, mean - half, mean + half, n, f"paired t, {n} seeds")
    if fallback_se is not None:
        half = float(scipy_stats.norm.ppf(0.5 + level / 2)) * fallback_se
        return Interval(mean, mean - half, mean + half, n, "1 seed: binomial error over the evaluated images")
    return Interval(mean, math.nan, math.nan, n, "1 seed")


def binomial_se(p1, p2, examples):
    """Standard error of p1 - p2 for two accuracies on `examples` images, as if independent.

    Predictions of two models on the same images are positively correlated,
    so this overstates the paired error: a conservative stand-in for one seed.
    """
    return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / examples)


def verdict(interval, margin=0.0, higher_is_better=True):
    """holds / does not hold / inconclusive: the interval against `margin` (see the module doc)."""
    if math.isnan(interval.low):
        return "inconclusive"
    low, high = (interval.low, interval.high) if higher_is_better else (-interval.high, -interval.low)
    margin = margin if higher_is_better else -margin
    if low > margin:
        return "holds"
    if high < margin:
        return "does not hold"
    return "inconclusive"


# The analysis plan's (docs/analysis-plan.md) equivalence claims and power rows.
EQUIVALENCE_MARGIN = 0.01  # ±1.0 accuracy point: twice the pre-plan baseline's between-seed sd (0.48)
MAX_SEEDS = 8  # seeds are added once, up to this many; beyond it: "not decidable at this budget"
FIRST_SEEDS = 3  # the plan reads every claim at 3 seeds first ("At n = 3 every page shows ...")


def seeds_for_pairs(pairs):
    """The fewest seeds whose pairs number at least `pairs` (Table 3's values are pairs of seeds)."""
    seeds = 2
    while seeds * (seeds - 1) // 2 < pairs:
        seeds += 1
    return seeds


def equivalence_verdict(interval, margin=EQUIVALENCE_MARGIN):
    """holds if the interval lies inside ±margin, does not hold if entirely outside it, else inconclusive."""
    if math.isnan(interval.low):
        return "inconclusive"
    if -margin < interval.low and interval.high < margin:
        return "holds"
    if interval.high < -margin or interval.low > margin:
        return "does not hold"
    return "inconclusive"


def seeds_needed(diffs, margin=0.0, equivalence=False, level=LEVEL, limit=1000):
    """The fewest seeds n whose t interval, at the observed mean and sd of `diffs`, decides the claim:
    t(0.975, n-1) * sd / sqrt(n) below the distance from the mean to the margin (for an equivalence
    claim: to the nearer of ±margin). None when no n up to `limit` does (the mean on the margin)."""
    diffs = np.asarray(diffs, "float64")
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    distance = abs(margin - abs(mean)) if equivalence else abs(mean - margin)
    if distance == 0:
        return None
    for n in range(2, limit + 1):
        if float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) < distance:
            return n
    return None


def power_text(interval, needed, seconds_per_seed=None, pairs=False, rerun=None):
    """The page's power row: half-width, seeds needed at the observed spread, and their cost here.

    `needed` counts the statistic's values (`seeds_needed`); with `pairs` they are pairs of seeds
    (Table 3), and the seeds, their limit and their cost are those that make that many pairs. Read at
    `FIRST_SEEDS` seeds, an undecided claim within `MAX_SEEDS` gets its seeds added once (the plan);
    read at more, it was: the plan reads no further. `rerun` (claim, seeds read) names the command that
    adds them (left out on exploratory pages: their runs decide nothing, whatever is added).
    """
    have = seeds_for_pairs(interval.n) if pairs else interval.n
    seeds_needed = None if needed is None else seeds_for_pairs(needed) if pairs else needed
    what = f"{needed} pairs, i.e. {seeds_needed} seeds," if pairs else f"{needed} seeds"
    if needed is None:
        seeds = "no number of seeds up to 1,000 decides it (mean on the margin)"
    elif seeds_needed <= have:
        seeds = f"{what} are enough to decide it at the observed spread ({have} were run)"
    else:
        seeds = f"{what} needed to decide it at this spread"
        if seeds_needed > MAX_SEEDS:
            seeds += f" (over {MAX_SEEDS}: not decidable at this budget)"
        elif have <= FIRST_SEEDS and rerun:
            claim, read = rerun
            after = max(read) + 1
            named = sorted(read) + list(range(after, after + seeds_needed - len(read)))
            seeds += (f" (the plan adds seeds once, up to {seeds_needed}: `python -m app.reproduce {claim} --seeds "
                      f"{' '.join(map(str, named))}`, and reads the verdict there)")
        elif have > FIRST_SEEDS:
            seeds += f" (seeds were added once, to {have}: the plan reads no further)"
    if pairs and seeds_needed:
        seeds += f"; the plan's limit of {MAX_SEEDS} applies to those seeds ({MAX_SEEDS * (MAX_SEEDS - 1) // 2} pairs)"
    cost = ""
    if seconds_per_seed is not None and math.isnan(seconds_per_seed) and seeds_needed:
        cost = "; their cost here: not known (a run read records no wall time)"
    elif seconds_per_seed and seeds_needed:
        cost = (f"; {seeds_needed} seeds cost {seeds_needed * seconds_per_seed / 3600:.1f} h here (2 CPU cores, "
                "at the fastest seed's wall time), one GPU: not measured")
    width = f"{interval.scale * interval.half_width:.{interval.digits}f}{interval.unit}"
    return f"half-width {width} (n={interval.n}{' pairs' if pairs else ''}); {seeds}{cost}"
