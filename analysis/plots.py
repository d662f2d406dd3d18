"""Figures: ε × α heatmaps, accuracy against noise rate, and mean training curves. Each plot
function returns a matplotlib Figure; `save` writes it as PDF and PNG.

A heatmap's colour is a cell's difference from its panel's ERM cell, on a scale tied to the
replicate noise and stated in its caption; every n says what it counts (seeds × noise draws),
and text wraps to the figure's width so that the grids, not a title, set the canvas."""

from __future__ import annotations

import math
import textwrap
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
from analysis.tables import (
    AXIS_TEXT,
    Grid,
    TableMetric,
    bold_note,
    replicate_counts,
    replicates_text,
)
from src.run.records import read_metrics

COLORS = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
DPI = 200         # PNG resolution (the PDF is vector)
FONT = 8          # the smallest text on any figure, in points
TITLE = 9
BAND = "band: mean ± 1 s.d. over runs"


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


# The heatmap's colour is a cell's difference from its panel's ERM cell as printed, on a scale
# of ±SCALE_SE standard errors of a cell mean: a reader sees at a glance which cells stand out
# of the replicate noise, and cells that print alike are coloured alike.
SCALE_SE = 3
CELL = (0.62, 0.4)      # inches a heatmap cell takes (width, height), mean ± s.d. inside
CELL_WITH_N = 1.0       # a cell's width where it also holds its own n
# What a heatmap's caption adds for a metric that is easily misread.
CAUTION = {"final_test_ece_ts": (
    "Under label noise the temperature is fitted to noisy validation labels and calibrates to "
    "the noise, not to the clean test labels: read raw ECE there (report.md, section 7).")}


def _wrap(text: str, width_in: float, size: float = FONT) -> str:
    """`text` wrapped to `width_in` inches, each of its lines on its own: long labels grow the
    figure downwards, never sideways (a saved figure's canvas takes in all its text)."""
    width = max(20, int(width_in * 72 / (0.6 * size)))
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _digits(g: Grid) -> int:
    """Decimals a heatmap cell prints (one fewer than the tables)."""
    return max(1, g.spec.digits - 1)


def _alike(g: Grid) -> bool:
    """Every value of the grid prints alike: nothing to tell apart, so no colour."""
    shown = g.printed(_digits(g))
    shown = shown[np.isfinite(shown)]
    return bool(shown.size) and bool((shown == shown[0]).all())


def _erm(g: Grid) -> float:
    """The ERM cell's (α = 0, ε = 0) value as printed; NaN where it was not run."""
    if 0.0 in g.mean.index and 0.0 in g.mean.columns:
        return float(g.printed(_digits(g))[g.mean.index.get_loc(0.0), g.mean.columns.get_loc(0.0)])
    return math.nan


def _differences(g: Grid) -> tuple[np.ndarray, bool]:
    """Each cell's printed value minus the reference's (ERM's, else the grid's mean), and
    whether ERM is the reference; zero everywhere when every value prints alike."""
    shown, erm = g.printed(_digits(g)), _erm(g)
    if _alike(g):
        return np.where(np.isfinite(shown), 0.0, np.nan), not math.isnan(erm)
    ref = erm if not math.isnan(erm) else float(np.nanmean(shown))
    return shown - ref, not math.isnan(erm)


def standard_error(grids: list[Grid]) -> float:
    """The typical standard error of a cell mean: the root mean square of s.d. / √n over the
    cells of 2 or more runs (pooled, so cells whose runs happen to agree do not make it zero);
    NaN where no cell has one."""
    found = []
    for g in grids:
        n, sd = g.n.to_numpy(dtype=float), g.std.to_numpy(dtype=float)
        ok = (n >= 2) & np.isfinite(sd)
        found += list(sd[ok] ** 2 / n[ok])
    return math.sqrt(float(np.mean(found))) if found else math.nan


def unit(spec: TableMetric) -> str:
    """The unit of a difference of the metric: pp for percentages, else the title's."""
    if spec.scale == 100.0:
        return "pp"
    return spec.title.rsplit("(", 1)[1].rstrip(")") if spec.title.endswith(")") else ""


def colour_range(grids: list[Grid], differences: list[np.ndarray]) -> tuple[float, str]:
    """Half the colour scale's span (display units) and what it is, in words: SCALE_SE standard
    errors of a cell mean, never finer than one printed digit; without a standard error (one
    run per cell) the largest difference."""
    digits = _digits(grids[0])
    step, u = 10.0 ** -digits, unit(grids[0].spec)
    se = standard_error(grids)
    if se > 0:
        half = max(SCALE_SE * se, step)
        why = (f"{SCALE_SE} s.e. of a cell mean (s.e. {se:.{digits + 1}f} {u}, pooled)"
               if half > step else f"one printed digit ({SCALE_SE} s.e. is less)")
    else:
        found = np.concatenate([np.abs(d[np.isfinite(d)]) for d in differences])
        half = max(float(found.max()) if found.size else 0.0, step)
        why = "the largest difference (" + ("s.e. 0: each cell's runs agree)" if se == 0
                                             else "no s.e.: one run per cell)")
    return half, f"full scale ±{half:.{digits + 1}f} {u} = {why}".replace("  ", " ")


def _cell_text(g: Grid, i: int, j: int, with_n: bool) -> str:
    """'mean\n± s.d.', with '(n=k)' where cells differ in n."""
    d, std = _digits(g), g.std.iat[i, j]
    spread = "n/a" if math.isnan(std) else f"{std:.{d}f}"
    text = f"{g.mean.iat[i, j]:.{d}f}\n± {spread}"
    return f"{text} (n={g.count(i, j)})" if with_n else text


def _uniform_n(g: Grid) -> bool:
    """Every run cell of the grid holds the same plain count (so the panel title can say it)."""
    counts = {g.count(i, j) for (i, j), v in np.ndenumerate(g.mean.to_numpy(dtype=float))
              if not math.isnan(v)}
    return len(counts) <= 1 and all(c.isdigit() for c in counts)


def _draw_grid(ax, g: Grid, differences: np.ndarray, norm: Normalize, cmap, with_n: bool):
    """One grid as coloured cells (difference from the reference), 'mean ± s.d.' in each, the
    bold cell (tables.Grid.shown_best) in bold; 'not run' on grey."""
    mesh = ax.pcolormesh(np.ma.masked_invalid(differences), norm=norm, cmap=cmap)
    rows, cols = differences.shape
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)  # the first row (the most negative ε) on top, as in the tables
    bold = g.shown_best(_digits(g)).to_numpy(dtype=bool)
    for (i, j), v in np.ndenumerate(differences):
        if math.isnan(v):
            ax.text(j + 0.5, i + 0.5, "not run", ha="center", va="center", fontsize=FONT,
                    color="0.3")
            continue
        r, gr, b, _ = cmap(norm(v))
        dark = 0.299 * r + 0.587 * gr + 0.114 * b > 0.5  # dark text on bright cells
        ax.text(j + 0.5, i + 0.5, _cell_text(g, i, j, with_n), ha="center", va="center",
                fontsize=FONT, color="k" if dark else "w",
                fontweight="bold" if bold[i, j] else None)
    ax.set_xticks(np.arange(cols) + 0.5, [fmt_value(v) for v in g.mean.columns])
    ax.set_yticks(np.arange(rows) + 0.5, [fmt_value(v) for v in g.mean.index])
    ax.tick_params(length=0)
    ax.set_xlabel("Mixup α")
    ax.set_ylabel(AXIS_TEXT[g.eps_axis][1])
    return mesh


def _reference_text(g: Grid, erm: list[bool]) -> str:
    """What the colour is measured from."""
    cell = f"ERM (α=0, {g.symbol}=0)"
    if all(erm):
        return f"the panel's {cell}"
    return f"the panel's {cell}, or its mean cell where ERM was not run"


def _caption(grids: list[Grid], erm: list[bool], scale: str) -> str:
    """What the cells, the colour and the bold mean, in a few sentences."""
    g, alike = grids[0], [_alike(x) for x in grids]
    better = "blue: better, red: worse"
    colour = (f"Colour: difference from {_reference_text(g, erm)} as printed ({better}); "
              f"{scale}.")
    if any(alike):
        colour = ("No colour: every value prints alike. " if all(alike) else
                  "No colour in a panel whose values all print alike. ") + colour
    conv = f" Rows: {g.symbol} as configured, smoothing_to={g.convention}." \
        if g.convention else ""
    caution = f" {CAUTION[g.metric]}" if g.metric in CAUTION else ""
    bold = " ".join(dict.fromkeys(_bold_text(x) for x in grids))  # each panel's, once
    return f"Cells: mean ± s.d. {colour} {bold}{conv}{caution}"


def _bold_text(g: Grid) -> str:
    """What the bold cell is, in a caption's few words."""
    if g.picked and g.shown_best(_digits(g)).to_numpy().any():
        return ("Bold: the cell the noisy validation split picks (its test accuracy is the "
                "honest estimate).")
    return bold_note(g, _digits(g))


def _panel_title(noise: str, reps: str, width_in: float) -> str:
    """'40% symmetric: n = 10 runs (5 seeds × 2 noise draws)', on two lines where one is too
    narrow."""
    one = f"{noise}: {reps}"
    return one if _wrap(one, width_in) == one else _wrap(f"{noise}\n{reps}", width_in)


def heatmap(items: list[tuple[Panel, Grid]], title: str) -> Figure:
    """The grids of one metric for panels that differ in noise rate, side by side, coloured by
    each cell's difference from its panel's ERM cell on one scale tied to the replicate noise
    (colour_range), with one labelled colourbar; blue is better. A one-line title, what n
    counts above each panel, and a short caption below."""
    grids = [g for _, g in items]
    first = grids[0]
    differences = [_differences(g) for g in grids]
    half, scale = colour_range(grids, [d for d, _ in differences])
    norm = Normalize(-half, half)
    cmap = matplotlib.colormaps["RdBu" if first.spec.higher else "RdBu_r"].with_extremes(
        bad="0.88")
    with_n = not all(_uniform_n(g) for g in grids)
    ncols = min(3, len(items))
    nrows = math.ceil(len(items) / ncols)
    shared = all(g.mean.index.equals(first.mean.index) for g in grids)  # one ε axis a row
    cells_in = max(g.mean.shape[1] for g in grids) * (CELL_WITH_N if with_n else CELL[0])
    panel_in = cells_in + 0.6                                     # the cells, the ε ticks
    width = max(4.5, panel_in + (ncols - 1) * (cells_in + (0.15 if shared else 0.6)) + 0.9)
    caption = _wrap(_caption(grids, [e for _, e in differences], scale), width)
    rows = max(g.mean.shape[0] for g in grids)
    height = nrows * (rows * CELL[1] + 1.0) + 0.35 + 0.16 * (caption.count("\n") + 1)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, (ax, (panel, g), (diff, _)) in enumerate(zip(axes.flat, items, differences)):
        mesh = _draw_grid(ax, g, diff, norm, cmap, with_n)
        if shared and k % ncols:  # the row's first panel labels the ε axis for all
            ax.set_ylabel("")
            ax.tick_params(labelleft=False)
        reps = replicates_text(*replicate_counts(panel.runs), g.n.to_numpy().ravel())
        ax.set_title(_panel_title(noise_text(panel.values), reps, cells_in), fontsize=FONT)
    for ax in list(axes.flat)[len(items):]:
        ax.set_visible(False)
    bar = fig.colorbar(mesh, ax=axes.ravel().tolist(), extend="both", shrink=0.9)
    bar.set_label(f"difference from ERM ({unit(first.spec)})" if all(e for _, e in differences)
                  else f"difference ({unit(first.spec)})", fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT)
    fig.suptitle(_wrap(f"{title}: {first.title}", width, TITLE), fontsize=TITLE)
    fig.supxlabel(caption, fontsize=FONT)
    return fig


def choose_per_rate(panels: list[Panel]) -> pd.DataFrame:
    """Per panel (noise rate) and method, one cell: chosen on noisy validation accuracy, or
    without validation data the method's fixed cell (selection.py). Never on test accuracy."""
    fixed = fixed_cells(panels)
    rows = []
    for p in panels:
        seeds, draws = replicate_counts(p.runs)
        for c in choose(p.cells, fixed).to_dict("records"):
            rows.append({"noise_rate": p.values["noise_rate"], "method": c["method"],
                         "mixup_alpha": c["mixup_alpha"], "smoothing": c["smoothing"],
                         "mean": c["final_test_acc_mean"], "std": c["final_test_acc_std"],
                         "n": c["n"], "chosen_by": c["chosen_by"], "seeds": seeds,
                         "noise_draws": draws})
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
    reps = replicates_text(int(chosen["seeds"].max()), int(chosen["noise_draws"].max()),
                           chosen["n"])
    ax.set_title(_wrap(f"{name}\nper method one (α, ε) per noise rate, never chosen on test; "
                       f"{BAND}, {reps} per point", 5.4, TITLE), fontsize=TITLE)
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
    counts = []
    for i, s in enumerate(settings.itertuples()):
        c = curves[(curves["mixup_alpha"] == s.mixup_alpha) & (curves["smoothing"] == s.smoothing)]
        by_epoch = c.groupby("epoch")["test_acc"]
        mean, std = by_epoch.mean(), by_epoch.std()
        color = COLORS.get(s.method) if per_method else f"C{i % 10}"
        counts.append(c["run"].nunique())
        _band(ax, mean.index.to_numpy(), 100 * mean.to_numpy(), 100 * std.to_numpy(), color,
              f"{s.method} {cell_name(s.mixup_alpha, s.smoothing)} (n={c['run'].nunique()})",
              marker=None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    reps = replicates_text(*replicate_counts(panel.runs), counts)
    ax.set_title(_wrap(f"{panel.label}\n{what}; {BAND}, {reps} per line", 6.5, TITLE),
                 fontsize=TITLE)
    ax.legend(fontsize=FONT, ncol=2 if len(settings) > 4 else 1)
    ax.grid(alpha=0.3)
    return fig
