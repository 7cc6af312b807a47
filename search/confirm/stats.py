"""The statistics tune states: spread of a few runs, a gain with its interval and p-value, and a
rank test between two groups.

Pure functions of plain numbers (no storage, no Optuna), so that they are checked against
hand-computed values on fixed inputs (tests/search/test_confirm_stats.py).

- `spread`: n, mean, sample standard deviation (n - 1), min and max of one setting's runs.
- `gain`: mean(trial) - mean(baseline) with a 95% interval and a two-sided p-value.
  Confirm runs give every confirmed setting the same seeds, so run i of the trial and run i of the
  baseline share initialisation and data order: when at least two seeds finished for both, the
  gain is **paired by seed** (Student's t interval on the per-seed differences, paired t-test).
  Otherwise (runs failed on different seeds) it falls back to **Welch's** t interval and test on
  the two groups. `Gain.method` says which.

Why a t-test and not Wilcoxon's signed-rank test: confirmations run a handful of seeds, and with
N paired runs the exact two-sided signed-rank p-value cannot go below 2 / 2^N (0.25 at N = 3,
0.0625 at N = 5): a rank test could never call a 5-seed confirmation significant at 0.05, however
large and consistent the gain. The t-test assumes the per-seed differences are roughly normal;
with N this small nothing can check that, so read the interval, and the min/max, alongside p.

- `mann_whitney_u`: the Mann-Whitney U test between two independent groups (search methods'
  best values over seeds, `bench/search_efficiency.py`): exact when no value is tied, else the
  normal approximation with tie and continuity corrections, as scipy's `mannwhitneyu` does.

Student's t distribution is computed here (regularised incomplete beta function by its continued
fraction, quantile by bisection) rather than taken from scipy: two functions of about forty
lines do not justify a 40 MB dependency that nothing else in `tune` needs.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95  # the confidence level of every interval tune states


@dataclass(frozen=True)
class Spread:
    """One setting's runs: how many, their mean, sample standard deviation, min and max."""

    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0.0 for a single run
    min: float
    max: float


@dataclass(frozen=True)
class Gain:
    """mean(trial) - mean(baseline), its `LEVEL` interval, a two-sided p-value, and the method."""

    mean: float
    low: float
    high: float
    p_value: float
    method: str  # "paired t" (by seed) or "Welch t"
    n: int  # pairs (paired) or the smaller group (Welch)
    df: float


def spread(values: Sequence[float]) -> Spread:
    """The spread of `values` (at least one)."""
    if not values:
        raise ValueError(f"spread needs at least one value, but got {values=}")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(len(values), statistics.fmean(values), std, min(values), max(values))


def gain(
    trial: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL
) -> Gain | None:
    """The gain of `trial` over `baseline`, each a mapping seed -> metric of its finished runs.

    Paired by seed when at least two seeds finished for both, else Welch's two-sample interval;
    None when either side has fewer than two runs (no spread, nothing to test).
    """
    common = sorted(set(trial) & set(baseline))
    if len(common) >= 2:
        diffs = [trial[s] - baseline[s] for s in common]
        n = len(diffs)
        mean = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(n)
        return _t_gain(mean, se, n - 1, level, "paired t", n)
    if len(trial) < 2 or len(baseline) < 2:
        return None
    a, b = list(trial.values()), list(baseline.values())
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom (either variance may be 0, not both)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1.0
    mean = statistics.fmean(a) - statistics.fmean(b)
    return _t_gain(mean, se, df, level, "Welch t", min(len(a), len(b)))


def _t_gain(mean: float, se: float, df: float, level: float, method: str, n: int) -> Gain:
    if se == 0:
        # every difference equal: no spread to test against; the gain is exact (or none)
        return Gain(mean, mean, mean, 1.0 if mean == 0 else 0.0, method, n, df)
    half = t_quantile(0.5 + level / 2, df) * se
    p = t_two_sided_p(mean / se, df)
    return Gain(mean, mean - half, mean + half, p, method, n, df)


@dataclass(frozen=True)
class RankTest:
    """A Mann-Whitney U test: U of the first group (pairs it wins, a tie half), and the p-value."""

    u: float
    p_value: float
    alternative: str  # "two-sided", "greater" (the first group tends higher) or "less"
    method: str  # "exact" or "normal"


ALTERNATIVES = ("two-sided", "greater", "less")


def mann_whitney_u(
    first: Sequence[float], second: Sequence[float], alternative: str = "two-sided"
) -> RankTest:
    """The Mann-Whitney U test of `first` against `second` (scipy's `mannwhitneyu`, method auto)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, but got {alternative!r}")
    if not first or not second:
        raise ValueError(f"both groups need a value, but got {len(first)} and {len(second)}")
    n1, n2 = len(first), len(second)
    ranks = average_ranks([*first, *second])
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    counts = Counter([*first, *second])
    if all(c == 1 for c in counts.values()):
        # exact: under the null every split of the n1 + n2 ranks is equally likely
        frequencies = _u_frequencies(n1, n2)
        total = sum(frequencies)
        k = round(u)
        at_least = sum(frequencies[k:]) / total  # P(U >= u)
        at_most = sum(frequencies[: k + 1]) / total  # P(U <= u)
        p = {"greater": at_least, "less": at_most}.get(alternative, 2 * min(at_least, at_most))
        return RankTest(u, min(1.0, p), alternative, "exact")
    n = n1 + n2
    tie_term = sum(c**3 - c for c in counts.values()) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    mean = n1 * n2 / 2
    if sigma == 0:  # every value equal
        return RankTest(u, 1.0, alternative, "normal")
    if alternative == "greater":
        p = _normal_sf((u - mean - 0.5) / sigma)
    elif alternative == "less":
        p = _normal_sf((mean - u - 0.5) / sigma)
    else:
        p = 2 * _normal_sf((abs(u - mean) - 0.5) / sigma)
    return RankTest(u, min(1.0, p), alternative, "normal")


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _u_frequencies(n1: int, n2: int) -> list[int]:
    """How many of the C(n1 + n2, n1) splits give U = 0, 1, ..., n1 * n2 (no ties).

    The largest value belongs to the first group (U gains n2) or the second (U gains nothing):
    f(m, n) = f(m - 1, n) shifted by n + f(m, n - 1).
    """
    table = [[[1] for _ in range(n2 + 1)] for _ in range(n1 + 1)]
    for m in range(1, n1 + 1):
        for n in range(1, n2 + 1):
            with_first = [0] * n + table[m - 1][n]
            with_second = table[m][n - 1]
            size = max(len(with_first), len(with_second))
            table[m][n] = [
                (with_first[k] if k < len(with_first) else 0)
                + (with_second[k] if k < len(with_second) else 0)
                for k in range(size)
            ]
    return table[n1][n2]


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


# --- Student's t distribution ------------------------------------------------------------------


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, but got {df=}")
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1 - tail if t >= 0 else tail


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on `t_cdf` (monotone)."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie strictly between 0 and 1, but got {p=}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other side
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    # modified Lentz's method for the incomplete beta continued fraction
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result
