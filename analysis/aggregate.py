"""Means over seeds per setting, and the panels (dataset × model × noise setting) they form."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.schema import BASE_KEYS, GRID_KEYS, METRICS, config_columns

PANEL_HEAD = ("dataset", "model", "noise", "noise_rate", "noise_label_set")


def group_keys(done: pd.DataFrame) -> list[str]:
    """The base keys plus every config column (and the study) that varies across runs."""
    # Studies differ in settings results.json does not record (learning rate, widths), so the
    # seeds of two studies are never pooled: `experiment` is a key when several are read.
    base = [k for k in BASE_KEYS if k in done]
    extra = config_columns(done.columns) + ["experiment"]
    varying = [c for c in extra if c in done and c not in base and c != "seed"
               and done[c].nunique(dropna=False) > 1]
    return base + varying


def summarise(done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per setting: n seeds, and mean, std (ddof=1) and count of every metric."""
    named: dict[str, tuple[str, Any]] = {
        "n": ("seed", "size"),
        "seeds": ("seed", lambda s: ",".join(str(v) for v in sorted(s))),
        "experiments": ("experiment", lambda s: ",".join(sorted({str(v) for v in s}))),
    }
    for m in METRICS:
        if m in done:
            named |= {f"{m}_mean": (m, "mean"), f"{m}_std": (m, "std"), f"{m}_n": (m, "count")}
    if "experiment" not in done:
        named.pop("experiments")
    grouped = done.groupby(keys, dropna=False, sort=True)
    return grouped.agg(**named).reset_index()


def fmt_value(v: Any) -> str:
    """A key value as short text: 0.4 not 0.40000, '-' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


@dataclass
class Panel:
    """One dataset × model × noise setting (and any other varying key): an ε × α grid."""

    values: dict[str, Any]
    label: str
    slug: str
    runs: pd.DataFrame      # its completed runs
    cells: pd.DataFrame     # its rows of the summary, one per (α, ε)

    def values_of(self, metric: str, alpha: float, eps: float) -> np.ndarray:
        """The per-seed values of one metric in one cell (empty when the cell has no runs)."""
        r = self.runs
        sel = r[(r["mixup_alpha"] == alpha) & (r["smoothing"] == eps)][metric]
        return sel.dropna().to_numpy(dtype=float)

    def cell(self, alpha: float, eps: float) -> pd.Series | None:
        """The summary row of one cell, or None."""
        c = self.cells
        rows = c[(c["mixup_alpha"] == alpha) & (c["smoothing"] == eps)]
        return None if rows.empty else rows.iloc[0]


def _label(values: dict[str, Any], shown: list[str]) -> str:
    """Readable panel name: 'digits / cnn / symmetric 0.4' plus any other varying key."""
    noise = "no noise" if values.get("noise") == "none" else \
        f"{values.get('noise')} {fmt_value(values.get('noise_rate'))}"
    parts = [fmt_value(values.get("dataset")), fmt_value(values.get("model")), noise]
    if fmt_value(values.get("noise_label_set")) != "-":
        parts.append(f"labels {values['noise_label_set']}")
    parts += [f"{k}={fmt_value(values[k])}" for k in shown]
    return " / ".join(parts)


def slug(label: str) -> str:
    """A file-name-safe version of a panel label."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label.replace(" / ", "__")).strip("_")


def panel_keys(keys: list[str]) -> list[str]:
    """Group keys other than the grid's (method, α, ε)."""
    return [k for k in keys if k not in GRID_KEYS]


def add_panel_ids(done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Number the panels in a `_panel` column (grouping on ids avoids NaN-keyed lookups)."""
    ids = done.groupby(panel_keys(keys), dropna=False, sort=True).ngroup()
    return done.assign(_panel=ids.to_numpy())


def make_panels(done: pd.DataFrame, summary: pd.DataFrame, keys: list[str]) -> list[Panel]:
    """Split runs and summary (both with `_panel` ids) into panels, in sorted order."""
    pkeys = panel_keys(keys)
    # Keys beyond dataset/model/noise go into a label only where panels differ in them.
    shown = [k for k in pkeys if k not in PANEL_HEAD and summary[k].nunique(dropna=False) > 1]
    runs = dict(iter(done.groupby("_panel")))
    panels = []
    for pid, cells in summary.groupby("_panel", sort=True):
        values = {k: cells[k].iloc[0] for k in pkeys}
        label = _label(values, shown)
        cells = cells.sort_values(["smoothing", "mixup_alpha"]).reset_index(drop=True)
        panels.append(Panel(values, label, slug(label), runs[pid], cells))
    return panels
