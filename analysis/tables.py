"""ε × α tables of one panel: cells 'mean ± std (n)' as Markdown and LaTeX, best cell bold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.aggregate import Panel, fmt_value

# metric -> (title, unit scale, whether higher is better)
TABLE_METRICS = {
    "final_test_acc": ("final test accuracy (%)", 100.0, True),
    "best_test_acc": ("best test accuracy (%)", 100.0, True),
    "final_test_ece": ("test ECE, 15 bins (%)", 100.0, False),
    "final_memorized": ("memorised: corrupted training labels fitted (%)", 100.0, False),
}


@dataclass
class Grid:
    """One metric of one panel on the ε (rows) × α (columns) grid, in display units."""

    metric: str
    title: str
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    best: pd.DataFrame  # bool: the best cell(s)

    @property
    def empty(self) -> bool:
        """No value anywhere (e.g. memorisation without label noise)."""
        return bool(self.mean.isna().all().all())


def _pivot(cells: pd.DataFrame, col: str, scale: float = 1.0) -> pd.DataFrame:
    """One summary column as an ε × α frame."""
    p = cells.pivot(index="smoothing", columns="mixup_alpha", values=col) * scale
    return p.sort_index().sort_index(axis=1)


def grid(panel: Panel, metric: str) -> Grid:
    """The ε × α grid of `metric` for `panel`."""
    title, scale, higher = TABLE_METRICS[metric]
    mean = _pivot(panel.cells, f"{metric}_mean", scale)
    std = _pivot(panel.cells, f"{metric}_std", scale)
    n = _pivot(panel.cells, f"{metric}_n").fillna(0).astype(int)
    target = mean.max().max() if higher else mean.min().min()
    best = mean == target  # all False when every cell is NaN (NaN equals nothing)
    return Grid(metric, title, mean, std, n, best)


def cell_text(mean: float, std: float, n: int, pm: str = "±", na: str = "n/a") -> str:
    """'mean ± std (n)': std is n/a for a single seed, the whole cell n/a without values."""
    if n == 0 or math.isnan(mean):
        return na
    s = na if math.isnan(std) else f"{std:.2f}"
    return f"{mean:.2f} {pm} {s} ({n})"


def _texts(g: Grid, pm: str, na: str) -> pd.DataFrame:
    """The grid's cells as text."""
    return pd.DataFrame([[cell_text(g.mean.iat[i, j], g.std.iat[i, j], g.n.iat[i, j], pm, na)
                          for j in range(g.mean.shape[1])] for i in range(g.mean.shape[0])],
                        index=g.mean.index, columns=g.mean.columns)


def grid_frame(g: Grid) -> pd.DataFrame:
    """The grid's cells as text with an ε column (for W&B and other tabular sinks)."""
    t = _texts(g, "±", "n/a")
    t.columns = [f"α={fmt_value(v)}" for v in t.columns]
    return t.rename_axis("ε").reset_index()


def to_markdown(g: Grid) -> str:
    """The grid as a Markdown table (rows ε, columns α), the best cell in bold."""
    t = _texts(g, "±", "n/a").where(~g.best, lambda x: "**" + x + "**")
    t.index = [fmt_value(v) for v in t.index]
    t.columns = [f"α={fmt_value(v)}" for v in t.columns]
    t.index.name = "ε"
    return t.to_markdown(stralign="right")


def latex_escape(text: str) -> str:
    """Escape the LaTeX specials that occur in labels and titles."""
    pairs = (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"),
             ("#", r"\#"), ("×", r"$\times$"), ("±", r"$\pm$"), ("ε", r"$\varepsilon$"),
             ("α", r"$\alpha$"))
    for a, b in pairs:
        text = text.replace(a, b)
    return text


def to_latex(g: Grid, caption: str, label: str) -> str:
    """The grid as a booktabs LaTeX table, the best cell in \\textbf."""
    t = _texts(g, r"$\pm$", "--")
    t.index = [rf"$\varepsilon={fmt_value(v)}$" for v in t.index]
    t.columns = [rf"$\alpha={fmt_value(v)}$" for v in t.columns]
    marks = pd.DataFrame(np.where(g.best.to_numpy(), "textbf:--rwrap;", ""),
                         index=t.index, columns=t.columns)
    styler = t.style.apply(lambda _: marks, axis=None)
    return styler.to_latex(hrules=True, caption=latex_escape(caption), label=label,
                           position_float="centering")


def write_grid(g: Grid, panel: Panel, folder: Path) -> dict[str, Path]:
    """Write the grid's .md and .tex files; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{panel.slug}__{g.metric}"
    caption = f"{panel.label}: {g.title}, mean ± std (n seeds) over ε × α"
    md = folder / f"{stem}.md"
    md.write_text(f"**{caption}**\n\n{to_markdown(g)}\n")
    tex = folder / f"{stem}.tex"
    tex.write_text(to_latex(g, caption, f"tab:{panel.slug}-{g.metric}"))
    return {"md": md, "tex": tex}
