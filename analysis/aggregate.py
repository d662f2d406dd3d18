"""Means over replicates per setting, the panels (dataset × model × noise setting) they form,
and how the replicates of a panel vary (training seeds against noise draws)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.outcomes import is_diverged
from analysis.schema import (
    BASE_KEYS,
    CONFIG_PREFIX,
    GRID_KEYS,
    METRICS,
    REPLICATE_KEYS,
    config_columns,
)
from analysis.stats import draw_by_setting, variance_components
from src.config import BATCHABLE_KEYS

PANEL_HEAD = ("dataset", "model", "noise", "noise_rate", "noise_label_set")
NO_NOISE_SEED = -1  # old runs without `noise_seed`: one (unknown) noise draw


def group_keys(done: pd.DataFrame) -> list[str]:
    """The base keys plus every config column (and the study) that varies across runs."""
    # Studies differ in settings results.json does not record (learning rate, widths), so the
    # seeds of two studies are never pooled: `experiment` is a key when several are read.
    base = [k for k in BASE_KEYS if k in done]
    extra = config_columns(done.columns) + ["experiment"]
    varying = [c for c in extra if c in done and c not in base and c not in REPLICATE_KEYS
               and done[c].nunique(dropna=False) > 1 and not _set_by_cell(done, c)]
    return base + varying


# Settings that may differ within one grid of runs trained together (src.config
# BATCHABLE_KEYS): where one is a function of the cell it belongs to the cell.
CELL_SETTINGS = frozenset(CONFIG_PREFIX + k for k in BATCHABLE_KEYS)


def _set_by_cell(done: pd.DataFrame, column: str) -> bool:
    """Whether a cell-level setting is a function of the grid cell (α, ε) alone, e.g. a
    warm-up only negative ε gets (the answer study's smoothing_start_epoch): part of what a
    cell is, not a panel of its own, which would part ε < 0 from the ε = 0 it is compared
    with. Other settings (a learning rate, a width) always make panels."""
    cell = [k for k in ("mixup_alpha", "smoothing") if k in done]
    if column not in CELL_SETTINGS or len(cell) < 2:
        return False
    return bool(done.groupby(cell, dropna=False)[column].nunique(dropna=False).le(1).all())


def _listed(values: pd.Series) -> str:
    """The distinct values of a column, sorted, as '0,1,2'."""
    return ",".join(fmt_value(v) for v in sorted(set(values.dropna())))


def summarise(done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per setting: n replicate runs (every seed and noise draw), how many of them
    diverged, the seeds and noise seeds seen, and mean, std (ddof=1) and count of every metric
    (a diverged run's values as analysis.outcomes gives them: counted at chance, or left out
    of the count)."""
    if "status" in done:
        done = done.assign(_diverged=is_diverged(done))
    named: dict[str, tuple[str, Any]] = {
        "n": ("seed", "size"),
        "n_diverged": ("_diverged", "sum"),
        "seeds": ("seed", _listed),
        "noise_seeds": ("noise_seed", _listed),
        "experiments": ("experiment", _listed),
    }
    for m in METRICS:
        if m in done:
            named |= {f"{m}_mean": (m, "mean"), f"{m}_std": (m, "std"), f"{m}_n": (m, "count")}
    for column, name in (("experiment", "experiments"), ("noise_seed", "noise_seeds"),
                         ("_diverged", "n_diverged")):
        if column not in done:
            named.pop(name)
    grouped = done.groupby(keys, dropna=False, sort=True)
    return grouped.agg(**named).reset_index()


def fmt_value(v: Any) -> str:
    """A key value as short text: 0.4 not 0.40000, '-' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def replicate_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as replicates (seed, noise_seed) × cells (α, ε); NaN where a run is missing.
    Runs without a `noise_seed` count as one noise draw."""
    reps = runs.assign(noise_seed=runs.get("noise_seed", NO_NOISE_SEED))
    reps["noise_seed"] = reps["noise_seed"].fillna(NO_NOISE_SEED)
    means = reps.groupby([*REPLICATE_KEYS, "mixup_alpha", "smoothing"])[metric].mean()
    return means.unstack(["mixup_alpha", "smoothing"])


@dataclass
class Panel:
    """One dataset × model × noise setting (and any other varying key): an ε × α grid."""

    values: dict[str, Any]
    label: str
    slug: str
    runs: pd.DataFrame      # its completed runs
    cells: pd.DataFrame     # its rows of the summary, one per (α, ε)
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, init=False, repr=False)
    _columns: dict[str, dict] = field(default_factory=dict, init=False, repr=False)
    _keys: set[tuple[float, float]] = field(default_factory=set, init=False, repr=False)

    def replicate_table(self, metric: str) -> pd.DataFrame:
        """`metric` as replicates (seed, noise_seed) × cells (α, ε); empty if not recorded."""
        if metric not in self._tables:
            self._tables[metric] = replicate_table(self.runs, metric) \
                if metric in self.runs else pd.DataFrame()
            self._columns[metric] = {k: self._tables[metric][k].to_numpy(float)
                                     for k in self._tables[metric].columns}
        return self._tables[metric]

    def replicates(self, metric: str, alpha: float, eps: float) -> np.ndarray:
        """One cell's values of `metric`, one per replicate of the panel in the order of
        replicate_table's rows (so two cells' arrays pair up), NaN where missing."""
        table = self.replicate_table(metric)
        found = self._columns[metric].get((alpha, eps))
        return found if found is not None else np.full(len(table), np.nan)

    def has_cell(self, alpha: float, eps: float) -> bool:
        """Whether the panel ran (α, ε)."""
        if not self._keys:
            self._keys.update(zip(self.cells["mixup_alpha"], self.cells["smoothing"]))
        return (alpha, eps) in self._keys


def _label(values: dict[str, Any], shown: list[str]) -> str:
    """Readable panel name: 'digits / cnn / symmetric 0.4' plus any other varying key."""
    noise = "no noise" if values.get("noise") == "none" else \
        f"{values.get('noise')} {fmt_value(values.get('noise_rate'))}"
    parts = [fmt_value(values.get("dataset")), fmt_value(values.get("model")), noise]
    if fmt_value(values.get("noise_label_set")) != "-":
        parts.append(f"labels {values['noise_label_set']}")
    # A key the panel's runs lack (another noise model's option) says nothing about it.
    parts += [f"{k}={fmt_value(values[k])}" for k in shown if fmt_value(values[k]) != "-"]
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


def distinguishing(rows: pd.DataFrame, keys: list[str], head: Sequence[str] = PANEL_HEAD
                   ) -> list[str]:
    """The keys beyond `head` (dataset/model/noise) that a label must show: those that part
    rows the head and the keys already shown do not (a dataset's normalisation, a model's
    widths or a noise model's options follow from its name wherever the study has one value
    per name)."""
    by = [k for k in head if k in keys]
    shown: list[str] = []
    for k in (k for k in keys if k not in head):
        within = rows.groupby(by + shown, dropna=False)[k].nunique(dropna=False) if by + \
            shown else pd.Series([rows[k].nunique(dropna=False)])
        if within.gt(1).any():
            shown.append(k)
    return shown


def one_validation(cells: pd.DataFrame) -> pd.DataFrame:
    """A panel's cells with `final_val_acc` kept only where every run with a `best_val_acc` has
    one (runs written before the key and without a validation log lack it): the panel's picks
    then all read the same accuracy (analysis.questions.validation_metric), never one per
    subset of cells, and no cell mean stands on part of its runs."""
    n, ref = "final_val_acc_n", "best_val_acc_n"
    if n in cells and ref in cells and (cells[n].fillna(0) < cells[ref].fillna(0)).any():
        return cells.assign(final_val_acc_mean=math.nan)
    return cells


def make_panels(done: pd.DataFrame, summary: pd.DataFrame, keys: list[str]) -> list[Panel]:
    """Split runs and summary (both with `_panel` ids) into panels, in sorted order."""
    pkeys = panel_keys(keys)
    groups = list(summary.groupby("_panel", sort=True))
    values = [{k: cells[k].iloc[0] for k in pkeys} for _, cells in groups]
    # Judged as the labels print them, so that two panels never print alike.
    printed = pd.DataFrame([{k: fmt_value(v[k]) for k in pkeys} for v in values],
                           columns=pkeys)
    labels = [_label(v, distinguishing(printed, pkeys)) for v in values]
    if len(set(labels)) < len(labels):  # a head key printed alike: show every varying key
        varying = [k for k in pkeys if k not in PANEL_HEAD and printed[k].nunique() > 1]
        labels = [_label(v, varying) + f" / panel {i + 1}" for i, v in enumerate(values)]
    runs = dict(iter(done.groupby("_panel")))
    panels = []
    for (pid, cells), v, label in zip(groups, values, labels):
        cells = one_validation(cells.sort_values(["smoothing", "mixup_alpha"])
                               ).reset_index(drop=True)
        panels.append(Panel(v, label, slug(label), runs[pid], cells))
    return panels


def _cube(table: pd.DataFrame) -> np.ndarray:
    """The replicate table as seeds × noise draws × cells, NaN where a run is missing."""
    seeds, draws = table.index.remove_unused_levels().levels
    full = table.reindex(pd.MultiIndex.from_product([seeds, draws], names=table.index.names))
    return full.to_numpy(float).reshape(len(seeds), len(draws), -1)


def _crossed_components(cube: np.ndarray) -> list[tuple[float, float, float]]:
    """Variance components of every cell whose seeds × noise draws table is complete (after
    dropping seeds with a missing draw) and at least 2 × 2."""
    comps = []
    for c in range(cube.shape[2]):
        grid = cube[:, :, c]
        grid = grid[:, ~np.isnan(grid).all(axis=0)]
        grid = grid[~np.isnan(grid).any(axis=1)]
        if grid.shape[0] >= 2 and grid.shape[1] >= 2:
            comps.append(variance_components(grid))
    return comps


def _draw_by_setting(cube: np.ndarray) -> float:
    """The noise draw × setting variance over the cells that have every replicate; NaN
    with fewer than 2 such cells."""
    complete = cube[:, :, ~np.isnan(cube).any(axis=(0, 1))]
    return draw_by_setting(complete) if complete.shape[2] >= 2 else math.nan


def _pooled_variance(table: pd.DataFrame) -> float:
    """The within-cell variance of the replicates, pooled over cells (ddof = 1 per cell)."""
    cols = [table[c].dropna() for c in table.columns]
    ss = sum(float(((c - c.mean()) ** 2).sum()) for c in cols if len(c) > 1)
    df = sum(len(c) - 1 for c in cols if len(c) > 1)
    return ss / df if df else math.nan


def variance_split(panel: Panel, metric: str = "final_test_acc") -> dict[str, Any]:
    """How much the replicates of a panel vary between training seeds and between noise
    draws (standard deviations of `metric`, fractions), and what could not be measured."""
    table = panel.replicate_table(metric)
    seeds = table.index.get_level_values("seed").nunique() if len(table) else 0
    draws = table.index.get_level_values("noise_seed").nunique() if len(table) else 0
    counts = table.notna().sum() if len(table) else pd.Series([0])
    row = {"panel": panel.label, "seeds": seeds, "noise_draws": draws,
           "min_runs_per_cell": int(counts.min()), "max_runs_per_cell": int(counts.max()),
           "sd_seed": math.nan, "sd_noise_draw": math.nan, "sd_residual": math.nan,
           "sd_draw_x_setting": math.nan}
    if seeds > 1 and draws > 1:
        cube = _cube(table)
        comps = _crossed_components(cube)
        if not comps:
            return row | {"note": "not separable: no cell crosses 2 seeds with 2 noise draws"}
        seed, draw, resid = (max(float(np.mean(c)), 0.0) for c in zip(*comps))
        return row | {"sd_seed": math.sqrt(seed), "sd_noise_draw": math.sqrt(draw),
                      "sd_residual": math.sqrt(resid),
                      "sd_draw_x_setting": math.sqrt(max(_draw_by_setting(cube), 0.0)),
                      "note": f"two-way random effects over {len(comps)} crossed cells"}
    pooled = math.sqrt(_pooled_variance(table)) if len(table) else math.nan
    if seeds > 1:
        return row | {"sd_seed": pooled, "note": "noise draws not measured (one draw): the "
                      "seeds' s.d. holds all run-to-run variation"}
    if draws > 1:
        return row | {"sd_noise_draw": pooled, "note": "training seeds not measured (one "
                      "seed): the draws' s.d. holds all run-to-run variation"}
    return row | {"note": "not measured (one run per cell)"}
