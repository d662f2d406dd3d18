"""The report's questions as tables (raw fractions): best ε per α, where the combination hurts,
and what choosing by noisy validation costs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.aggregate import Panel, fmt_value
from analysis.stats import welch_p

ACC = "final_test_acc"
SIGNIFICANCE = 0.05


def _best_row(cells: pd.DataFrame, col: str) -> pd.Series | None:
    """The cell with the highest `col` (ties: the smallest ε, then α); None without values."""
    if cells.empty or cells[col].isna().all():
        return None
    return cells.loc[cells[col].idxmax()]


def _verdict(best_eps: float, base: pd.Series | None, p: float, gain: float) -> str:
    """Whether the gain of the best ε over ε = 0 exceeds the seed-to-seed noise."""
    if best_eps == 0:
        return "ε = 0 is best"
    if base is None:
        return "no ε = 0 run at this α"
    if math.isnan(p):
        return "n/a (needs ≥ 2 seeds on both sides)"
    if p < SIGNIFICANCE and gain > 0:
        return f"yes (p < {SIGNIFICANCE})"
    return "no (within seed noise)"


def best_eps(panels: list[Panel]) -> pd.DataFrame:
    """Q1: per panel and α, the best ε by mean final test accuracy, its gain over ε = 0."""
    rows = []
    for p in panels:
        for alpha, cells in p.cells.groupby("mixup_alpha", sort=True):
            best = _best_row(cells, f"{ACC}_mean")
            if best is None:
                continue
            base = p.cell(alpha, 0.0)
            eps = best["smoothing"]
            pval = welch_p(p.values_of(ACC, alpha, eps), p.values_of(ACC, alpha, 0.0)) \
                if base is not None and eps != 0 else math.nan
            gain = best[f"{ACC}_mean"] - base[f"{ACC}_mean"] if base is not None else math.nan
            rows.append({"panel": p.label, "mixup_alpha": alpha, "best_smoothing": eps,
                         "best_mean": best[f"{ACC}_mean"], "best_std": best[f"{ACC}_std"],
                         "best_n": best["n"],
                         "base_mean": np.nan if base is None else base[f"{ACC}_mean"],
                         "base_n": 0 if base is None else base["n"], "gain": gain,
                         "p_value": pval, "exceeds_noise": _verdict(eps, base, pval, gain)})
    return pd.DataFrame(rows)


def best_eps_moves(panels: list[Panel], table: pd.DataFrame) -> pd.DataFrame:
    """Q2: one row per panel: the best ε at each α ('-' where not run), the best (α, ε)."""
    alphas = sorted(set(table["mixup_alpha"])) if not table.empty else []
    rows = []
    for p in panels:
        sub = table[table["panel"] == p.label]
        found = dict(zip(sub["mixup_alpha"], sub["best_smoothing"]))
        row = {"setting": p.label}
        row |= {f"α={fmt_value(a)}": fmt_value(found.get(a)) for a in alphas}
        top = _best_row(p.cells, f"{ACC}_mean")
        row["best overall (α, ε)"] = "n/a" if top is None else \
            f"α={fmt_value(top['mixup_alpha'])}, ε={fmt_value(top['smoothing'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def _alone(singles: dict[str, tuple[tuple[float, float], pd.Series | None]]
           ) -> tuple[str, tuple[float, float], pd.Series] | None:
    """The better of Mixup alone (α, 0) and smoothing alone (0, ε), where either exists:
    its name, its (α, ε) and its cell."""
    found = [(n, key, c) for n, (key, c) in singles.items()
             if c is not None and not math.isnan(c[f"{ACC}_mean"])]
    return max(found, key=lambda f: f[2][f"{ACC}_mean"]) if found else None


def combination_hurts(panels: list[Panel]) -> tuple[pd.DataFrame, int]:
    """Q3: cells with α > 0 and ε > 0 below the better single method; and how many compared."""
    rows, compared = [], 0
    for p in panels:
        for c in p.cells[(p.cells["mixup_alpha"] > 0) & (p.cells["smoothing"] > 0)].itertuples():
            singles = {"mixup": ((c.mixup_alpha, 0.0), p.cell(c.mixup_alpha, 0.0)),
                       "smoothing": ((0.0, c.smoothing), p.cell(0.0, c.smoothing))}
            alone = _alone(singles)
            if alone is None:
                continue
            compared += 1
            name, ref_key, ref = alone
            mix, smo = singles["mixup"][1], singles["smoothing"][1]
            diff = getattr(c, f"{ACC}_mean") - ref[f"{ACC}_mean"]
            if not diff < 0:
                continue
            ref_vals = p.values_of(ACC, *ref_key)
            rows.append({
                "panel": p.label, "mixup_alpha": c.mixup_alpha, "smoothing": c.smoothing,
                "combined_mean": getattr(c, f"{ACC}_mean"), "combined_n": c.n,
                "mixup_alone_mean": np.nan if mix is None else mix[f"{ACC}_mean"],
                "smoothing_alone_mean": np.nan if smo is None else smo[f"{ACC}_mean"],
                "better_alone": name, "diff": diff,
                "p_value": welch_p(p.values_of(ACC, c.mixup_alpha, c.smoothing), ref_vals)})
    return pd.DataFrame(rows), compared


def _pick(cells: pd.DataFrame, col: str) -> pd.Series | None:
    """The cell with the highest mean of `col`."""
    return _best_row(cells, f"{col}_mean") if f"{col}_mean" in cells else None


def val_vs_test(panels: list[Panel]) -> tuple[pd.DataFrame, list[str]]:
    """Q4: the cell noisy validation picks against the cell test accuracy picks, per panel."""
    rows, skipped = [], []
    for p in panels:
        by_val, by_test = _pick(p.cells, "best_val_acc"), _pick(p.cells, ACC)
        if by_val is None or by_test is None:
            skipped.append(p.label)
            continue
        rows.append({
            "panel": p.label, "val_alpha": by_val["mixup_alpha"],
            "val_smoothing": by_val["smoothing"], "val_best_val_acc": by_val["best_val_acc_mean"],
            "val_test_acc_at_best_val": by_val["test_acc_at_best_val_mean"],
            "val_final_test_acc": by_val[f"{ACC}_mean"], "test_alpha": by_test["mixup_alpha"],
            "test_smoothing": by_test["smoothing"], "test_final_test_acc": by_test[f"{ACC}_mean"],
            "gap_final": by_test[f"{ACC}_mean"] - by_val[f"{ACC}_mean"],
            "gap_at_best_val": by_test[f"{ACC}_mean"] - by_val["test_acc_at_best_val_mean"]})
    return pd.DataFrame(rows), skipped
