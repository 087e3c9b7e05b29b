"""The statistics behind every leaderboard comparison: mean and spread over training seeds, 95 % intervals,
Welch and paired (by seed) t-tests of a recipe against the plain one, and a claim worded at the strength
of that evidence.

The tests are scipy's (`scipy.stats.ttest_ind(equal_var=False)`, `scipy.stats.ttest_rel`); the t-based
interval is mean ± t_{0.975, n-1} · s / sqrt(n); the bootstrap interval is the percentile interval of
the mean over resamples drawn with a seeded numpy generator. One value has no spread: its std and
intervals are None (printed as nothing, never as "± nan").
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _scipy

#: a claim of "better"/"worse" needs p below this ...
ALPHA = 0.05
#: ... and a difference of the means larger than this many (larger of the two groups') std
MIN_EFFECT_STDS = 1.0


def _clean(values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError("need at least one value")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"values must be finite, got {out}")
    return out


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (n - 1) and a t-based 95 % interval of one metric over seeds."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    def format(self, digits: int = 4, interval: bool = False) -> str:
        """'m ± s' (and '[lo, hi]' with `interval`); a single value prints only its mean."""
        text = f"{self.mean:.{digits}f}"
        if self.std is None:
            return text
        text += f" ± {self.std:.{digits}f}"
        if interval:
            text += f" [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        return text

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """mean ± t_{(1+c)/2, n-1} · s / sqrt(n); None for a single value."""
    values = _clean(values)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(_scipy.t.ppf((1.0 + confidence) / 2.0, df=len(values) - 1)) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of the mean over `resamples` resamples with replacement (seeded); None for n = 1.

    With three seeds it is narrower than the t interval (it ignores that s itself is uncertain); the
    leaderboard reports the t interval and keeps this one for larger seed counts.
    """
    values = _clean(values)
    if not 0.0 < confidence < 1.0 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=np.float64)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and t interval of values (one per seed)."""
    values = _clean(values)
    interval = t_interval(values, confidence)
    return Summary(
        n=len(values),
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        ci_low=interval[0] if interval else None,
        ci_high=interval[1] if interval else None,
    )


def _p(result) -> float | None:
    p = float(result.pvalue)
    return p if math.isfinite(p) else None


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value (unequal variances); None when either group has one value or
    both have zero variance."""
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return None
    constant = [statistics.pvariance(group) == 0.0 for group in (a, b)]
    if all(constant):
        return None
    with warnings.catch_warnings():
        if any(constant):  # e.g. class accuracy 0.95 at every seed: exact here, scipy's moment check warns
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        return _p(_scipy.ttest_ind(a, b, equal_var=False))


def paired_p(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float | None, int]:
    """Two-sided paired t-test over the seeds both have (seed s of a against seed s of b): (p, pairs).

    p is None with fewer than two pairs, or when every paired difference is the same (no spread)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None, len(seeds)
    x, y = _clean([a[s] for s in seeds]), _clean([b[s] for s in seeds])
    differences = [u - v for u, v in zip(x, y)]
    if statistics.pvariance(differences) == 0.0:
        return None, len(seeds)
    return _p(_scipy.ttest_rel(x, y)), len(seeds)


@dataclass(frozen=True)
class Comparison:
    """One recipe against the baseline on one metric, over training seeds."""

    recipe: str
    baseline: str
    metric: str
    lower_is_better: bool
    recipe_summary: Summary
    baseline_summary: Summary
    difference: float  # mean(recipe) - mean(baseline)
    welch_p: float | None
    paired_p: float | None
    pairs: int
    verdict: str  # "better", "worse", "no clear difference" or "untested"

    @property
    def p(self) -> float | None:
        """The p-value the verdict uses: paired when seeds pair, else Welch."""
        return self.paired_p if self.paired_p is not None else self.welch_p

    def to_dict(self) -> dict:
        out = asdict(self)
        out["claim"] = claim(self)
        return out


def compare(
    recipe: str,
    recipe_values: Mapping[int, float],
    baseline: str,
    baseline_values: Mapping[int, float],
    metric: str = "fid",
    lower_is_better: bool = True,
    paired: bool = True,
) -> Comparison:
    """Test a recipe's per-seed values against the baseline's and decide the verdict.

    `paired=False` for groups whose seeds do not pair (two processes, two recipes trained apart): Welch only.

    "better"/"worse" only when p < ALPHA (paired p when at least two seeds pair, else Welch) AND the
    difference of the means exceeds MIN_EFFECT_STDS times the larger of the two std; otherwise
    "no clear difference"; "untested" when either side has a single seed.
    """
    a, b = summarize(list(recipe_values.values())), summarize(list(baseline_values.values()))
    welch = welch_p(list(recipe_values.values()), list(baseline_values.values()))
    paired, pairs = paired_p(recipe_values, baseline_values) if paired else (None, 0)
    difference = a.mean - b.mean
    p = paired if paired is not None else welch
    if a.std is None or b.std is None:
        verdict = "untested"
    elif p is not None and p < ALPHA and abs(difference) > MIN_EFFECT_STDS * max(a.std, b.std):
        improved = difference < 0 if lower_is_better else difference > 0
        verdict = "better" if improved else "worse"
    else:
        verdict = "no clear difference"
    return Comparison(
        recipe, baseline, metric, lower_is_better, a, b, difference, welch, paired, pairs, verdict
    )


def _format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def claim(comparison: Comparison, metric_label: str | None = None) -> str:
    """The comparison in words, no stronger than the evidence (e.g. for REPLICATION.md and the page)."""
    c = comparison
    label = metric_label or c.metric
    if c.verdict == "untested":
        return (
            f"{c.recipe} vs {c.baseline} on {label}: one seed on a side, no test "
            f"({c.recipe_summary.mean:.4g} vs {c.baseline_summary.mean:.4g})"
        )
    numbers = (
        f"{label} {c.recipe_summary.format(3)} vs {c.baseline_summary.format(3)}, "
        f"paired p = {_format_p(c.paired_p)} ({c.pairs} seeds), Welch p = {_format_p(c.welch_p)}"
    )
    if c.verdict in ("better", "worse"):
        return f"{c.recipe} is {c.verdict} than {c.baseline} ({numbers})"
    return f"{c.recipe} vs {c.baseline}: no clear difference (p = {_format_p(c.p)}; {numbers})"
