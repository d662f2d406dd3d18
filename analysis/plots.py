"""Figures: ε × α heatmaps, accuracy against noise rate, and mean training curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on save

from analysis.aggregate import Panel, fmt_value
from analysis.schema import METRICS_LOG
from analysis.tables import Grid
from src.results import read_metrics

METHODS = ("none", "mixup", "smoothing", "mixup_smoothing")
COLORS = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))


def heatmap(g: Grid, panel: Panel, path: Path) -> Path:
    """Means of one grid as an image, a label in each cell, the best one bold."""
    fig = Figure(figsize=(1.2 + 0.9 * g.mean.shape[1], 1.2 + 0.6 * g.mean.shape[0]))
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(g.mean.to_numpy(dtype=float))
    im = ax.imshow(data, cmap="viridis" if g.metric.endswith("acc") else "viridis_r",
                   aspect="auto")
    for (i, j), v in np.ndenumerate(g.mean.to_numpy(dtype=float)):
        if not math.isnan(v):
            r, gr, b, _ = im.cmap(im.norm(v))
            dark = 0.299 * r + 0.587 * gr + 0.114 * b > 0.5  # dark text on bright cells
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="k" if dark else "w", fontweight="bold" if g.best.iat[i, j] else None)
    ax.set_xticks(range(g.mean.shape[1]), [fmt_value(v) for v in g.mean.columns])
    ax.set_yticks(range(g.mean.shape[0]), [fmt_value(v) for v in g.mean.index])
    ax.set_xlabel("Mixup α")
    ax.set_ylabel("label smoothing ε")
    ax.set_title(f"{panel.label}\n{g.title}", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def best_per_rate(panels: list[Panel]) -> pd.DataFrame:
    """Per panel (noise rate) and method, the setting with the highest mean final test acc."""
    rows = []
    for p in panels:
        for method, cells in p.cells.groupby("method"):
            best = cells.loc[cells["final_test_acc_mean"].idxmax()] \
                if cells["final_test_acc_mean"].notna().any() else cells.iloc[0]
            rows.append({"noise_rate": p.values["noise_rate"], "method": method,
                         "mixup_alpha": best["mixup_alpha"], "smoothing": best["smoothing"],
                         "mean": best["final_test_acc_mean"], "std": best["final_test_acc_std"],
                         "n": best["n"], "settings": len(cells)})
    return pd.DataFrame(rows)


def noise_plot(label: str, best: pd.DataFrame, path: Path) -> Path:
    """Final test accuracy (mean ± std over seeds) against noise rate, one line per method."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for method in [m for m in METHODS if m in set(best["method"])] + \
            sorted(set(best["method"]) - set(METHODS)):
        b = best[best["method"] == method].sort_values("noise_rate")
        many = b["settings"].max() > 1
        name = method + (" (best setting per noise rate, by test acc)" if many else "")
        ax.errorbar(b["noise_rate"], 100 * b["mean"], yerr=100 * b["std"].fillna(0),
                    marker="o", capsize=3, label=name, color=COLORS.get(method))
    ax.set_xlabel("noise rate")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(label, fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def read_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """test_acc per epoch of every run with a metrics log, with its α and ε."""
    frames = []
    for r in runs.itertuples():
        recs = read_metrics(Path(r.run_dir) / METRICS_LOG)
        if not recs:
            continue
        f = pd.DataFrame(recs, columns=["epoch", "test_acc"]).dropna()
        frames.append(f.assign(method=r.method, mixup_alpha=r.mixup_alpha, smoothing=r.smoothing,
                               seed=r.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _curve_settings(panel: Panel, limit: int = 8) -> pd.DataFrame:
    """The settings to draw: all of them, or with many the best of each method."""
    cells = panel.cells
    if len(cells) <= limit:
        return cells
    best = cells.sort_values("final_test_acc_mean", ascending=False).groupby("method").head(1)
    return best


def training_curves(panel: Panel, path: Path) -> Path | None:
    """Mean test accuracy per epoch over seeds, one line per setting; None without logs."""
    curves = read_curves(panel.runs)
    if curves.empty:
        return None
    settings = _curve_settings(panel)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for s in settings.itertuples():
        c = curves[(curves["mixup_alpha"] == s.mixup_alpha) & (curves["smoothing"] == s.smoothing)]
        mean = c.groupby("epoch")["test_acc"].mean()
        ax.plot(mean.index, 100 * mean.to_numpy(), color=COLORS.get(s.method), alpha=0.8,
                label=f"{s.method} α={fmt_value(s.mixup_alpha)} ε={fmt_value(s.smoothing)}"
                      f" (n={s.n})")
    subset = "" if len(settings) == len(panel.cells) else " (best setting per method)"
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title(panel.label + subset, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path
