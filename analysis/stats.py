"""The statistics behind every claim: paired comparisons between the replicate runs of two
cells, multiple-comparison corrections, three-way verdicts and the split of replicate
variance into training seeds and noise draws."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from analysis.errors import AnalysisError

CORRECTIONS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
FAMILIES = ("question", "panel")
TOO_FEW = "undecided (too few seeds)"


@dataclass(frozen=True)
class StatsOptions:
    """How claims are tested and worded.

    correction: "holm" (family-wise error rate; Holm 1979) or "bh" (false discovery rate;
        Benjamini & Hochberg 1995), applied within each family.
    family: "question" (one family per question and panel) or "panel" (every test of a panel).
    delta: the smallest difference (a fraction: 0.01 = 1 pp) that matters; "no detectable
        difference" needs the equivalence test against ±delta (see `equivalence_p`) to pass
        after the same correction as the difference tests.
    min_pairs: fewer replicate pairs than this and a comparison is undecided (a smoke test).
    level: the significance level after correction.
    metric: the test metric compared.
    """

    correction: str = "holm"
    family: str = "question"
    delta: float = 0.01
    min_pairs: int = 5
    level: float = 0.05
    metric: str = "final_test_acc"

    def __post_init__(self) -> None:
        checks = [("correction", self.correction in CORRECTIONS, ", ".join(CORRECTIONS)),
                  ("family", self.family in FAMILIES, ", ".join(FAMILIES)),
                  ("delta", 0 < self.delta < 1, "a fraction in (0, 1), e.g. 0.01 for 1 pp"),
                  ("min_pairs", self.min_pairs >= 2, "an integer >= 2"),
                  ("level", 0 < self.level < 1, "a number in (0, 1)")]
        for key, ok, allowed in checks:
            if not ok:
                raise AnalysisError(f"statistics option {key}={getattr(self, key)!r} is not "
                                    f"valid: allowed {allowed}. Nothing was written.")

    @property
    def correction_name(self) -> str:
        """The correction as the report names it."""
        return CORRECTIONS[self.correction]


# Up to this many pairs the sign-flip test enumerates every assignment (2^16 = 65,536).
EXACT_MAX_PAIRS = 16
# Beyond, it draws this many assignments with a fixed seed (the same p-value on every rerun)
# and adds the observed one: p-values in steps of 1 / 2^16, as at EXACT_MAX_PAIRS.
MONTE_CARLO_FLIPS = 2 ** 16 - 1
MONTE_CARLO_SEED = 0


@dataclass(frozen=True)
class Comparison:
    """Cell a minus cell b on one metric (fractions): effect, 95% CI, raw p, and the data.

    `a` and `b`: the values the test used (the matched pairs, or each side under Welch), kept
    for the equivalence test, whose margin (StatsOptions.delta) is only known when the claims
    are corrected."""

    effect: float
    ci_low: float
    ci_high: float
    p: float
    n_pairs: int
    n_a: int
    n_b: int
    test: str
    a: tuple[float, ...] = field(default=(), repr=False)
    b: tuple[float, ...] = field(default=(), repr=False)

    @property
    def paired(self) -> bool:
        """Tested on matched pairs (the sign-flip test), not Welch or nothing."""
        return self.test.startswith("paired")

    @property
    def n(self) -> int:
        """Independent replicates behind the test: pairs, or the smaller side under Welch."""
        return self.n_pairs if self.paired else min(self.n_a, self.n_b)


def _t_interval(mean: float, se: float, df: float, level: float = 0.95
                ) -> tuple[float, float, float]:
    """(CI low, CI high, two-sided p) of a t statistic. se = 0 (every replicate alike) gives
    NaN: a zero-width interval and p = 0 would claim a certainty that a few replicates which
    happen to agree cannot give."""
    if se == 0:
        return math.nan, math.nan, math.nan
    # scipy.special's t distribution functions: the same numbers as scipy.stats.t, without
    # its per-call overhead (thousands of comparisons in a study).
    q = float(special.stdtrit(df, 0.5 + level / 2))
    p = 2 * float(special.stdtr(df, -abs(mean / se)))
    return mean - q * se, mean + q * se, p


def _sd(x: np.ndarray) -> float:
    """Sample standard deviation, 0 where it is rounding (below 1e-9 of the largest |value|):
    differences of accuracies that agree to the last printed digit differ in the 17th, and
    must read as no spread, not as a tiny one."""
    sd = float(np.std(x, ddof=1))
    return 0.0 if sd <= 1e-9 * float(np.max(np.abs(x))) else sd


def paired_t(diffs: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, CI low, CI high, p) of the paired t-test (Student 1908) on the differences;
    with fewer than 2 differences, or none that differ, there is neither a CI nor a p-value.
    The analysis reports its CI; its p-values come from the sign-flip test."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = _sd(diffs) / math.sqrt(n)
    return (mean, *_t_interval(mean, se, n - 1))


@functools.lru_cache(maxsize=8)
def sign_assignments(n: int) -> np.ndarray:
    """Rows of ±1, one per sign assignment of n pairs; the first is the observed one (all +1).
    Every one of the 2^n when n <= EXACT_MAX_PAIRS, else MONTE_CARLO_FLIPS drawn with a fixed
    seed after it. Counting the observed assignment among them keeps the test exact (Phipson &
    Smyth 2010) and puts its floor at 2 / 2^n two-sided, never at 0."""
    if n <= EXACT_MAX_PAIRS:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
        return (1 - 2 * bits).astype(np.int8)
    drawn = np.random.default_rng(MONTE_CARLO_SEED).integers(0, 2, (MONTE_CARLO_FLIPS, n),
                                                             dtype=np.int8)
    return np.vstack([np.ones((1, n), np.int8), 1 - 2 * drawn])


def sign_flip_floor(n: int) -> float:
    """The smallest two-sided p-value the sign-flip test can give on n pairs: the observed
    assignment and its mirror, or the observed one alone among the drawn ones."""
    return 2 / 2 ** n if n <= EXACT_MAX_PAIRS else 1 / (MONTE_CARLO_FLIPS + 1)


def _share_reaching(values: np.ndarray, scale: float) -> float:
    """The share of assignments whose statistic reaches the observed one (values[0]); sums
    within rounding of it (1e-9 of the data's scale) count as ties, so the observed assignment
    always counts."""
    return float(np.mean(values >= values[0] - 1e-9 * scale))


def sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of the paired sign-flip permutation test (Fisher 1935; Good 2005,
    ch. 3): under "a and b are exchangeable within each pair" each difference is as likely
    negated, so p is the share of sign assignments whose |sum| reaches the observed one. Exact
    for any distribution symmetric about 0, where the t-test leans on normality that 5 to 10
    pairs cannot check. NaN without differences."""
    if len(diffs) == 0:
        return math.nan
    sums = sign_assignments(len(diffs)) @ np.asarray(diffs, float)
    return _share_reaching(np.abs(sums), float(np.abs(diffs).sum()))


def sign_flip_above(x: np.ndarray) -> float:
    """One-sided p-value of the sign-flip test that x is centred above 0: the share of sign
    assignments whose sum reaches the observed one."""
    sums = sign_assignments(len(x)) @ np.asarray(x, float)
    return _share_reaching(sums, float(np.abs(x).sum()))


def sign_flip_equivalence(diffs: np.ndarray, delta: float) -> float:
    """p-value of two one-sided sign-flip tests (TOST; Schuirmann 1987) that the paired
    differences are centred inside (-delta, delta): the larger of p(centre > -delta), tested
    on diffs + delta, and p(centre < delta), tested on delta - diffs. NaN without differences.
    """
    if len(diffs) == 0:
        return math.nan
    d = np.asarray(diffs, float)
    return max(sign_flip_above(d + delta), sign_flip_above(delta - d))


def _welch_se_df(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Standard error of mean a - mean b and its Welch-Satterthwaite degrees of freedom."""
    va, vb = _sd(a) ** 2 / len(a), _sd(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se else 1.0
    return se, df


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """(mean a - mean b, CI low, CI high, p) of Welch's t-test (Welch 1947), with the
    Welch-Satterthwaite degrees of freedom; NaN CI and p with fewer than 2 values a side."""
    effect = float(np.mean(a) - np.mean(b)) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return effect, math.nan, math.nan, math.nan
    return (effect, *_t_interval(effect, *_welch_se_df(a, b)))


def welch_equivalence(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """TOST p-value (Schuirmann 1987) of Welch's t: the larger one-sided p against -delta and
    +delta; NaN with fewer than 2 values a side or no spread (see `_t_interval`)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    se, df = _welch_se_df(a, b)
    if se == 0:
        return math.nan
    effect = float(np.mean(a) - np.mean(b))
    return max(float(special.stdtr(df, -(effect + delta) / se)),
               float(special.stdtr(df, -(delta - effect) / se)))


def equivalence_p(c: Comparison, delta: float) -> float:
    """Raw p-value of "the effect lies inside ±delta", by the comparison's own test (sign-flip
    on the pairs, else Welch's t); corrected with its family like the difference tests."""
    a, b = np.array(c.a, float), np.array(c.b, float)
    if c.paired:
        return sign_flip_equivalence(a - b, delta)
    return welch_equivalence(a, b, delta) if c.test.startswith("Welch") else math.nan


def compare(a: np.ndarray, b: np.ndarray) -> Comparison:
    """a minus b: one value per replicate (seed, noise_seed) in the same order, NaN where a
    cell lacks it. Paired on the replicates both have (training seed and noise draw cancel):
    the sign-flip test's p-value, the paired t's 95% CI. Welch when fewer than 2 pairs exist."""
    has_a, has_b = ~np.isnan(a), ~np.isnan(b)
    both = has_a & has_b
    n_a, n_b, n_pairs = int(has_a.sum()), int(has_b.sum()), int(both.sum())
    if n_pairs >= 2:
        left_out = n_a + n_b - 2 * n_pairs
        how = "exact" if n_pairs <= EXACT_MAX_PAIRS else "Monte Carlo"
        test = f"paired sign-flip ({how}" + (f"; {left_out} unpaired runs left out)"
                                             if left_out else ")")
        diffs = a[both] - b[both]
        mean, low, high, _ = paired_t(diffs)
        return Comparison(mean, low, high, sign_flip_p(diffs), n_pairs, n_a, n_b, test,
                          tuple(a[both]), tuple(b[both]))
    test = "Welch t (fewer than 2 runs share seed and noise_seed)" if min(n_a, n_b) >= 2 \
        else "none (fewer than 2 runs in a cell)"
    return Comparison(*welch(a[has_a], b[has_b]), n_pairs, n_a, n_b, test,
                      tuple(a[has_a]), tuple(b[has_b]))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values (family-wise error rate under any dependence);
    NaN p-values are not tests and stay NaN."""
    p = np.asarray(p, float)
    out, ok = np.full(p.shape, np.nan), np.isfinite(p)
    m, order = int(ok.sum()), np.argsort(p[ok])
    steps = np.maximum.accumulate((m - np.arange(m)) * p[ok][order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(steps, 1.0)
    out[ok] = adjusted
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini & Hochberg's (1995) step-up adjusted p-values (false discovery rate, valid
    under independence or positive dependence); NaN p-values stay NaN."""
    p = np.asarray(p, float)
    out, ok = np.full(p.shape, np.nan), np.isfinite(p)
    m, order = int(ok.sum()), np.argsort(p[ok])
    scaled = m / np.arange(1, m + 1) * p[ok][order]
    steps = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(steps, 1.0)
    out[ok] = adjusted
    return out


def adjust(p: np.ndarray, correction: str) -> np.ndarray:
    """The p-values of one family adjusted by `correction` ("holm" or "bh")."""
    return holm(p) if correction == "holm" else benjamini_hochberg(p)


def verdict(c: Comparison, p_adjusted: float, p_equivalent_adjusted: float,
            options: StatsOptions) -> str:
    """better / worse when the difference test is significant after correction; "no
    detectable difference" when the equivalence test against ±delta is, after the same
    correction over the same family (so neither kind of claim escapes the correction);
    undecided otherwise, or with fewer than min_pairs."""
    if c.n < options.min_pairs:
        return TOO_FEW
    if p_adjusted < options.level:
        return "better" if c.effect > 0 else "worse"
    if p_equivalent_adjusted < options.level:
        return "no detectable difference"
    return "undecided"


def variance_components(m: np.ndarray) -> tuple[float, float, float]:
    """(seed, noise draw, residual) variances of a complete seeds × noise draws table: the
    method-of-moments estimates of the two-way random-effects model without replication
    (Searle, Casella & McCulloch 1992, ch. 4): E[MS_seed] = σ²_e + J σ²_seed,
    E[MS_draw] = σ²_e + I σ²_draw, E[MS_e] = σ²_e. Not truncated (average, then truncate)."""
    i, j = m.shape
    grand = m.mean()
    ms_seed = j * ((m.mean(axis=1) - grand) ** 2).sum() / (i - 1)
    ms_draw = i * ((m.mean(axis=0) - grand) ** 2).sum() / (j - 1)
    resid = m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + grand
    ms_e = (resid ** 2).sum() / ((i - 1) * (j - 1))
    return (ms_seed - ms_e) / j, (ms_draw - ms_e) / i, ms_e


def draw_by_setting(cube: np.ndarray) -> float:
    """The noise draw × setting interaction variance of a complete seeds × draws × settings
    array (settings fixed, seeds and draws random): (MS_draw×setting - MS_residual) / seeds,
    the residual being the three-way one (Searle, Casella & McCulloch 1992). Not truncated.
    Above zero, which setting is better depends on the noise draw: paired tests over a few
    draws then speak for those draws, not for the noise model."""
    s, k, c = cube.shape
    grand = cube.mean()
    m_s, m_d, m_c = cube.mean(axis=(1, 2)), cube.mean(axis=(0, 2)), cube.mean(axis=(0, 1))
    m_sd, m_sc, m_dc = cube.mean(axis=2), cube.mean(axis=1), cube.mean(axis=0)
    r_dc = m_dc - m_d[:, None] - m_c[None, :] + grand
    resid = (cube - m_sd[:, :, None] - m_sc[:, None, :] - m_dc[None, :, :] + m_s[:, None, None]
             + m_d[None, :, None] + m_c[None, None, :] - grand)
    ms_dc = s * (r_dc ** 2).sum() / ((k - 1) * (c - 1))
    ms_e = (resid ** 2).sum() / ((s - 1) * (k - 1) * (c - 1))
    return float((ms_dc - ms_e) / s)


def fmt_p(p: float) -> str:
    """A p-value as text: three significant digits, or n/a."""
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"
