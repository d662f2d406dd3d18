"""Divergence as an outcome: what a run whose training collapsed (status "diverged": a
non-finite, exploded or collapsed loss, or training accuracy at chance; src.run.lifecycle)
counts as in every mean, table, pick on validation and paired comparison."""

from __future__ import annotations

import math

import pandas as pd

from analysis.schema import CHANCE_METRICS, METRICS, NUM_CLASSES, VALIDATION_METRICS

DIVERGED = "diverged"


def diverged_value(metric: str, num_classes: float, val_fraction: float) -> float:
    """A diverged run's value of `metric`: chance accuracy, 1/K, for an accuracy the run
    measures (the validation ones only with a validation split); NaN, left out, for the rest
    (loss, ECE, NLL, Brier, memorisation, times), which have no chance level."""
    # Intention to treat (Hollis & Campbell, BMJ 1999): a run is analysed as the setting it
    # was assigned, whatever became of it. Leaving diverged runs out conditions on the outcome:
    # a setting that blows up on its hardest seeds (a large negative ε, say) would be judged on
    # its survivors and look better than one that never fails. A collapsed model predicts no
    # better than chance, so chance is the value it has earned.
    if metric not in CHANCE_METRICS:
        return math.nan
    if metric in VALIDATION_METRICS and not val_fraction > 0:
        return math.nan  # no validation split: nothing was measured, by any run of it
    return 1.0 / num_classes


def num_classes(runs: pd.DataFrame) -> pd.Series:
    """K per run, from the first column of schema.NUM_CLASSES that has it; NaN where none."""
    found = pd.Series(math.nan, index=runs.index)
    for col in reversed(NUM_CLASSES):
        if col in runs:
            known = pd.to_numeric(runs[col], errors="coerce")
            found = known.where(known.notna(), found)
    return found


def is_diverged(runs: pd.DataFrame) -> pd.Series:
    """Whether each run diverged."""
    return runs["status"].eq(DIVERGED)


def intention_to_treat(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with every metric of each diverged run replaced by `diverged_value` (its
    recorded values, from before or at the collapse, are never used)."""
    if runs.empty:
        return runs
    diverged = is_diverged(runs)
    if not diverged.any():
        return runs
    runs = runs.copy()
    rows = runs[diverged]
    k = num_classes(rows)
    val = pd.to_numeric(rows.get("val_fraction", pd.Series(math.nan, index=rows.index)),
                        errors="coerce")
    for m in (m for m in METRICS if m in runs):
        runs.loc[diverged, m] = [diverged_value(m, kk, v) for kk, v in zip(k, val)]
    return runs
