"""Paired intervals and verdicts (evaluation/stats.py) and the budget-scaling rule (evaluation/scaling.py)."""

import math

import numpy as np
import pytest

from evaluation import scaling, stats

T_975_2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom (tables)
T_975_1 = 12.706204736174707


def test_paired_interval_is_the_t_interval_of_the_differences():
    ema, sgd = [0.781, 0.776, 0.790], [0.770, 0.772, 0.779]
    diff = np.subtract(ema, sgd)
    half = T_975_2 * diff.std(ddof=1) / math.sqrt(3)
    interval = stats.paired_interval(ema, sgd)
    assert interval.mean == pytest.approx(diff.mean())
    assert (interval.low, interval.high) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert interval.n == 3
    two = stats.paired_interval(ema[:2], sgd[:2])
    assert two.half_width == pytest.approx(T_975_1 * diff[:2].std(ddof=1) / math.sqrt(2))


def test_pairing_removes_the_seed_effect():
    # Seeds differ by a lot, the method's gain is the same in each: paired, the interval is tight.
    sgd = [0.70, 0.75, 0.80]
    ema = [a + 0.01 + e for a, e in zip(sgd, (0.001, -0.001, 0.0))]
    interval = stats.paired_interval(ema, sgd)
    assert interval.low > 0.005 and stats.verdict(interval) == "holds"


@pytest.mark.parametrize("low, high, margin, higher, expected", [
    (0.001, 0.02, 0.0, True, "holds"),
    (-0.02, -0.001, 0.0, True, "does not hold"),
    (-0.01, 0.01, 0.0, True, "inconclusive"),
    (0.002, 0.009, 0.01, True, "does not hold"),  # above 0 but below the +1 point margin
    (0.011, 0.03, 0.01, True, "holds"),
    (-0.02, -0.001, 0.0, False, "holds"),  # lower is better (ECE, churn)
    (0.001, 0.02, 0.0, False, "does not hold"),
])
def test_verdicts_are_symmetric_around_the_margin(low, high, margin, higher, expected):
    interval = stats.Interval((low + high) / 2, low, high, 3, "test")
    assert stats.verdict(interval, margin, higher_is_better=higher) == expected


@pytest.mark.parametrize("low, high, shown", [
    (-0.0069, 0.00997, "[-0.69, +1.00]"),  # one format for every bound: 2 decimals
    (0.00598, 0.0159, "[+0.60, +1.59]"),
    (-0.00001, 0.006, "[-0.00, +0.60]"),
    (0.0042, 0.0159, "[+0.42, +1.59]"),
])
def test_interval_bounds_have_one_format(low, high, shown):
    assert stats.Interval((low + high) / 2, low, high, 3, "paired t, 3 seeds").text().split(", 95 % CI ")[1] == (
        f"{shown} (paired t, 3 seeds)")


def test_a_bound_that_shows_as_the_margin_is_flagged_and_decided_unrounded():
    interval = stats.Interval(0.0015, -0.0069, 0.009999, 3, "paired t, 3 seeds")
    assert interval.rounds_onto(0.01) and not interval.rounds_onto(0.0)
    assert stats.verdict(interval, 0.01) == "does not hold"  # +0.9999 < +1: below the margin
    assert not stats.Interval(0.0, -0.0069, 0.01, 3, "t").rounds_onto(0.01)  # exactly on it: no note needed


@pytest.mark.parametrize("low, high, expected", [
    (-0.009, 0.009, "holds"), (-0.011, 0.005, "inconclusive"), (0.0101, 0.03, "does not hold"),
    (-0.03, -0.0101, "does not hold"), (0.005, 0.012, "inconclusive"),
])
def test_equivalence_verdict_against_plus_minus_one_point(low, high, expected):
    assert stats.equivalence_verdict(stats.Interval((low + high) / 2, low, high, 3, "t")) == expected


def test_seeds_needed_from_the_t_table():
    # mean 1, sd 1: t(0.975, n-1)/sqrt(n) from printed t tables: n=6 2.571/2.449 = 1.050 (> 1),
    # n=7 2.447/2.646 = 0.925 (< 1), so 7 seeds clear a margin of 0.
    assert stats.seeds_needed([0.0, 1.0, 2.0], margin=0.0) == 7
    # Equivalence at ±3 with mean 1: distance 2; n=3 4.303/1.732 = 2.48 (> 2), n=4 3.182/2 = 1.59 (< 2).
    assert stats.seeds_needed([0.0, 1.0, 2.0], margin=3.0, equivalence=True) == 4
    assert stats.seeds_needed([-1.0, 0.0, 1.0], margin=0.0) is None  # the mean sits on the margin
    interval = stats.paired_interval([0.0, 0.01, 0.02], [0.0, 0.0, 0.0])
    text = stats.power_text(interval, 7, seconds_per_seed=3600)
    assert "7 seeds needed" in text and "7.0 h here" in text and "half-width 2.48 points" in text


def test_one_seed_has_no_interval_unless_a_binomial_error_is_given():
    assert stats.verdict(stats.paired_interval([0.8], [0.7])) == "inconclusive"
    se = stats.binomial_se(0.8, 0.7, 2000)
    assert se == pytest.approx(math.sqrt((0.8 * 0.2 + 0.7 * 0.3) / 2000))
    interval = stats.paired_interval([0.8], [0.7], fallback_se=se)
    assert interval.half_width == pytest.approx(1.959963984540054 * se)
    assert stats.verdict(interval, 0.01) == "holds"


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="same 1-D length"):
        stats.paired_interval([0.1, 0.2], [0.1])


def test_the_paper_run_scales_to_itself():
    assert scaling.PAPER_STEPS == 313 * 200
    assert scaling.scaled_decays(scaling.PAPER_STEPS) == scaling.PAPER_DECAYS


def test_scaled_decays_keep_the_papers_fractions():
    steps = 313 * 30  # 10,000 images at batch 32, 30 epochs
    decays = scaling.scaled_decays(steps)
    assert decays == (0.7867, 0.8933, 0.9467, 0.9733, 0.9867)
    rows = scaling.ratio_rows(313, 30, decays, 16, scaling.scaled_warmup_epochs(30), scaling.swa_start_epoch(30))
    by_name = {name.split(",")[0] + name.split("α=")[1].split(" /")[0]: (paper, ours)
               for name, paper, ours in rows if "α=" in name}
    for paper_decay, decay in zip(scaling.PAPER_DECAYS, decays):
        # Window T / (1 - α) as a share of the run: 16 / (1 - 0.998) / 62,600 = 12.78 % for the largest.
        paper, ours = by_name[f"window T/(1-α){paper_decay:g}"]
        assert paper == pytest.approx(100 * 16 / (1 - paper_decay) / 62600)
        assert ours == pytest.approx(paper, rel=3e-3)  # the decays are rounded to 4 digits
        # Release: the first t with (t+1)/(t+10) >= α, found by brute force.
        paper, ours = by_name[f"decay released (step){paper_decay:g}"]
        first = next(t for t in range(100000) if (t + 1) / (t + 10) >= decay)
        assert ours == pytest.approx(100 * first / steps)
        assert abs(ours - paper) < 0.15  # percentage points of the run
    warmup = [r for r in rows if r[0] == "lr warm-up"][0]
    assert warmup[1:] == pytest.approx((2.5, 2.5))
    # A run that keeps the largest decay alone (app.reproduce's final runs): it pairs with the paper's largest.
    alone = scaling.ratio_rows(313, 30, decays[-1:], 16, scaling.scaled_warmup_epochs(30))
    assert [name for name, _, _ in alone if "α=" in name] == [
        f"window T/(1-α), α={scaling.PAPER_DECAYS[-1]:g} / {decays[-1]:g}",
        f"decay released (step), α={scaling.PAPER_DECAYS[-1]:g} / {decays[-1]:g}"]


def test_too_short_a_run_is_refused():
    with pytest.raises(ValueError, match="too short"):
        scaling.scaled_decays(1500)


def test_fractional_warmup_epochs():
    from training.config import whole_if_integral
    from training.schedules import TrainingSchedule

    assert whole_if_integral(5.0) == 5 and isinstance(whole_if_integral(5.0), int)
    assert whole_if_integral(0.75) == 0.75
    schedule = TrainingSchedule("cosine", 0.2, 313, 30, 0.75)
    assert schedule.warmup_steps == round(313 * 0.75) == 235
    lrs = [float(schedule(step)) for step in (0, 117, 234, 235)]
    assert lrs == pytest.approx([0.2 / 235, 0.2 * 118 / 235, 0.2, 0.2], rel=1e-5)
    assert schedule.get_config()["warmup_epochs"] == 0.75


def test_fractional_warmup_flag():
    from app import cli

    assert cli.parse_config(["--dataset", "cifar10", "--warmup-epochs", "0.75", "--epochs", "30"]).warmup_epochs == 0.75
    assert cli.parse_config(["--dataset", "cifar10", "--warmup-epochs", "5", "--epochs", "30"]).warmup_epochs == 5


def test_a_negative_bound_that_shows_as_the_margin_is_flagged_too():
    assert stats.Interval(0.004, -0.00004, 0.008, 3, "t").rounds_onto(0.0)  # "-0.00" at margin 0
    assert stats.Interval(-0.005, -0.00997, 0.0, 3, "t").rounds_onto(0.01)  # "-1.00" at ±1 point
    assert not stats.Interval(0.004, 0.0001, 0.008, 3, "t").rounds_onto(0.01)


def test_table3s_pairs_are_priced_and_limited_as_the_seeds_that_make_them():
    """Table 3's values are pairs of seeds: n* pairs need the fewest seeds s with s(s-1)/2 >= n*."""
    assert [stats.seeds_for_pairs(p) for p in (1, 3, 4, 6, 7, 10, 28, 29)] == [2, 3, 4, 4, 5, 5, 8, 9]
    interval = stats.paired_interval([0.0, 0.01, 0.02], [0.0, 0.0, 0.0])  # 3 pairs of 3 seeds
    text = stats.power_text(interval, 7, seconds_per_seed=3600, pairs=True, rerun=("table3", [0, 1, 2]))
    assert "7 pairs, i.e. 5 seeds, needed" in text and "5.0 h here" in text and "(n=3 pairs)" in text
    assert "up to 5: `python -m app.reproduce table3 --seeds 0 1 2 3 4`" in text
    # Seeds read other than 0 1 2: the command keeps them and adds the next ones.
    assert "--seeds 3 4 5 6 7`" in stats.power_text(interval, 7, pairs=True, rerun=("table3", [3, 4, 5]))
    assert "app.reproduce" not in stats.power_text(interval, 7, pairs=True)  # an exploratory page: no command
    assert "cost here: not known" in stats.power_text(interval, 7, seconds_per_seed=float("nan"))
    assert "not decidable at this budget" in stats.power_text(interval, 29, pairs=True)  # 9 seeds > 8
    assert "not decidable" not in stats.power_text(interval, 28, pairs=True)  # 8 seeds
