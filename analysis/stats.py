"""Seed-to-seed statistics: Welch's t-test between the seeds of two cells."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN with fewer than 2 values on either side."""
    a = np.asarray([v for v in a if v is not None and math.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if v is not None and math.isfinite(v)], dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        # Identical seeds on both sides make t undefined; scipy warns and says NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def fmt_p(p: float) -> str:
    """A p-value as text: three significant digits, or n/a."""
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"
