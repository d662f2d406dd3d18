"""The report's questions, answered as claims (see analysis.findings) and descriptive tables.

Every "best" setting is picked on the noisy validation split, never on test accuracy: on the
validation accuracy of the epoch the reported metric is read from (schema.PICKED_ON_BEST_VAL),
so the test accuracy of the picked cell is an honest estimate. A cell picked
on test accuracy is shown only as "optimistic (picked on test)". Comparisons pair the runs of
two cells by replicate (seed, noise_seed). Diverged runs are in both, at the values
analysis.outcomes gives them (chance accuracy)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analysis.aggregate import Panel, fmt_value, variance_split
from analysis.findings import Claim, cell_text, correct
from analysis.schema import PICKED_ON_BEST_VAL
from analysis.stats import Comparison, StatsOptions, compare

BEST_VAL, FINAL_VAL = "best_val_acc", "final_val_acc"
AT_BEST_VAL = "test_acc_at_best_val"
METHODS = ("none", "mixup", "smoothing", "mixup_smoothing")
NO_VAL = "cannot select honestly: no validation split (best_val_acc is null)"


def sign(eps: float) -> str:
    """positive / zero / negative (ε < 0 is generalised label smoothing)."""
    return "zero" if eps == 0 else ("positive" if eps > 0 else "negative")


def method_of(alpha: float, eps: float) -> str:
    """What the values make of a cell: none, mixup, smoothing or mixup_smoothing."""
    return {(False, False): "none", (True, False): "mixup", (False, True): "smoothing",
            (True, True): "mixup_smoothing"}[(alpha > 0, eps != 0)]


def _best(cells: pd.DataFrame, col: str) -> pd.Series | None:
    """The cell with the highest `col`; ties go to the smallest |ε|, then the smallest α."""
    if col not in cells or cells[col].isna().all():
        return None
    values = cells[col].to_numpy(float)
    # lexsort: the last key is the primary one; NaN sorts last (never picked over a value).
    order = np.lexsort((cells["mixup_alpha"].to_numpy(float),
                        np.abs(cells["smoothing"].to_numpy(float)),
                        np.where(np.isnan(values), np.inf, -values)))
    return cells.iloc[order[0]]


def validation_metric(cells: pd.DataFrame, metric: str) -> str:
    """The validation accuracy that picks cells for `metric`: `best_val_acc` for a metric read
    at the best validation epoch, else `final_val_acc`, the last epoch's. Runs recorded before
    `final_val_acc` existed (and runs tables without it) fall back to `best_val_acc` for the
    whole of `cells`, never cell by cell, and the report names what was used."""
    if metric in PICKED_ON_BEST_VAL:
        return BEST_VAL
    final, best = f"{FINAL_VAL}_mean", f"{BEST_VAL}_mean"
    if final in cells and cells[final].notna().any() and (
            best not in cells or (cells[final].notna() | cells[best].isna()).all()):
        return FINAL_VAL
    return BEST_VAL


def pick_on_validation(cells: pd.DataFrame, metric: str) -> pd.Series | None:
    """The cell with the highest mean noisy-validation accuracy (`validation_metric`); None
    without validation."""
    return _best(cells, f"{validation_metric(cells, metric)}_mean")


def pick_on_test(cells: pd.DataFrame, metric: str) -> pd.Series | None:
    """The cell with the highest mean test metric: optimistic, for display only."""
    return _best(cells, f"{metric}_mean")


def best_per_method(panel: Panel, metric: str) -> dict[str, pd.Series]:
    """Per method (none, mixup, smoothing, mixup_smoothing), its cell picked on validation."""
    cells = panel.cells
    kind = np.array([method_of(a, e) for a, e in zip(cells["mixup_alpha"], cells["smoothing"])])
    picks = {m: pick_on_validation(cells[kind == m], metric) for m in METHODS
             if (kind == m).any()}
    return {m: c for m, c in picks.items() if c is not None}


def _compare(panel: Panel, cell: tuple[float, float], ref: tuple[float, float],
             metric: str) -> Comparison:
    """Paired comparison of two cells of a panel on `metric`."""
    return compare(panel.replicates(metric, *cell), panel.replicates(metric, *ref))


def _mean(row: pd.Series | None, metric: str) -> float:
    """A cell's mean of `metric`, NaN when absent."""
    return math.nan if row is None else float(row.get(f"{metric}_mean", math.nan))


def q1_family(panel: Panel, metric: str) -> list[Claim]:
    """Q1's tests: every (α, ε ≠ 0) against (α, 0) at the same α."""
    claims = []
    for c in panel.cells.itertuples():
        a, e = c.mixup_alpha, c.smoothing
        if e != 0 and panel.has_cell(a, 0.0):
            claims.append(Claim("Q1", panel.label, f"α={fmt_value(a)}: ε={fmt_value(e)} vs ε=0",
                                (a, e), (a, 0.0), _compare(panel, (a, e), (a, 0.0), metric)))
    return claims


def _q1_pick(panel: Panel, alpha: float, cells: pd.DataFrame, metric: str
             ) -> tuple[Claim, dict]:
    """The best ε at one α, picked on validation: its claim and its row of best_eps.csv."""
    pick, optimistic = pick_on_validation(cells, metric), pick_on_test(cells, metric)
    val = validation_metric(cells, metric)
    base = cells[cells["smoothing"] == 0]
    base = base.iloc[0] if len(base) else None
    eps = math.nan if pick is None else float(pick["smoothing"])
    row = {"panel": panel.label, "mixup_alpha": alpha, "picked_smoothing": eps,
           "sign": "n/a" if pick is None else sign(eps),
           "picked_on": None if pick is None else val,
           "picked_val_acc": _mean(pick, val), "picked_test_acc": _mean(pick, metric),
           "picked_test_acc_at_best_val": _mean(pick, AT_BEST_VAL),
           "eps0_test_acc": _mean(base, metric),
           "optimistic_smoothing": math.nan if optimistic is None else optimistic["smoothing"],
           "optimistic_test_acc": _mean(optimistic, metric)}
    where = f"α={fmt_value(alpha)}"
    if pick is None:
        return Claim("Q1", panel.label, f"{where}: best ε not picked ({NO_VAL})"), row
    if eps == 0 or base is None:
        what = "ε=0 picked on validation" if eps == 0 else \
            f"best ε on validation (ε={fmt_value(eps)}) has no ε=0 cell to compare with"
        return Claim("Q1", panel.label, f"{where}: {what}"), row
    result = _compare(panel, (alpha, eps), (alpha, 0.0), metric)
    return Claim("Q1", panel.label, f"{where}: best ε on validation (ε={fmt_value(eps)}) vs ε=0",
                 (alpha, eps), (alpha, 0.0), result, restates="Q1"), row


def q1(panel: Panel, metric: str) -> tuple[list[Claim], list[dict]]:
    """Q1: per α, the best ε picked on validation against ε = 0, and the whole family."""
    claims, rows = q1_family(panel, metric), []
    alphas = panel.cells["mixup_alpha"]
    for alpha in sorted(set(alphas)):
        claim, row = _q1_pick(panel, alpha, panel.cells[alphas == alpha], metric)
        claims.append(claim)
        rows.append(row)
    return claims, rows


def q2(panel: Panel, best_rows: list[dict], metric: str) -> tuple[Claim, dict]:
    """Q2: the best (α, ε) of the panel on validation, the sign of its ε, and the best ε at
    each α (one row of the moves table)."""
    pick = pick_on_validation(panel.cells, metric)
    row = {"setting": panel.label} | {f"α={fmt_value(r['mixup_alpha'])}":
                                      fmt_value(r["picked_smoothing"]) for r in best_rows}
    if pick is None:
        return Claim("Q2", panel.label, f"sign of the best ε: not picked ({NO_VAL})"), \
            row | {"best (α, ε) on validation": "n/a", "sign of its ε": "n/a"}
    a, e = float(pick["mixup_alpha"]), float(pick["smoothing"])
    row |= {"best (α, ε) on validation": cell_text(a, e), "sign of its ε": sign(e)}
    text = f"sign of the best ε: {sign(e)} (best on validation: {cell_text(a, e)})"
    if e == 0 or not panel.has_cell(a, 0.0):
        return Claim("Q2", panel.label, text, (a, e)), row
    return Claim("Q2", panel.label, f"{text} vs ε=0", (a, e), (a, 0.0),
                 _compare(panel, (a, e), (a, 0.0), metric), restates="Q1"), row


def q3(panel: Panel, metric: str) -> list[Claim]:
    """Q3: each combined cell (α > 0, ε ≠ 0) against Mixup alone at its α and against
    smoothing alone at its ε: two matched comparisons, never the better one picked after."""
    claims = []
    for c in panel.cells[(panel.cells["mixup_alpha"] > 0) &
                         (panel.cells["smoothing"] != 0)].itertuples():
        a, e = c.mixup_alpha, c.smoothing
        for name, ref in (("Mixup alone", (a, 0.0)), ("smoothing alone", (0.0, e))):
            if panel.has_cell(*ref):
                claims.append(Claim("Q3", panel.label,
                                    f"{cell_text(a, e)} vs {name} ({cell_text(*ref)})",
                                    (a, e), ref, _compare(panel, (a, e), ref, metric)))
    return claims


def q4_family(panel: Panel, metric: str) -> list[Claim]:
    """Q4's tests: every cell against ERM (α = 0, ε = 0)."""
    if not panel.has_cell(0.0, 0.0):
        return []
    return [Claim("Q4", panel.label, f"{cell_text(a, e)} vs ERM", (a, e), (0.0, 0.0),
                  _compare(panel, (a, e), (0.0, 0.0), metric))
            for a, e in zip(panel.cells["mixup_alpha"], panel.cells["smoothing"])
            if (a, e) != (0.0, 0.0)]


def q4(panel: Panel, metric: str) -> tuple[list[Claim], dict | None]:
    """Q4: the cell validation picks (its test accuracy: honest) against the cell test accuracy
    picks (optimistic); the pick against ERM restates its member of the family of every cell
    against ERM (a pick tested on its own would inherit the luck of its runs, which validation
    and test accuracy share)."""
    claims = q4_family(panel, metric)
    by_val, by_test = pick_on_validation(panel.cells, metric), pick_on_test(panel.cells, metric)
    if by_val is None or by_test is None:
        return claims, None
    cell = (float(by_val["mixup_alpha"]), float(by_val["smoothing"]))
    val = validation_metric(panel.cells, metric)
    row = {"panel": panel.label, "val_alpha": cell[0], "val_smoothing": cell[1],
           "picked_on": val, "val_val_acc": _mean(by_val, val),
           "val_test_acc": _mean(by_val, metric),
           "val_test_acc_at_best_val": _mean(by_val, AT_BEST_VAL),
           "test_alpha": by_test["mixup_alpha"], "test_smoothing": by_test["smoothing"],
           "optimistic_test_acc": _mean(by_test, metric),
           "optimism": _mean(by_test, metric) - _mean(by_val, metric)}
    text = f"best on validation ({cell_text(*cell)}) vs ERM"
    if cell == (0.0, 0.0) or not panel.has_cell(0.0, 0.0):
        return claims + [Claim("Q4", panel.label, text + (": it is ERM" if cell == (0.0, 0.0)
                                                          else ": no ERM cell"), cell)], row
    return claims + [Claim("Q4", panel.label, text, cell, (0.0, 0.0),
                           _compare(panel, cell, (0.0, 0.0), metric), restates="Q4")], row


CALIBRATION = ("final_test_ece", "final_test_ece_over", "final_test_ece_under",
               "final_test_ece_ts", "final_test_nll", "final_test_brier")


def calibration(panel: Panel) -> list[dict]:
    """Calibration of the cell each method picks on validation (means over replicates; its
    diverged runs, counted in n and n_diverged, have no calibration and are left out).
    Calibration is read at the last epoch, so the pick is the last epoch's validation."""
    rows = []
    for method, c in best_per_method(panel, "final_test_ece").items():
        rows.append({"panel": panel.label, "method": method, "mixup_alpha": c["mixup_alpha"],
                     "smoothing": c["smoothing"], "n": int(c["n"]),
                     "n_diverged": int(c.get("n_diverged", 0))}
                    | {m: _mean(c, m) for m in CALIBRATION})
    return rows


@dataclass
class Answers:
    """Every claim (corrected) and the descriptive tables behind the report."""

    options: StatsOptions
    findings: pd.DataFrame
    best_eps: pd.DataFrame
    moves: pd.DataFrame
    val_gap: pd.DataFrame
    calibration: pd.DataFrame
    variance: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        """The CSV files: findings.csv and the tables the claims rest on."""
        return {"findings": self.findings, "best_eps": self.best_eps, "best_eps_moves": self.moves,
                "val_vs_test": self.val_gap, "calibration": self.calibration,
                "variance_split": self.variance}


def _narrow(panel: Panel, metric: str) -> Panel:
    """The panel with only the summary columns the questions read (row lookups in a summary
    of every metric's mean, std and count are what a large study's analysis spends its time
    on)."""
    means = [f"{m}_mean" for m in (metric, BEST_VAL, FINAL_VAL, AT_BEST_VAL, *CALIBRATION)]
    keep = ["mixup_alpha", "smoothing", "n", *(c for c in ("n_diverged", *means)
                                                if c in panel.cells)]
    return replace(panel, cells=panel.cells[list(dict.fromkeys(keep))])


def ask(panels: list[Panel], metric: str) -> tuple[list[Claim], dict[str, pd.DataFrame]]:
    """Every claim of every panel (not yet corrected), and the descriptive tables."""
    claims: list[Claim] = []
    tables: dict[str, list[dict]] = {"best_eps": [], "moves": [], "val_gap": [],
                                     "calibration": [], "variance": []}
    for p in (_narrow(p, metric) for p in panels):
        c1, best = q1(p, metric)
        c2, move = q2(p, best, metric)
        c4, gap = q4(p, metric)
        claims += c1 + [c2] + q3(p, metric) + c4
        tables["best_eps"] += best
        tables["moves"].append(move)
        tables["val_gap"] += [gap] if gap else []
        tables["calibration"] += calibration(p)
        tables["variance"].append(variance_split(p, metric))
    return claims, {k: pd.DataFrame(v) for k, v in tables.items()}


def answer(panels: list[Panel], options: StatsOptions | None = None) -> Answers:
    """Answer the questions for every panel, each family corrected as `options` say."""
    options = options or StatsOptions()
    claims, tables = ask(panels, options.metric)
    return Answers(options, correct(claims, options), **tables)
