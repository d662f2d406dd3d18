"""The statistics behind the claims, against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.aggregate import Panel, variance_split
from analysis.errors import AnalysisError
from analysis.stats import (
    EXACT_MAX_PAIRS,
    MONTE_CARLO_FLIPS,
    TOO_FEW,
    Comparison,
    StatsOptions,
    adjust,
    benjamini_hochberg,
    compare,
    draw_by_setting,
    equivalence_p,
    holm,
    paired_t,
    sign_flip_equivalence,
    sign_flip_p,
    variance_components,
    verdict,
    welch,
    welch_equivalence,
)


def test_paired_t_matches_scipy_and_its_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.7, 0.01, 8), rng.normal(0.69, 0.01, 8)
    mean, low, high, p = paired_t(a - b)
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (mean, low, high) == pytest.approx((np.mean(a - b), ci.low, ci.high))
    assert all(math.isnan(v) for v in paired_t(np.array([0.01]))[1:])


def test_welch_matches_scipy_and_its_interval():
    a, b = np.array([0.70, 0.72, 0.71, 0.69]), np.array([0.60, 0.66, 0.65])
    effect, low, high, p = welch(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(res.pvalue) and effect == pytest.approx(a.mean() - b.mean())
    ci = res.confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def test_compare_pairs_on_shared_replicates_only():
    # A large shared seed effect: unpaired it drowns the +1 pp, paired it cancels.
    seed_effect = np.array([0.05, -0.04, 0.02, -0.03, 0.0])
    jitter = np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
    a, b = 0.71 + seed_effect + jitter, 0.70 + seed_effect
    c = compare(a, b)
    assert c.test == "paired sign-flip (exact)" and c.n_pairs == 5
    assert c.effect == pytest.approx(0.01) and c.ci_low > 0.009
    # Every pair favours a: the smallest p 5 pairs can give (2 of 32 sign assignments).
    assert c.p == 2 / 32 and welch(a, b)[3] > 0.5
    a_missing = a.copy()
    a_missing[0] = np.nan
    c = compare(a_missing, b)
    assert c.n_pairs == 4 and c.test == "paired sign-flip (exact; 1 unpaired runs left out)"
    only_a = np.array([0.7, 0.71, np.nan, np.nan])
    only_b = np.array([np.nan, np.nan, 0.69, 0.68])
    c = compare(only_a, only_b)
    assert c.test.startswith("Welch") and c.n_pairs == 0 and c.n == 2
    assert c.p == pytest.approx(stats.ttest_ind([0.7, 0.71], [0.69, 0.68],
                                                equal_var=False).pvalue)
    assert compare(np.array([0.7]), np.array([0.6])).test.startswith("none")


def test_holm_by_hand_and_nan_is_not_a_test():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max.
    expected = [0.03, 0.06, np.nan, 0.06, 0.02]
    np.testing.assert_allclose(holm(p), expected)
    assert holm(np.array([0.6, 0.7]))[1] == 1.0  # capped at 1


def test_benjamini_hochberg_by_hand_and_against_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/1, 4/2, 4/3, 4/4; running min from the top.
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    rng = np.random.default_rng(1)
    q = rng.uniform(0, 0.2, 30)
    np.testing.assert_allclose(adjust(q, "bh"), stats.false_discovery_control(q))
    assert (adjust(q, "holm") >= adjust(q, "bh")).all()


def _c(effect: float, low: float, high: float, n: int = 10) -> Comparison:
    return Comparison(effect, low, high, 0.5, n, n, n, "paired sign-flip (exact)")


def test_verdict_has_three_outcomes_and_needs_enough_pairs():
    """(corrected difference p, corrected equivalence p) decide; the CI is not read."""
    o = StatsOptions()  # Holm, δ = 1 pp, 5 pairs
    assert verdict(_c(0.02, 0.015, 0.025), 0.01, 0.9, o) == "better"
    assert verdict(_c(-0.02, -0.025, -0.015), 0.01, 0.9, o) == "worse"
    assert verdict(_c(0.001, -0.005, 0.007), 0.6, 0.01, o) == "no detectable difference"
    assert verdict(_c(0.001, -0.005, 0.007), 0.6, 0.06, o) == "undecided"
    assert verdict(_c(0.001, -0.005, 0.007), 0.6, math.nan, o) == "undecided"
    assert verdict(_c(0.02, 0.015, 0.025, n=4), 0.001, 0.9, o) == TOO_FEW
    assert verdict(_c(0.0, -0.001, 0.001, n=2), 0.9, 0.001, o) == TOO_FEW


def test_sign_flip_p_matches_scipys_exact_permutation_test():
    rng = np.random.default_rng(5)
    for n in (3, 8, 12):
        a, b = rng.normal(0.7, 0.01, n), rng.normal(0.695, 0.01, n)
        res = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                                     permutation_type="samples", n_resamples=np.inf,
                                     vectorized=True)
        assert sign_flip_p(a - b) == pytest.approx(res.pvalue)


def test_zero_spread_is_not_certainty():
    """Five pairs all +0.28 pp apart (as accuracies print: the differences agree to the 17th
    digit): the t-test said p = 0 and a zero-width CI, hence "better" after any correction.
    The exact test counts the observed assignment: p = 2/32, no CI, no claim at 0.05."""
    a = np.array([0.7012, 0.7112, 0.6512, 0.6812, 0.7312])
    c = compare(a, a - 0.0028)
    assert c.effect == pytest.approx(0.0028) and c.p == 2 / 32
    assert math.isnan(c.ci_low) and math.isnan(c.ci_high)
    o = StatsOptions()
    p_adj = float(holm(np.array([c.p]))[0])  # a family of one: no correction at all
    assert verdict(c, p_adj, 0.9, o) == "undecided"
    # Ten such pairs: the floor is 2/1024, significant where the family allows it.
    ten = np.resize(a, 10) + np.repeat([0.0, 0.001], 5)
    assert compare(ten, ten - 0.0028).p == 2 / 1024
    # No spread under Welch (every run of each cell alike): no t statistic, no p.
    assert all(math.isnan(v) for v in welch(np.full(5, 0.7), np.full(5, 0.69))[1:])


def test_sign_flip_beyond_exact_is_a_fixed_monte_carlo_that_never_says_zero():
    n = EXACT_MAX_PAIRS + 4
    same = np.full(n, 0.003)
    # Only the observed assignment reaches |sum| (its mirror is almost never drawn).
    assert sign_flip_p(same) == 1 / (MONTE_CARLO_FLIPS + 1)
    d = np.random.default_rng(6).normal(0.002, 0.01, n)
    p = sign_flip_p(d)
    assert sign_flip_p(d) == p  # the same on every rerun
    assert p == pytest.approx(stats.ttest_1samp(d, 0).pvalue, abs=0.03)
    assert compare(d, np.zeros(n)).test == "paired sign-flip (Monte Carlo)"


def test_equivalence_is_two_one_sided_tests_against_delta():
    """TOST (Schuirmann 1987): the larger of the one-sided p-values against -δ and +δ."""
    inside = np.array([0.002, -0.001, 0.003, 0.0, 0.001, -0.002, 0.002, 0.001])
    assert sign_flip_equivalence(inside, 0.01) == 1 / 2 ** 8  # all well inside: the floor
    near = inside + 0.009  # centred near +δ: the upper one-sided test fails
    assert sign_flip_equivalence(near, 0.01) > 0.2
    assert sign_flip_equivalence(-near, 0.01) == sign_flip_equivalence(near, 0.01)
    a, b = np.array([0.70, 0.71, 0.72, 0.705]), np.array([0.701, 0.709, 0.718, 0.70])
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 4
    effect, se, df = a.mean() - b.mean(), math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / 3
                                                                             + vb ** 2 / 3)
    lower = stats.t.sf((effect + 0.01) / se, df)
    upper = stats.t.sf((0.01 - effect) / se, df)
    assert welch_equivalence(a, b, 0.01) == pytest.approx(max(lower, upper))
    paired = compare(a, b)
    assert equivalence_p(paired, 0.01) == sign_flip_equivalence(a - b, 0.01)
    assert math.isnan(equivalence_p(compare(np.array([0.7]), np.array([0.6])), 0.01))


@pytest.mark.parametrize("bad", [{"correction": "bonferroni"}, {"family": "study"},
                                 {"delta": 0}, {"min_pairs": 1}, {"level": 1.5}])
def test_bad_options_are_refused(bad):
    key = next(iter(bad))
    with pytest.raises(AnalysisError, match=key):
        StatsOptions(**bad)


def test_variance_components_recover_planted_values():
    rng = np.random.default_rng(2)
    comps = np.array([variance_components(
        rng.normal(0, 0.005, (5, 1)) + rng.normal(0, 0.01, (1, 4)) + rng.normal(0, 0.002, (5, 4)))
        for _ in range(3000)]).mean(axis=0)
    # Method-of-moments estimates are unbiased: their mean over many tables is the truth.
    np.testing.assert_allclose(comps, [0.005 ** 2, 0.01 ** 2, 0.002 ** 2], rtol=0.08)


def test_draw_by_setting_recovers_an_interaction_and_zero_without_one():
    rng = np.random.default_rng(3)

    def cube(sd_dc: float) -> np.ndarray:
        return (rng.normal(0, 0.005, (6, 1, 1)) + rng.normal(0, 0.01, (1, 3, 1))
                + rng.normal(0, 0.01, (1, 1, 8)) + rng.normal(0, sd_dc, (1, 3, 8))
                + rng.normal(0, 0.004, (6, 3, 8)))

    with_it = np.mean([draw_by_setting(cube(0.003)) for _ in range(2000)])
    without = np.mean([draw_by_setting(cube(0.0)) for _ in range(2000)])
    assert with_it == pytest.approx(0.003 ** 2, rel=0.1)
    assert abs(without) < 0.1 * 0.003 ** 2


def _panel(runs: pd.DataFrame) -> Panel:
    cells = runs.groupby(["mixup_alpha", "smoothing"]).size().rename("n").reset_index()
    return Panel({}, "p", "p", runs, cells)


def test_variance_split_says_what_it_cannot_measure():
    rng = np.random.default_rng(4)
    rows = [{"mixup_alpha": a, "smoothing": 0.0, "seed": s, "noise_seed": k,
             "final_test_acc": 0.7 + 0.01 * k + rng.normal(0, 0.002)}
            for a in (0.0, 0.4) for s in range(6) for k in range(3)]
    both = variance_split(_panel(pd.DataFrame(rows)))
    assert both["seeds"] == 6 and both["noise_draws"] == 3 and both["max_runs_per_cell"] == 18
    assert both["sd_noise_draw"] > both["sd_seed"] and "two-way" in both["note"]
    one_draw = variance_split(_panel(pd.DataFrame(rows).query("noise_seed == 0")))
    assert math.isnan(one_draw["sd_noise_draw"]) and "noise draws not measured" in one_draw["note"]
    old = pd.DataFrame(rows).query("noise_seed == 0").drop(columns="noise_seed")
    assert variance_split(_panel(old))["noise_draws"] == 1  # runs before noise_seed: one draw
