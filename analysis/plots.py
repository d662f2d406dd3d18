"""Figures: ε × α heatmaps, accuracy against noise rate, and mean training curves. Each plot
function returns a matplotlib Figure; `save` writes it as PDF and PNG."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on save
from matplotlib.ticker import MaxNLocator

from analysis.aggregate import Panel, fmt_value
from analysis.questions import METHODS
from analysis.schema import METRICS_LOG
from analysis.selection import HOW, cell_name, choose, fixed_cells, with_methods
from analysis.tables import AXIS_TEXT, Grid
from src.run.records import read_metrics

COLORS = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
DPI = 200         # PNG resolution (the PDF is vector)
FONT = 8          # the smallest text on any figure, in points
TITLE = 9
BAND = "band: mean ± 1 s.d. over seeds"


FORMATS = ("png", "pdf")


def save(fig: Figure, stem: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write `stem`.png (DPI) and `stem`.pdf (fonts embedded as TrueType, as journals ask;
    embedding costs about 0.2 s a figure, which is why a study's own analysis callback may
    leave the PDFs to `python -m analysis`); return the paths, PNG first."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context({"pdf.fonttype": 42}):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, dpi=DPI, bbox_inches="tight")
            out.append(path)
    return out


def noise_text(values: dict) -> str:
    """'clean' for noise rate 0, else e.g. '40% symmetric' (accuracy and noise both in %)."""
    rate = values.get("noise_rate")
    if values.get("noise") == "none" or rate == 0:
        return "clean"
    text = f"{100 * float(rate):g}% {values.get('noise')}"
    if fmt_value(values.get("noise_label_set")) != "-":
        text += f" ({values['noise_label_set']})"
    return text


def _norm(grids: list[Grid]) -> Normalize:
    """One colour scale over every grid of a figure."""
    values = np.concatenate([g.mean.to_numpy(dtype=float).ravel() for g in grids])
    lo, hi = np.nanmin(values), np.nanmax(values)
    pad = 0.5 if lo == hi else 0.0  # a flat grid still maps to a colour
    return Normalize(lo - pad, hi + pad)


def _draw_grid(ax, g: Grid, norm: Normalize, cmap: str):
    """One grid as an image, 'mean ± std (n)' in each cell, the best cell bold."""
    mean = g.mean.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(mean), norm=norm, aspect="auto",
                   cmap=matplotlib.colormaps[cmap].with_extremes(bad="0.88"))
    for (i, j), v in np.ndenumerate(mean):
        if math.isnan(v):
            ax.text(j, i, "not run", ha="center", va="center", fontsize=FONT, color="0.3")
            continue
        r, gr, b, _ = im.cmap(norm(v))
        dark = 0.299 * r + 0.587 * gr + 0.114 * b > 0.5  # dark text on bright cells
        std, d = g.std.iat[i, j], max(1, g.spec.digits - 1)
        spread = "n/a" if math.isnan(std) else f"{std:.{d}f}"
        ax.text(j, i, f"{v:.{d}f}\n± {spread} (n={g.count(i, j)})", ha="center", va="center",
                fontsize=FONT, color="k" if dark else "w",
                fontweight="bold" if g.best.iat[i, j] else None)
    ax.set_xticks(range(mean.shape[1]), [fmt_value(v) for v in g.mean.columns])
    ax.set_yticks(range(mean.shape[0]), [fmt_value(v) for v in g.mean.index])
    ax.set_xlabel("Mixup α")
    ax.set_ylabel(AXIS_TEXT[g.eps_axis][1])
    return im


def heatmap(items: list[tuple[Panel, Grid]], title: str) -> Figure:
    """The grids of one metric for panels that differ in noise rate, side by side on one
    shared colour scale with one labelled colourbar; bright is better."""
    grids = [g for _, g in items]
    first = grids[0]
    ncols = min(3, len(items))
    nrows = math.ceil(len(items) / ncols)
    width = max(g.mean.shape[1] for g in grids)
    height = max(g.mean.shape[0] for g in grids)
    fig = Figure(figsize=(ncols * (1.0 + 1.15 * width) + 1.2, nrows * (0.9 + 0.5 * height) + 0.8),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    norm = _norm(grids)
    cmap = "viridis" if first.spec.higher else "viridis_r"
    for ax, (panel, g) in zip(axes.flat, items):
        im = _draw_grid(ax, g, norm, cmap)
        ax.set_title(noise_text(panel.values), fontsize=TITLE)
    for ax in list(axes.flat)[len(items):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes.ravel().tolist(), label=first.title)
    conv = f", smoothing_to={first.convention}" if first.convention else ""
    fig.suptitle(f"{title}: {first.title}{conv}\ncells: mean ± std (n seeds); "
                 f"{first.bolds[:-1].lower()}", fontsize=TITLE)
    return fig


def choose_per_rate(panels: list[Panel]) -> pd.DataFrame:
    """Per panel (noise rate) and method, one cell: chosen on noisy validation accuracy, or
    without validation data the method's fixed cell (selection.py). Never on test accuracy."""
    fixed = fixed_cells(panels)
    rows = []
    for p in panels:
        for c in choose(p.cells, fixed).to_dict("records"):
            rows.append({"noise_rate": p.values["noise_rate"], "method": c["method"],
                         "mixup_alpha": c["mixup_alpha"], "smoothing": c["smoothing"],
                         "mean": c["final_test_acc_mean"], "std": c["final_test_acc_std"],
                         "n": c["n"], "chosen_by": c["chosen_by"]})
    return pd.DataFrame(rows)


def _ordered(methods) -> list[str]:
    """The four methods in their usual order, then any other."""
    found = set(methods)
    return [m for m in METHODS if m in found] + sorted(found - set(METHODS))


def _how(rows: pd.DataFrame) -> str:
    """How a method's points were chosen, for its legend entry."""
    ways = set(rows["chosen_by"])
    cells = set(zip(rows["mixup_alpha"], rows["smoothing"]))
    fixed_cell = cell_name(*next(iter(cells))) if len(cells) == 1 else None
    if ways == {"only"}:
        return fixed_cell or "one cell per rate"
    if ways <= {"only", "fixed"}:
        return f"{fixed_cell}: {HOW['fixed']}" if fixed_cell else HOW["fixed"]
    if "fixed" in ways:
        return f"{HOW['validation']} where there is a validation split, else fixed"
    return HOW["validation"]


def _band(ax, x, mean, std, color, label: str, marker: str | None = "o") -> None:
    """A line with a shaded ± std band (where there are two or more seeds)."""
    ax.plot(x, mean, marker=marker, color=color, label=label)
    ok = np.isfinite(std)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], (mean - std)[ok], (mean + std)[ok], color=color,
                        alpha=0.2, linewidth=0)


def noise_plot(name: str, chosen: pd.DataFrame) -> Figure:
    """Final test accuracy (%) against noise rate (%), one line per method with a band of one
    standard deviation over seeds; the legend says which (α, ε) each line is and why."""
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for method in _ordered(chosen["method"]):
        rows = chosen[chosen["method"] == method].sort_values("noise_rate")
        _band(ax, 100 * rows["noise_rate"].to_numpy(float), 100 * rows["mean"].to_numpy(float),
              100 * rows["std"].to_numpy(float), COLORS.get(method),
              f"{method} ({_how(rows)})")
    rates = sorted(set(chosen["noise_rate"]))
    ax.set_xticks([100 * r for r in rates],
                  ["clean" if r == 0 else f"{100 * r:g}" for r in rates])
    ax.set_xlabel("noise rate (%)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"{name}\nper method one (α, ε) per noise rate, never chosen on test; {BAND}",
                 fontsize=TITLE)
    ax.legend(fontsize=FONT)
    ax.grid(alpha=0.3)
    return fig


def read_curves(runs: pd.DataFrame, leave_out: frozenset[str] = frozenset()) -> pd.DataFrame:
    """test_acc per epoch of every completed run with a metrics log, with its α and ε; not of
    the run folders in `leave_out` (read from a runs table, which has no per-epoch metrics).
    A diverged run's log stops at its collapse: in a mean per epoch it would change which runs
    the mean is over from one epoch to the next."""
    frames = []
    done = runs[(runs["status"] == "completed") & ~runs["run_dir"].isin(leave_out)]
    for r in done.itertuples():
        recs = read_metrics(Path(r.run_dir) / METRICS_LOG)
        if not recs:
            continue
        f = pd.DataFrame(recs, columns=["epoch", "test_acc"]).dropna()
        frames.append(f.assign(method=r.method, mixup_alpha=r.mixup_alpha, smoothing=r.smoothing,
                               run=r.run_dir))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curve_settings(panel: Panel, limit: int = 8) -> tuple[pd.DataFrame, str]:
    """The cells to draw and what they are: all of them, or with many one per method
    (chosen as for the noise plot)."""
    if len(panel.cells) <= limit:
        return with_methods(panel.cells), "every (α, ε)"
    chosen = choose(panel.cells, fixed_cells([panel]))
    ways = " / ".join(sorted({HOW[w] for w in chosen["chosen_by"]}))
    return chosen, f"one (α, ε) per method: {ways}"


def training_curves(panel: Panel, leave_out: frozenset[str] = frozenset()) -> Figure | None:
    """Test accuracy (%) per epoch, mean over seeds with a ± std band, one line per cell, n the
    runs drawn; None without metrics logs (see `read_curves` for the runs left out)."""
    curves = read_curves(panel.runs, leave_out)
    if curves.empty:
        return None
    settings, what = curve_settings(panel)
    per_method = settings["method"].is_unique
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, s in enumerate(settings.itertuples()):
        c = curves[(curves["mixup_alpha"] == s.mixup_alpha) & (curves["smoothing"] == s.smoothing)]
        by_epoch = c.groupby("epoch")["test_acc"]
        mean, std = by_epoch.mean(), by_epoch.std()
        color = COLORS.get(s.method) if per_method else f"C{i % 10}"
        _band(ax, mean.index.to_numpy(), 100 * mean.to_numpy(), 100 * std.to_numpy(), color,
              f"{s.method} {cell_name(s.mixup_alpha, s.smoothing)} (n={c['run'].nunique()})",
              marker=None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{panel.label}\n{what}; {BAND}", fontsize=TITLE)
    ax.legend(fontsize=FONT, ncol=2 if len(settings) > 4 else 1)
    ax.grid(alpha=0.3)
    return fig
