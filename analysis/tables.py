"""ε × α tables of one panel: cells 'mean ± std (n)' as Markdown and LaTeX, best cell bold."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.aggregate import Panel, fmt_value
from analysis.errors import AnalysisError
from analysis.questions import validation_metric
from analysis.schema import CHANCE_METRICS, EPS_AXES


@dataclass(frozen=True)
class TableMetric:
    """How one metric is tabulated: title, display scale, which way is better, and why."""

    title: str
    scale: float
    higher: bool
    why: str
    note: str = ""
    digits: int = 2

    @property
    def bolds(self) -> str:
        """What the bold cell is, and why."""
        return f"Bold: the {'highest' if self.higher else 'lowest'} mean ({self.why})."


RAW_ECE = ("Raw ECE under label noise mixes the noise with miscalibration (confidence learnt "
           "from noisy labels is judged against clean test labels). ECE after temperature "
           "scaling (final_test_ece_ts) removes the part one scalar can fix only where the "
           "validation labels are clean (no label noise); under noise its temperature is fitted "
           "to the noisy labels and can make test ECE worse (report.md, calibration section).")
# Guo et al. (ICML 2017) fit the temperature on held-out labels from the test distribution. Here
# the validation split carries the training labels' noise: the temperature that fits it makes
# the model as unsure as the noisy labels are, which is less sure than it is on clean test labels.
TS_ECE = ("Temperature (Guo et al., ICML 2017) fitted on the validation split, whose labels carry "
          "the study's label noise: trustworthy only without noise. Under noise it calibrates to "
          "the noisy labels, not the clean test labels, and can be worse than raw ECE "
          "(final_test_ece).")
CALIBRATED = "lower is better: a calibration error"
PROPER = "lower is better: a proper scoring rule, accuracy and calibration together"

# metric -> how it is tabulated (and heat-mapped), in the order the files are written
TABLE_METRICS = {
    "final_test_acc": TableMetric("final test accuracy (%)", 100.0, True, "higher is better"),
    "best_test_acc": TableMetric(
        "best test accuracy (%)", 100.0, True, "higher is better",
        "The best epoch is chosen on the test set: an upper bound, not a result."),
    "final_memorized": TableMetric(
        "memorised: corrupted training labels fitted (%)", 100.0, False,
        "lower is better: fewer noisy labels fitted"),
    "final_test_ece": TableMetric("test ECE, 15 bins (%)", 100.0, False, CALIBRATED, RAW_ECE),
    "final_test_ece_ts": TableMetric(
        "test ECE after temperature scaling, 15 bins (%)", 100.0, False, CALIBRATED, TS_ECE),
    "final_test_ece_over": TableMetric(
        "test ECE, over-confident part (%)", 100.0, False, CALIBRATED, RAW_ECE),
    "final_test_ece_under": TableMetric(
        "test ECE, under-confident part (%)", 100.0, False, CALIBRATED, RAW_ECE),
    "final_test_nll": TableMetric("test NLL (nats)", 1.0, False, PROPER, digits=3),
    "final_test_brier": TableMetric("test Brier score", 1.0, False, PROPER, digits=3),
}

# Row axis -> (symbol, axis label, what it is); schema.EPS_AXES names the columns behind them.
AXIS_TEXT = {
    "smoothing": ("ε", "label smoothing ε", "label smoothing ε as configured"),
    "uniform_mass": ("m", "uniform smoothing mass m",
                     "uniform mass m of the smoothed target (1 − m)·y + m/K"),
}


@dataclass
class Grid:
    """One metric of one panel on the ε (rows) × α (columns) grid, in display units."""

    metric: str
    spec: TableMetric
    eps_axis: str           # "smoothing" or "uniform_mass": what the rows are
    convention: str | None  # the panel's smoothing convention (smoothing_to)
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    best: pd.DataFrame  # bool: the best cell(s)
    bolds: str = ""  # what the bold cell is, and why
    diverged: pd.DataFrame | None = None  # runs per cell that diverged (None: not known)
    picked: bool = False  # bold marks the validation pick (else the best mean of the metric)

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def symbol(self) -> str:
        """The row variable's symbol: ε or m."""
        return AXIS_TEXT[self.eps_axis][0]

    @property
    def axes(self) -> str:
        """What rows and columns are, with the smoothing convention."""
        conv = f" (smoothing_to={self.convention})" if self.convention else ""
        return f"rows: {AXIS_TEXT[self.eps_axis][2]}{conv}; columns: Mixup α"

    @property
    def at_chance(self) -> bool:
        """Whether the metric counts diverged runs (at chance) or leaves them out."""
        return self.metric in CHANCE_METRICS

    def count(self, i: int, j: int) -> str:
        """How many runs cell (i, j) holds: 'n', with any diverged ones named."""
        return count_text(int(self.n.iat[i, j]), 0 if self.diverged is None else
                          int(self.diverged.iat[i, j]), self.at_chance)

    @property
    def empty(self) -> bool:
        """No value anywhere (e.g. memorisation without label noise)."""
        return bool(self.mean.isna().all().all())

    def printed(self, digits: int) -> np.ndarray:
        """The means as they read at `digits` decimals (NaN where there is none)."""
        return np.array([[float(f"{v:.{digits}f}") for v in row]
                         for row in self.mean.to_numpy(dtype=float)]).reshape(self.mean.shape)

    def shown_best(self, digits: int) -> pd.DataFrame:
        """The cells to bold when printed at `digits` decimals: `best`, unless several cells
        are (a tie has no winner): a best mean that another cell prints alike, or a validation
        pick tied with another on validation accuracy."""
        best = self.best.to_numpy(dtype=bool)
        if self.picked:
            return self.best & (best.sum() <= 1)
        shown = self.printed(digits)
        return self.best & (np.isin(shown, shown[best]).sum() <= 1)


def check_eps_axis(eps_axis: str) -> str:
    """The row-axis name, or AnalysisError naming the ones there are."""
    if eps_axis not in EPS_AXES:
        raise AnalysisError(f"eps axis {eps_axis!r} is not one of {', '.join(EPS_AXES)}: "
                            "'smoothing' puts ε as configured on the rows, 'uniform_mass' the "
                            "uniform mass m of (1 − m)·y + m/K")
    return eps_axis


def _pivot(cells: pd.DataFrame, row: str, col: str, scale: float = 1.0) -> pd.DataFrame:
    """One summary column as a row × α frame, both axes in numeric order (negative ε first)."""
    p = cells.pivot(index=row, columns="mixup_alpha", values=col) * scale
    return p.sort_index().sort_index(axis=1)


def _check_rows(panel: Panel, row: str) -> None:
    """Every cell has a row value, and no two cells share (row value, α)."""
    cells = panel.cells
    if row not in cells or cells[row].isna().any():
        raise AnalysisError(f"{panel.label}: some runs have no {row} in their results.json, "
                            "so they cannot be placed on that axis; use --eps-axis smoothing")
    if cells.duplicated([row, "mixup_alpha"]).any():
        raise AnalysisError(f"{panel.label}: several ε share one {row} at one α, so a table on "
                            "that axis would mix settings in a cell; use --eps-axis smoothing")


def grid(panel: Panel, metric: str, eps_axis: str = "smoothing") -> Grid:
    """The ε (or uniform mass) × α grid of `metric` for `panel`."""
    spec, row = TABLE_METRICS[metric], EPS_AXES[check_eps_axis(eps_axis)]
    _check_rows(panel, row)
    cells = panel.cells
    if f"{metric}_mean" not in cells:  # runs written before the metric existed
        cells = cells.assign(**{f"{metric}_mean": np.nan, f"{metric}_std": np.nan,
                                f"{metric}_n": 0})
    mean = _pivot(cells, row, f"{metric}_mean", spec.scale)
    std = _pivot(cells, row, f"{metric}_std", spec.scale)
    n = _pivot(cells, row, f"{metric}_n").fillna(0).astype(int)
    diverged = _pivot(cells, row, "n_diverged").fillna(0).astype(int) \
        if "n_diverged" in cells else None
    best, bolds, picked = _bold(cells, row, metric, spec, mean)
    convention = panel.values.get("smoothing_to")
    return Grid(metric, spec, eps_axis, None if convention is None else str(convention),
                mean, std, n, best, bolds, diverged, picked)


def _bold(cells: pd.DataFrame, row: str, metric: str, spec: TableMetric,
          mean: pd.DataFrame) -> tuple[pd.DataFrame, str, bool]:
    """The cell to bold, why, and whether it is the validation pick. Test accuracy: the cell
    the noisy validation split picks (questions.validation_metric), so that the bold number is
    an honest estimate; without a validation split the best test mean, said to be
    optimistic. Other metrics: the best mean, a description of the table rather than a
    choice."""
    if metric.startswith(("final_test_acc", "best_test_acc")):
        by = validation_metric(cells, metric)
        val = _pivot(cells, row, f"{by}_mean") if f"{by}_mean" in cells else None
        if val is not None and val.notna().any().any():
            return val == val.max().max(), ("Bold: the cell the noisy validation split picks "
                                            f"(highest mean {by}); its test accuracy "
                                            "is the honest estimate of the best setting."), True
        target = mean.max().max()
        return mean == target, ("Bold: the highest test mean, picked on the test set itself "
                                "(no validation split): optimistic."), False
    target = mean.max().max() if spec.higher else mean.min().min()
    return mean == target, spec.bolds, False  # all False when every cell is NaN


def count_text(n: int, diverged: int = 0, at_chance: bool = True) -> str:
    """'n' runs behind a mean, and how its diverged runs entered it: '5, 2 diverged at chance'
    (counted in n) or '3, 2 diverged left out' (not in n)."""
    if not diverged:
        return str(n)
    return f"{n}, {diverged} diverged {'at chance' if at_chance else 'left out'}"


def cell_text(mean: float, std: float, n: int, pm: str = "±", na: str = "n/a",
              digits: int = 2, count: str | None = None) -> str:
    """'mean ± std (n)': std is n/a for a single seed, the whole cell n/a without values;
    `count` in place of n where it says more (see `count_text`)."""
    if n == 0 or math.isnan(mean):
        return na
    s = na if math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} {pm} {s} ({count or n})"


def _texts(g: Grid, pm: str, na: str) -> pd.DataFrame:
    """The grid's cells as text."""
    return pd.DataFrame([[cell_text(g.mean.iat[i, j], g.std.iat[i, j], g.n.iat[i, j], pm, na,
                                    g.spec.digits, g.count(i, j))
                          for j in range(g.mean.shape[1])] for i in range(g.mean.shape[0])],
                        index=g.mean.index, columns=g.mean.columns)


def grid_frame(g: Grid) -> pd.DataFrame:
    """The grid's cells as text with a row-variable column (for W&B and other sinks)."""
    t = _texts(g, "±", "n/a")
    t.columns = [f"α={fmt_value(v)}" for v in t.columns]
    return t.rename_axis(g.symbol).reset_index()


def to_markdown(g: Grid) -> str:
    """The grid as a Markdown table (rows ε or m, columns α), the best cell in bold."""
    t = _texts(g, "±", "n/a").where(~g.shown_best(g.spec.digits), lambda x: "**" + x + "**")
    t.index = [fmt_value(v) for v in t.index]
    t.columns = [f"α={fmt_value(v)}" for v in t.columns]
    t.index.name = g.symbol
    return t.to_markdown(stralign="right")


def latex_escape(text: str) -> str:
    """Escape the LaTeX specials that occur in labels and titles."""
    pairs = (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"),
             ("#", r"\#"), ("×", r"$\times$"), ("±", r"$\pm$"), ("ε", r"$\varepsilon$"),
             ("α", r"$\alpha$"), ("−", "-"), ("·", r"$\cdot$"))
    for a, b in pairs:
        text = text.replace(a, b)
    return text


def to_latex(g: Grid, caption: str, label: str) -> str:
    """The grid as a booktabs LaTeX table, the best cell in \\textbf."""
    t = _texts(g, r"$\pm$", "--")
    sym = r"\varepsilon" if g.eps_axis == "smoothing" else "m"
    t.index = [rf"${sym}={fmt_value(v)}$" for v in t.index]
    t.columns = [rf"$\alpha={fmt_value(v)}$" for v in t.columns]
    bold = g.shown_best(g.spec.digits).to_numpy()
    marks = pd.DataFrame(np.where(bold, "textbf:--rwrap;", ""),
                         index=t.index, columns=t.columns)
    styler = t.style.apply(lambda _: marks, axis=None)
    return styler.to_latex(hrules=True, caption=latex_escape(caption), label=label,
                           position_float="centering")


def replicate_counts(runs: pd.DataFrame) -> tuple[int, int]:
    """(training seeds, noise draws) among `runs`; runs without a noise seed are one draw."""
    seeds = runs["seed"].nunique() if "seed" in runs else 0
    draws = runs["noise_seed"].nunique() if "noise_seed" in runs else 0
    return int(seeds), max(int(draws), 1)


def replicates_text(seeds: int, draws: int, counts) -> str:
    """What n is: 'n = 10 runs (5 seeds × 2 noise draws)', or with cells short of the full
    crossing 'n = 8–10 runs (of 5 seeds × 2 noise draws)'."""
    found = [int(c) for c in counts if c > 0] or [0]
    lo, hi = min(found), max(found)
    crossing = f"{seeds} seed{'s' if seeds != 1 else ''}" + \
        (f" × {draws} noise draws" if draws > 1 else "")
    n = str(hi) if lo == hi else f"{lo}–{hi}"
    of = "" if lo == hi == seeds * draws else "of "
    return f"n = {n} run{'s' if hi != 1 else ''} ({of}{crossing})"


def caption(g: Grid, panel: Panel) -> str:
    """What the table holds: panel, metric, cells, what n counts, and axes."""
    reps = replicates_text(*replicate_counts(panel.runs), g.n.to_numpy().ravel())
    return f"{panel.label}: {g.title}, mean ± std (n); {reps}; {g.axes}{_diverged_note(g)}"


def _diverged_note(g: Grid) -> str:
    """How the table's diverged runs, if any, entered its means."""
    if g.diverged is None or not g.diverged.to_numpy().any():
        return ""
    return ("; diverged runs counted at chance accuracy (1/K)" if g.at_chance else
            "; diverged runs left out (no chance level for this metric)")


def bold_note(g: Grid, digits: int) -> str:
    """What the bold cell is and why, or why no cell is bold."""
    if g.best.to_numpy().any() and not g.shown_best(digits).to_numpy().any():
        if g.picked:
            return "No bold: several cells tie for the best validation accuracy."
        return (f"No bold: the {'highest' if g.spec.higher else 'lowest'} mean is shared by "
                "several cells at the printed precision.")
    return g.bolds or g.spec.bolds


def notes(g: Grid) -> str:
    """What the bold cell is and why, and the metric's caveat."""
    return " ".join(x for x in (bold_note(g, g.spec.digits), g.spec.note) if x)


def file_stem(*parts: str, limit: int = 160) -> str:
    """File name parts joined by '__', shortened with a hash of the whole past `limit`
    characters (panel labels grow with every setting that varies)."""
    stem = "__".join(parts)
    if len(stem) <= limit:
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:10]
    return f"{stem[:limit - 12]}__{digest}"


def write_grid(g: Grid, panel: Panel, folder: Path) -> dict[str, Path]:
    """Write the grid's .md and .tex files; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = file_stem(panel.slug, g.metric)
    text = caption(g, panel)
    md = folder / f"{stem}.md"
    md.write_text(f"**{text}**\n\n{to_markdown(g)}\n\n{notes(g)}\n")
    tex = folder / f"{stem}.tex"
    tex.write_text(to_latex(g, f"{text}. {notes(g)}", f"tab:{stem}"))
    return {"md": md, "tex": tex}
