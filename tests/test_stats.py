"""zoo.eval.stats against hand-computed values (closed-form t CDFs for 2 and 4 degrees of freedom)."""

import math
import statistics
import warnings

import pytest

from zoo.eval import stats


def t_cdf_df2(t: float) -> float:  # Student t, 2 degrees of freedom, closed form
    return 0.5 + t / (2.0 * math.sqrt(2.0 + t * t))


def t_cdf_df4(t: float) -> float:  # Student t, 4 degrees of freedom, closed form
    x = t / math.sqrt(1.0 + t * t / 4.0)
    return 0.5 + 3.0 / 8.0 * x * (1.0 - t * t / (12.0 * (1.0 + t * t / 4.0)))


def test_summary_is_mean_sample_std_and_the_t_interval():
    summary = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary.n == 5 and summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(math.sqrt(2.5))
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} from tables
    assert (summary.ci_low, summary.ci_high) == pytest.approx((3.0 - half, 3.0 + half))
    assert summary.format(2) == "3.00 ± 1.58"
    assert summary.format(1, interval=True) == "3.0 ± 1.6 [1.0, 5.0]"


def test_a_single_seed_has_no_spread_and_prints_none():
    summary = stats.summarize([7.25])
    assert summary.std is None and summary.ci_low is None and summary.ci_high is None
    assert summary.format(2) == "7.25" and "nan" not in summary.format(2, interval=True)
    assert stats.t_interval([7.25]) is None and stats.bootstrap_interval([7.25]) is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        stats.summarize([])
    with pytest.raises(ValueError, match="finite"):
        stats.summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        stats.t_interval([1.0, 2.0], confidence=1.5)


def test_welch_p_matches_the_closed_form_t_distribution():
    # means 2 and 5, variances 1 and 1, n = 3 each: t = -3 / sqrt(2/3), Welch df = 4 exactly
    t = -3.0 / math.sqrt(2.0 / 3.0)
    expected = 2.0 * (1.0 - t_cdf_df4(abs(t)))
    assert stats.welch_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.0213116, abs=1e-6)
    assert stats.welch_p([1.0], [4.0, 5.0]) is None  # one value: no test
    assert stats.welch_p([1.0, 1.0], [2.0, 2.0]) is None  # no variance at all


def test_welch_p_with_one_constant_group_is_exact_and_quiet():
    # group a constant (0.95 at every seed): Welch's df is then n_b - 1 = 2, whose t CDF is closed form:
    # two-sided p = 1 - |t| / sqrt(2 + t^2)
    b = [0.81, 0.805, 0.79]
    t = (0.95 - statistics.fmean(b)) / math.sqrt(statistics.variance(b) / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's precision-loss warning would fail here
        p = stats.welch_p([0.95, 0.95, 0.95], b)
    assert p == pytest.approx(1.0 - abs(t) / math.sqrt(2.0 + t * t), rel=1e-6)


def test_paired_p_pairs_by_seed_not_by_position():
    recipe = {0: 10.0, 1: 12.0, 2: 11.0}
    baseline = {2: 14.0, 0: 12.0, 1: 13.0, 5: 99.0}  # seed 5 has no partner and is left out
    p, pairs = stats.paired_p(recipe, baseline)
    # differences -2, -1, -3: mean -2, sd 1, t = -2 sqrt(3), df = 2
    assert pairs == 3
    assert p == pytest.approx(2.0 * (1.0 - t_cdf_df2(2.0 * math.sqrt(3.0))), rel=1e-9)
    assert p == pytest.approx(1.0 - 2.0 * math.sqrt(3.0) / math.sqrt(14.0), rel=1e-9)
    assert stats.paired_p({0: 1.0}, {0: 2.0}) == (None, 1)
    assert stats.paired_p({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}) == (None, 2)  # constant differences


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [9.71, 10.53, 11.92, 10.14, 9.02, 12.37, 10.88, 9.45]
    first = stats.bootstrap_interval(values, resamples=2000, seed=3)
    assert first == stats.bootstrap_interval(values, resamples=2000, seed=3)
    assert first != stats.bootstrap_interval(values, resamples=2000, seed=4)
    low, high = first
    assert min(values) <= low < statistics.fmean(values) < high <= max(values)
    assert stats.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_claims_are_better_only_with_p_below_005_and_a_difference_over_one_std():
    baseline = {0: 12.0, 1: 13.0, 2: 14.0}
    clear = stats.compare("fast", {0: 8.0, 1: 8.5, 2: 9.5}, "plain", baseline)
    assert clear.verdict == "better" and clear.p == clear.paired_p < 0.05
    assert stats.claim(clear, "FID").startswith("fast is better than plain (FID")
    worse = stats.compare("slow", {0: 16.0, 1: 17.5, 2: 18.0}, "plain", baseline)
    assert worse.verdict == "worse" and "is worse than plain" in stats.claim(worse)
    # consistent per seed (paired p = 0.013) but the difference (0.5) is far below one std (10)
    small = stats.compare("tiny", {0: 10.0, 1: 20.0, 2: 30.0}, "plain", {0: 10.5, 1: 20.6, 2: 30.4})
    assert small.paired_p == pytest.approx(0.0130725, abs=1e-6)
    assert small.verdict == "no clear difference"
    assert stats.claim(small).startswith("tiny vs plain: no clear difference (p = 0.013;")
    # a large difference whose p is above 0.05 is no claim either
    noisy = stats.compare("noisy", {0: 5.0, 1: 15.0, 2: 7.0}, "plain", baseline)
    assert noisy.p > 0.05 and noisy.verdict == "no clear difference"


def test_higher_is_better_metrics_and_single_seeds():
    accuracy = stats.compare(
        "acc", {0: 0.95, 1: 0.96, 2: 0.97}, "plain", {0: 0.80, 1: 0.81, 2: 0.83}, "class_accuracy", False
    )
    assert accuracy.verdict == "better" and accuracy.difference == pytest.approx(0.96 - 2.44 / 3)
    single = stats.compare("one", {0: 1.0}, "plain", {0: 2.0})
    assert single.verdict == "untested" and single.paired_p is None and single.welch_p is None
    assert "one seed" in stats.claim(single) and "nan" not in stats.claim(single)
    record = single.to_dict()
    assert record["claim"] == stats.claim(single) and record["recipe_summary"]["std"] is None
