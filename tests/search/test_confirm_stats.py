"""The confirm statistics on fixed inputs, against closed forms, t tables and hand computation."""

from __future__ import annotations

import math

import pytest

from search.confirm.stats import (
    _u_frequencies,
    gain,
    mann_whitney_u,
    spread,
    t_cdf,
    t_quantile,
    t_two_sided_p,
)

# two-sided 95% critical values of Student's t (any table; scipy.stats.t.ppf(0.975, df))
T_975 = {1: 12.706204736174698, 2: 4.302652729911275, 4: 2.7764451051977987, 9: 2.2621571627409915}


@pytest.mark.parametrize("t", [-7.5, -1.2, 0.0, 0.3, 1.7, 4.0, 30.0])
def test_t_cdf_matches_the_closed_forms_at_one_and_two_degrees_of_freedom(t: float) -> None:
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


@pytest.mark.parametrize(("df", "expected"), T_975.items())
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-9)


def test_large_degrees_of_freedom_approach_the_normal() -> None:
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959963984540054, rel=1e-5)
    assert t_two_sided_p(1.959963984540054, 1e6) == pytest.approx(0.05, rel=1e-4)


def test_spread_is_the_sample_statistics() -> None:
    s = spread([0.5, 0.52, 0.49])
    assert (s.n, s.min, s.max) == (3, 0.49, 0.52)
    assert s.mean == pytest.approx(0.503333333333333)
    # sqrt(((-1/300)^2 + (5/300)^2 + (-4/300)^2) / 2)
    assert s.std == pytest.approx(math.sqrt(42 / 300**2 / 2))
    assert spread([0.4]).std == 0.0
    with pytest.raises(ValueError, match="at least one"):
        spread([])


def test_the_gain_pairs_runs_by_seed() -> None:
    trial = {1: 0.50, 2: 0.52, 3: 0.49}
    baseline = {1: 0.45, 2: 0.47, 3: 0.46}
    g = gain(trial, baseline)
    assert g is not None and g.method == "paired t" and g.n == 3 and g.df == 2
    # differences 0.05, 0.05, 0.03: mean 0.04333, sd 0.011547, se 0.0066667, t = 6.5
    se = math.sqrt(0.0002 / 6 * 4) / math.sqrt(3)
    assert g.mean == pytest.approx(0.13 / 3)
    assert g.low == pytest.approx(0.13 / 3 - T_975[2] * se, rel=1e-9)
    assert g.high == pytest.approx(0.13 / 3 + T_975[2] * se, rel=1e-9)
    # df = 2: P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    assert g.p_value == pytest.approx(1 - 6.5 / math.sqrt(2 + 6.5**2), rel=1e-9)


def test_without_common_seeds_the_gain_is_welchs() -> None:
    trial = {1: 0.50, 2: 0.52, 3: 0.49}
    baseline = {4: 0.45, 5: 0.47}
    g = gain(trial, baseline)
    assert g is not None and g.method == "Welch t" and g.n == 2
    va, vb = (42 / 300**2 / 2) / 3, 0.0002 / 2
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    assert g.df == pytest.approx(df) and g.df == pytest.approx(2.42654, rel=1e-5)
    assert g.mean == pytest.approx(0.503333333 - 0.46)
    half = t_quantile(0.975, df) * se
    assert (g.low, g.high) == (pytest.approx(g.mean - half), pytest.approx(g.mean + half))
    assert g.p_value == pytest.approx(t_two_sided_p(g.mean / se, df))
    # between the df = 2 and df = 3 values for |t| = 3.25
    assert 1 - 3.25 / math.sqrt(2 + 3.25**2) > g.p_value > 0.04736


def test_degenerate_inputs() -> None:
    # every paired difference equal: an exact gain, no interval to speak of
    g = gain({1: 0.6, 2: 0.7}, {1: 0.5, 2: 0.6})
    assert g is not None and g.low == g.high == pytest.approx(0.1) and g.p_value == 0.0
    same = gain({1: 0.5, 2: 0.6}, {1: 0.5, 2: 0.6})
    assert same is not None and same.mean == 0 and same.p_value == 1.0
    assert gain({1: 0.5}, {1: 0.4, 2: 0.3}) is None  # one run: no spread
    with pytest.raises(ValueError, match="df="):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="p="):
        t_quantile(1.0, 3)


SEEDS_A = [0.41, 0.52, 0.48, 0.55, 0.61, 0.47, 0.58, 0.50]  # as a method's best over 8 seeds
SEEDS_B = [0.40, 0.43, 0.39, 0.46, 0.44, 0.51, 0.42, 0.45]
TIED_A = [0.3, 0.3, 0.5, 0.6, 0.6, 0.7, 0.2, 0.9]
TIED_B = [0.1, 0.3, 0.2, 0.2, 0.4, 0.5, 0.6, 0.1]

# scipy 1.x `mannwhitneyu(first, second, alternative=...)` on the same inputs (method "auto":
# exact without ties, the normal approximation with tie and continuity corrections otherwise)
SCIPY_MANN_WHITNEY = [
    # no ties, exact (scipy's documentation example)
    ([19, 22, 16, 29, 24], [20, 11, 17, 12], "two-sided", 17.0, 0.1111111111111111, "exact"),
    ([19, 22, 16, 29, 24], [20, 11, 17, 12], "greater", 17.0, 0.05555555555555555, "exact"),
    ([19, 22, 16, 29, 24], [20, 11, 17, 12], "less", 17.0, 0.9682539682539683, "exact"),
    # 8 against 8, no ties: exact
    (SEEDS_A, SEEDS_B, "greater", 55.0, 0.007381507381507382, "exact"),
    (SEEDS_A, SEEDS_B, "two-sided", 55.0, 0.014763014763014764, "exact"),
    # ties: the normal approximation
    (TIED_A, TIED_B, "two-sided", 49.5, 0.07122746157527438, "normal"),
    (TIED_A, TIED_B, "greater", 49.5, 0.03561373078763719, "normal"),
    (TIED_A, TIED_B, "less", 49.5, 0.97194263798595, "normal"),
]  # fmt: skip


@pytest.mark.parametrize(("first", "second", "alternative", "u", "p", "method"), SCIPY_MANN_WHITNEY)
def test_mann_whitney_u_matches_scipy(
    first: list[float], second: list[float], alternative: str, u: float, p: float, method: str
) -> None:
    result = mann_whitney_u(first, second, alternative)
    assert (result.u, result.method) == (u, method)
    assert result.p_value == pytest.approx(p, rel=1e-9)


def test_the_exact_distribution_counts_every_split() -> None:
    # by brute force over every way of choosing the first group's ranks among 1..7
    import itertools

    n1, n2 = 3, 4
    counts = [0] * (n1 * n2 + 1)
    for chosen in itertools.combinations(range(1, n1 + n2 + 1), n1):
        counts[sum(chosen) - n1 * (n1 + 1) // 2] += 1
    assert _u_frequencies(n1, n2) == counts


def test_mann_whitney_u_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="both groups need a value"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="alternative must be one of"):
        mann_whitney_u([1.0], [2.0], "bigger")
    assert mann_whitney_u([0.5, 0.5], [0.5]).p_value == 1.0
