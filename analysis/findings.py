"""The claims of the report, one row each (findings.csv): which comparison, its effect in
percentage points with a 95% CI, raw and corrected p-values of the difference and of the
equivalence test, and the verdict. The report's tables and sentences are rendered from these
rows only, so the two always agree."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.aggregate import fmt_value
from analysis.stats import (
    TOO_FEW,
    Comparison,
    StatsOptions,
    adjust,
    equivalence_p,
    fmt_p,
    verdict,
)

COLUMNS = ["question", "panel", "comparison", "effect_pp", "ci_low_pp", "ci_high_pp", "p",
           "p_adjusted", "p_equivalent", "p_equivalent_adjusted", "verdict", "n_pairs", "n_a",
           "n_b", "test", "correction", "metric", "alpha", "smoothing", "ref_alpha",
           "ref_smoothing", "restates"]
NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Claim:
    """One statement about cell (α, ε) against cell ref; `result` None when nothing is tested
    (the claim says so). A claim that `restates` another question's test (the same cells) is
    no new member of any family: it carries that test's corrected p-value and verdict."""

    question: str
    panel: str
    comparison: str
    cell: tuple[float, float] | None = None
    ref: tuple[float, float] | None = None
    result: Comparison | None = None
    restates: str | None = None

    @property
    def tested(self) -> bool:
        """A member of its question's family."""
        return self.result is not None and self.restates is None


def cell_text(alpha: float, eps: float) -> str:
    """'α=0.4, ε=0.1'."""
    return f"α={fmt_value(alpha)}, ε={fmt_value(eps)}"


def _row(c: Claim, options: StatsOptions) -> dict:
    """The claim's columns before correction (effects in percentage points)."""
    r = c.result
    cell, ref = c.cell or (math.nan, math.nan), c.ref or (math.nan, math.nan)
    return {"question": c.question, "panel": c.panel, "comparison": c.comparison,
            "effect_pp": math.nan if r is None else 100 * r.effect,
            "ci_low_pp": math.nan if r is None else 100 * r.ci_low,
            "ci_high_pp": math.nan if r is None else 100 * r.ci_high,
            "p": math.nan if r is None else r.p, "p_adjusted": math.nan,
            "p_equivalent": math.nan if r is None else equivalence_p(r, options.delta),
            "p_equivalent_adjusted": math.nan, "verdict": NOT_TESTED,
            "n_pairs": 0 if r is None else r.n_pairs, "n_a": 0 if r is None else r.n_a,
            "n_b": 0 if r is None else r.n_b, "test": "none" if r is None else r.test,
            "correction": "none", "metric": options.metric,
            "alpha": cell[0], "smoothing": cell[1], "ref_alpha": ref[0], "ref_smoothing": ref[1],
            "restates": c.restates or ""}


def _family_key(c: Claim, options: StatsOptions) -> tuple:
    """Which tests are corrected together."""
    return (c.panel,) if options.family == "panel" else (c.question, c.panel)


def _correct_families(claims: list[Claim], rows: list[dict], options: StatsOptions) -> None:
    """Adjust the p-values of each family (Holm 1979 or Benjamini & Hochberg 1995) and word
    the verdicts, in place. The equivalence p-values of a family are adjusted by the same
    correction over the same members: "no detectable difference" is held to the level
    (family-wise or false discovery rate) that "better" and "worse" are."""
    families: dict[tuple, list[int]] = {}
    for i, c in enumerate(claims):
        if c.tested:
            families.setdefault(_family_key(c, options), []).append(i)
    for key, members in families.items():
        adjusted, equivalent = (adjust(np.array([rows[i][k] for i in members]),
                                       options.correction) for k in ("p", "p_equivalent"))
        m = int(np.isfinite(adjusted).sum())
        scope = "panel" if options.family == "panel" else f"{key[0]}, panel"
        for i, p_adj, p_eq in zip(members, adjusted, equivalent):
            rows[i] |= {"p_adjusted": float(p_adj), "p_equivalent_adjusted": float(p_eq),
                        "verdict": verdict(claims[i].result, float(p_adj), float(p_eq),
                                           options),
                        "correction": f"{options.correction_name} over {m} tests ({scope})"}


def _copy_restated(claims: list[Claim], rows: list[dict]) -> None:
    """Give each restating claim the corrected p-value and verdict of the test it restates."""
    tested = {(c.question, c.panel, c.cell, c.ref): rows[i]
              for i, c in enumerate(claims) if c.tested}
    for c, row in zip(claims, rows):
        if c.restates and c.result is not None:
            source = tested[(c.restates, c.panel, c.cell, c.ref)]
            row |= {k: source[k] for k in ("p_adjusted", "p_equivalent_adjusted", "verdict",
                                           "correction")}


def correct(claims: list[Claim], options: StatsOptions) -> pd.DataFrame:
    """The findings table: every claim with its corrected p-value and verdict."""
    rows = [_row(c, options) for c in claims]
    _correct_families(claims, rows, options)
    _copy_restated(claims, rows)
    return pd.DataFrame(rows, columns=COLUMNS)


def fmt_pp(v: float) -> str:
    """A difference in percentage points, signed, or n/a."""
    return "n/a" if not math.isfinite(v) else f"{v:+.2f} pp"


def fmt_ci(low: float, high: float) -> str:
    """A 95% CI in percentage points, or n/a (fewer than 2 replicates, or every pair
    differing alike: see analysis.stats._t_interval)."""
    return "n/a" if not math.isfinite(low) else f"[{low:+.2f}, {high:+.2f}]"


def markdown(rows: pd.DataFrame, options: StatsOptions, with_panel: bool = False) -> str:
    """Claims as a Markdown table (the report's only way of stating a test); the panel as a
    first column `setting` when the table spans panels."""
    rows = rows.reset_index(drop=True)
    table = pd.DataFrame({
        "comparison": rows["comparison"], "effect": rows["effect_pp"].map(fmt_pp),
        "95% CI (pp)": [fmt_ci(lo, hi) for lo, hi in zip(rows["ci_low_pp"], rows["ci_high_pp"])],
        "p": rows["p"].map(fmt_p), f"p ({options.correction_name})": rows["p_adjusted"].map(fmt_p),
        equivalence_header(options): rows["p_equivalent_adjusted"].map(fmt_p),
        "verdict": rows["verdict"], "pairs": rows["n_pairs"], "test": rows["test"]})
    if with_panel:
        table.insert(0, "setting", rows["panel"].to_numpy())
    return table.to_markdown(index=False, disable_numparse=True)


def equivalence_header(options: StatsOptions) -> str:
    """The claims tables' column of the corrected equivalence p-value."""
    return f"p within ±{100 * options.delta:g} pp ({options.correction_name})"


def counts(rows: pd.DataFrame) -> dict[str, int]:
    """How many tested claims got each verdict."""
    tested = rows[(rows["restates"] == "") & (rows["verdict"] != NOT_TESTED)]
    found = tested["verdict"].value_counts()
    return {v: int(found.get(v, 0)) for v in
            ("better", "worse", "no detectable difference", TOO_FEW, "undecided")}


def summary_sentence(rows: pd.DataFrame, options: StatsOptions) -> str:
    """'Holm-corrected, 24 comparisons: 1 better, 0 worse, ...' for one question and panel."""
    n = counts(rows)
    total = sum(n.values())
    if total == 0:
        return "Nothing to test."
    undecided = n["undecided"] + n[TOO_FEW]
    return (f"{options.correction_name}-corrected, {total} comparisons: {n['better']} better, "
            f"{n['worse']} worse, {n['no detectable difference']} no detectable difference "
            f"(within ±{100 * options.delta:g} pp, p < {options.level:g} after the same "
            f"correction), {undecided} undecided ({n[TOO_FEW]} with too few seeds).")
