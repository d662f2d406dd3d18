"""Which (α, ε) cell stands for a method where a figure shows one per method: the cell with the
best noisy-validation accuracy, or without validation data a fixed, named cell. Never the best
test accuracy, which would favour methods with more cells (a maximum over more noisy draws)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from analysis.aggregate import Panel
from analysis.findings import cell_text
from analysis.questions import method_of, pick_on_validation

# The augmentation configs, whose α and ε are what a study runs when it does not sweep them.
AUGMENTATION_CONF = Path(__file__).resolve().parents[1] / "conf" / "augmentation"
HOW = {"only": "its only cell", "validation": "chosen on noisy validation accuracy",
       "fixed": "fixed cell, no validation data"}


@cache
def default_cell(method: str) -> tuple[float, float] | None:
    """(α, ε) of conf/augmentation/<method>.yaml, or None without such a config."""
    from omegaconf import OmegaConf

    path = AUGMENTATION_CONF / f"{method}.yaml"
    try:
        conf = OmegaConf.load(path)
        return float(conf.mixup_alpha), float(conf.smoothing)
    except Exception:  # no config of that name, or one without α and ε: use the grid's own
        return None


def with_methods(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with `method` as their α and ε make it (ε < 0 is smoothing too)."""
    return cells.assign(method=[method_of(a, e) for a, e in
                                zip(cells["mixup_alpha"], cells["smoothing"])])


def fixed_cells(panels: list[Panel]) -> dict[str, tuple[float, float]]:
    """Per method, the one cell to show when there is nothing to choose on: among the cells
    run in the most panels, the method's default (α, ε) if it is one, else the first in
    (α, ε) order."""
    cells = pd.concat([with_methods(p.cells)[["method", "mixup_alpha", "smoothing"]]
                       for p in panels])
    counts = cells.value_counts().reset_index(name="panels")
    fixed = {}
    for method, rows in counts.groupby("method", sort=True):
        top = rows[rows["panels"] == rows["panels"].max()]
        pairs = sorted(zip(top["mixup_alpha"], top["smoothing"]))
        default = default_cell(str(method))
        fixed[str(method)] = default if default in pairs else pairs[0]
    return fixed


def choose(cells: pd.DataFrame, fixed: dict[str, tuple[float, float]],
           metric: str = "final_test_acc") -> pd.DataFrame:
    """One summary row per method with a `chosen_by` column ('only', 'validation', 'fixed');
    a method whose fixed cell was not run here is left out."""
    rows = []
    for method, group in with_methods(cells).groupby("method", sort=False):
        if len(group) == 1:
            rows.append(group.iloc[0].copy())
            rows[-1]["chosen_by"] = "only"
        elif (by_val := pick_on_validation(group, metric)) is not None:
            rows.append(by_val.copy())
            rows[-1]["chosen_by"] = "validation"
        else:
            alpha, eps = fixed[str(method)]
            hit = group[(group["mixup_alpha"] == alpha) & (group["smoothing"] == eps)]
            if len(hit):
                rows.append(hit.iloc[0].copy())
                rows[-1]["chosen_by"] = "fixed"
    return pd.DataFrame(rows).reset_index(drop=True)


cell_name = cell_text  # 'α=1, ε=0.1' (analysis.findings)
