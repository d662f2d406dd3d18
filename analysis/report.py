"""report.md: the five questions answered from the data at hand, with numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.aggregate import Panel, fmt_value
from analysis.stats import fmt_p


def pct(v: float) -> str:
    """A fraction as a percentage."""
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def pp(v: float) -> str:
    """A difference of fractions in percentage points, signed."""
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:+.2f} pp"


@dataclass
class Findings:
    """Everything the report says, computed before it is written."""

    paths: Sequence[str]
    n_runs: int
    n_completed: int
    panels: list[Panel]
    tables: dict[str, str]          # panel label -> final test acc ε × α table (Markdown)
    best_eps: pd.DataFrame
    moves: pd.DataFrame
    hurts: pd.DataFrame
    n_compared: int
    val_gap: pd.DataFrame
    val_skipped: list[str]
    problems: pd.DataFrame
    corrupt: int
    figures: list[Path] = field(default_factory=list)


def _md(df: pd.DataFrame) -> str:
    """A small frame as a Markdown table."""
    return df.to_markdown(index=False)


def _header(f: Findings) -> list[str]:
    """What was analysed."""
    return ["# Label smoothing on top of Mixup under noisy labels: analysis", "",
            f"Runs read from: {', '.join(f'`{p}`' for p in f.paths)}.",
            f"{f.n_runs} runs with results, {f.n_completed} completed; {len(f.problems)} "
            "problem runs (section 5). Only completed runs enter tables and means. Accuracies "
            "are final test accuracy, mean ± std over seeds (n = seeds).", ""]


def _tables(f: Findings) -> list[str]:
    """The ε × α table of final test accuracy per setting."""
    out = ["## ε × α: final test accuracy (%)", ""]
    for label, table in f.tables.items():
        out += [f"### {label}", "", table, ""]
    return out + ["Best test accuracy, test ECE and memorisation tables are in `tables/` "
                  "(`.md`, `.tex`), heatmaps and curves in `plots/`.", ""]


def _q1(f: Findings) -> list[str]:
    """Best ε per α, gain over ε = 0 and Welch's test."""
    out = ["## 1. Best ε per Mixup α", ""]
    if f.best_eps.empty:
        return out + ["No completed runs with a final test accuracy.", ""]
    t = pd.DataFrame({
        "setting": f.best_eps["panel"], "α": f.best_eps["mixup_alpha"].map(fmt_value),
        "best ε": f.best_eps["best_smoothing"].map(fmt_value),
        "test acc": f.best_eps["best_mean"].map(pct), "n": f.best_eps["best_n"],
        "ε = 0": f.best_eps["base_mean"].map(pct), "n (ε = 0)": f.best_eps["base_n"],
        "gain": f.best_eps["gain"].map(pp), "Welch p": f.best_eps["p_value"].map(fmt_p),
        "beyond seed noise?": f.best_eps["exceeds_noise"]})
    return out + [_md(t), "", _q1_summary(f.best_eps), ""]


def _q1_summary(b: pd.DataFrame) -> str:
    """One sentence: in how many (setting, α) pairs a positive ε beat ε = 0 beyond noise."""
    tested = b[(b["best_smoothing"] != 0) & b["base_mean"].notna()]
    if tested.empty:
        return "The best ε is 0 (or there is no ε = 0 cell) at every α: no gain to test."
    if tested["p_value"].isna().all():
        return ("No p-value could be computed: Welch's test needs at least 2 seeds in both the "
                "best cell and the ε = 0 cell.")
    sig = tested["exceeds_noise"].str.startswith("yes").sum()
    return (f"A positive ε was best in {len(tested)} of {len(b)} (setting, α) pairs; its gain "
            f"over ε = 0 exceeded seed-to-seed noise (Welch p < 0.05) in {sig}.")


def _q2(f: Findings) -> list[str]:
    """How the best ε moves across settings."""
    out = ["## 2. How the best ε moves across noise levels, datasets and models", ""]
    keys = {"noise rate": "noise_rate", "noise model": "noise", "dataset": "dataset",
            "model": "model", "label set": "noise_label_set"}
    varying = [n for n, k in keys.items()
               if len({fmt_value(p.values.get(k)) for p in f.panels}) > 1]
    fixed = [n for n, k in keys.items() if n not in varying and k != "noise_label_set"]
    out += [_md(f.moves), "", "Cells: the best ε at each α (by mean final test accuracy)."]
    if varying:
        out.append(f"The settings differ in: {', '.join(varying)}.")
    if fixed:
        out.append(f"All runs share one {', '.join(fixed)}: the data cannot say how the best ε "
                   "moves along " + ("that dimension." if len(fixed) == 1 else "those."))
    return out + [""]


def _q3(f: Findings) -> list[str]:
    """Where Mixup + smoothing is worse than the better of the two alone."""
    out = ["## 3. Where Mixup + smoothing does worse than either alone", ""]
    if f.n_compared == 0:
        return out + ["Cannot answer: no setting has a combined cell (α > 0, ε > 0) together "
                      "with Mixup alone (ε = 0) or smoothing alone (α = 0).", ""]
    out.append(f"{f.n_compared} combined cells compared with the better of Mixup alone (same α, "
               "ε = 0) and smoothing alone (α = 0, same ε).")
    if f.hurts.empty:
        return out + ["", "Combination worse than the better single method: none.", ""]
    h = f.hurts
    t = pd.DataFrame({
        "setting": h["panel"], "α": h["mixup_alpha"].map(fmt_value),
        "ε": h["smoothing"].map(fmt_value), "combined": h["combined_mean"].map(pct),
        "n": h["combined_n"], "Mixup alone": h["mixup_alone_mean"].map(pct),
        "smoothing alone": h["smoothing_alone_mean"].map(pct), "better alone": h["better_alone"],
        "difference": h["diff"].map(pp), "Welch p": h["p_value"].map(fmt_p)})
    sig = int((h["p_value"] < 0.05).sum())
    return out + [f"{len(h)} of them do worse ({sig} with Welch p < 0.05):", "", _md(t), ""]


def _q4(f: Findings) -> list[str]:
    """Choosing (α, ε) by noisy validation against choosing by test accuracy."""
    out = ["## 4. Choosing α, ε by noisy validation vs by test accuracy", ""]
    if f.val_gap.empty:
        return out + ["Skipped: no run has a validation split (best_val_acc is null), so "
                      "there is no validation choice to compare.", ""]
    g = f.val_gap
    t = pd.DataFrame({
        "setting": g["panel"],
        "val pick (α, ε)": [f"{fmt_value(a)}, {fmt_value(e)}"
                            for a, e in zip(g["val_alpha"], g["val_smoothing"])],
        "its val acc": g["val_best_val_acc"].map(pct),
        "its test acc at best val": g["val_test_acc_at_best_val"].map(pct),
        "its final test acc": g["val_final_test_acc"].map(pct),
        "test pick (α, ε)": [f"{fmt_value(a)}, {fmt_value(e)}"
                             for a, e in zip(g["test_alpha"], g["test_smoothing"])],
        "test pick final test acc": g["test_final_test_acc"].map(pct),
        "gap (final)": g["gap_final"].map(pp), "gap (at best val)": g["gap_at_best_val"].map(pp)})
    out += [_md(t), "", "Val pick: the cell with the highest mean best_val_acc (noisy labels); "
            "test pick: the highest mean final test accuracy. Gap: the test pick's final test "
            "accuracy minus the val pick's (final, or at its best-validation epoch, i.e. with "
            "early stopping): what a practitioner pays for not seeing test labels."]
    if f.val_skipped:
        out.append(f"No validation split in: {'; '.join(f.val_skipped)}.")
    return out + [""]


def _q5(f: Findings) -> list[str]:
    """The runs that are not in any mean."""
    out = ["## 5. Problem runs (not in any table or mean)", ""]
    if f.problems.empty:
        return out + ["None: every run found completed.", ""]
    counts = f.problems["status"].value_counts().rename_axis("status").reset_index(name="runs")
    out += [_md(counts), "", _md(f.problems[["run_dir", "status", "error"]].fillna("")), ""]
    if f.corrupt:
        out.append(f"{f.corrupt} corrupt results.json skipped.")
    return out + [""]


def write_report(f: Findings, path: Path) -> Path:
    """Write report.md."""
    parts = _header(f)
    if f.panels:
        parts += _tables(f) + _q1(f) + _q2(f) + _q3(f) + _q4(f)
    else:
        parts += ["No completed runs: nothing to aggregate.", ""]
    parts += _q5(f)
    if f.figures:
        parts += ["## Figures", ""] + [f"- `{p.parent.name}/{p.name}`" for p in f.figures]
    path.write_text("\n".join(parts) + "\n")
    return path
