"""report.md: the study's questions answered from the data at hand. Every statement of a test
is rendered from the rows of findings.csv (analysis.findings), so the two always agree."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import findings
from analysis.aggregate import Panel, fmt_value
from analysis.questions import Answers, validation_metric
from analysis.schema import CHANCE_METRICS
from analysis.stats import EXACT_MAX_PAIRS, MONTE_CARLO_FLIPS, sign_flip_floor


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
    answers: Answers
    problems: pd.DataFrame
    corrupt: int
    figures: list[Path] = field(default_factory=list)
    tabled: int = 0                 # runs read from a runs table (no per-epoch metrics)

    @property
    def diverged(self) -> pd.DataFrame:
        """The cells where runs diverged: panel label, α, ε, n_diverged and n."""
        cols = ["mixup_alpha", "smoothing", "n_diverged", "n"]
        cells = [p.cells[cols].assign(panel=p.label) for p in self.panels
                 if "n_diverged" in p.cells]
        found = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=cols)
        return found[found["n_diverged"] > 0]

    @property
    def n_analysed(self) -> int:
        """Runs in the means: completed and diverged."""
        return int(sum(p.cells["n"].sum() for p in self.panels))


def _md(df: pd.DataFrame) -> str:
    """A small frame as a Markdown table, every value as written (no re-formatting)."""
    return df.to_markdown(index=False, disable_numparse=True)


def _claims(f: Findings, question: str, panel: str | None = None) -> pd.DataFrame:
    """The findings rows of one question (and panel)."""
    rows = f.answers.findings
    keep = rows["question"] == question
    return rows[keep & (rows["panel"] == panel)] if panel is not None else rows[keep]


def _picked_on(f: Findings, metric: str) -> str:
    """The validation accuracy (or accuracies, panel by panel) that picks cells for `metric`,
    in words."""
    used = sorted({validation_metric(p.cells, metric) for p in f.panels})
    return " / ".join(f"`{u}`" for u in used) or "`best_val_acc`"


def _method(f: Findings) -> list[str]:
    """How the claims are made, in words."""
    o = f.answers.options
    return ["## How the claims are made", "",
            "- **Selection on validation only.** Every \"best\" setting is the one with the "
            f"highest mean {_picked_on(f, o.metric)} on the noisy validation split: the "
            f"validation accuracy of the epoch `{o.metric}` is read from (`final_val_acc` "
            "for the last epochs, `best_val_acc` for the best validation epoch; a panel "
            "where some run lacks `final_val_acc`, recorded before it existed, falls back "
            "to `best_val_acc`). Its test accuracy is "
            "then an honest estimate. Cells picked on test accuracy are shown only as "
            "*optimistic (picked on test)*.",
            "- **Paired comparisons.** Runs of two cells pair when they share `seed` and "
            "`noise_seed`; the effect is the mean paired difference of "
            f"`{o.metric}` in percentage points (pp; a diverged run at chance accuracy: see "
            "*Diverged runs*), with a t-based 95% CI (n/a where every "
            "pair differs by the same amount: a zero-width interval would claim a certainty "
            "that a few agreeing replicates cannot give). p-values come from the exact "
            "sign-flip permutation test (Fisher 1935; Good 2005): every one of the 2^n sign "
            f"assignments of the differences up to {EXACT_MAX_PAIRS} pairs, {MONTE_CARLO_FLIPS:,} "
            "drawn with a fixed seed beyond, the observed one counted, so n pairs cannot give "
            "p below 2/2^n (5 pairs: 0.0625; 10 pairs: 0.00195). Welch's "
            "t-test is used only where fewer than 2 pairs exist (the test column says so). "
            "Pairs are treated as independent replicates, so a claim holds "
            "for the study's noise draws (the corrupted label sets it ran): whether it holds "
            "for other draws of the same noise model depends on the draw × setting variation "
            "(section 6).",
            f"- **Multiple comparisons.** p-values are adjusted with {o.correction_name} "
            f"({'Holm 1979' if o.correction == 'holm' else 'Benjamini & Hochberg 1995'}) "
            f"within each {'question and panel' if o.family == 'question' else 'panel'}: the "
            "difference tests, and separately the equivalence tests of the same comparisons.",
            f"- **Verdicts.** *better* / *worse*: adjusted p < {o.level:g}. *no detectable "
            f"difference*: the effect is shown to lie within ±{100 * o.delta:g} pp (the "
            "smallest difference taken to matter) by two one-sided tests (TOST; Schuirmann "
            "1987) of the same kind, their larger p-value adjusted like the difference tests "
            f"and below {o.level:g} (column *{findings.equivalence_header(o)}*). *undecided* "
            f"otherwise, and always with fewer than {o.min_pairs} replicate pairs "
            "(*undecided (too few seeds)*).", *_reach(f), ""]


def _reach(f: Findings) -> list[str]:
    """Under Holm, the largest family in which the study's pairs can make a claim at all: Holm
    multiplies a family's smallest p-value by its number of tests, and the sign-flip test's
    p-values have a floor (analysis.stats.sign_flip_floor)."""
    o, rows = f.answers.options, f.answers.findings
    n = rows.loc[rows["test"].str.startswith("paired"), "n_pairs"].max()
    if o.correction != "holm" or pd.isna(n) or n > EXACT_MAX_PAIRS:
        return []
    most = math.ceil(o.level / sign_flip_floor(int(n))) - 1
    return [f"- **What {n} pairs can show.** No p-value on {n} pairs is below "
            f"{sign_flip_floor(int(n)):.3g}, so a family of more than {most} tests can make no "
            "claim under Holm, whatever the data; more seeds or noise draws lift the limit."]


def _header(f: Findings) -> list[str]:
    """What was analysed."""
    n_diverged = int(f.diverged["n_diverged"].sum())
    return ["# Label smoothing on top of Mixup under noisy labels: analysis", "",
            f"Runs read from: {', '.join(f'`{p}`' for p in f.paths)}.",
            f"{f.n_runs} runs with results, {f.n_completed} completed, {n_diverged} diverged; "
            f"{len(f.problems)} problem runs (section 5). Completed and diverged runs enter "
            "tables and means, diverged ones at chance accuracy (see *Diverged runs*). "
            "Accuracies are final test accuracy, mean ± std over replicate runs (n = runs: "
            "every training seed and noise draw).", *_tabled(f), ""]


def _tabled(f: Findings) -> list[str]:
    """What a runs table as input leaves out of the figures."""
    if not f.tabled:
        return []
    return [f"{f.tabled} runs were read from a runs table (`runs.csv`), which holds no "
            "per-epoch metrics (`metrics.jsonl`): the training curves (`plots/*__curves.*`) "
            "leave them out, and are not drawn where no run is left. Tables, claims and the "
            "other figures are as from the run folders."]


DIVERGED_RULE = (
    "A run diverges when its training collapses (a non-finite, exploded or collapsed loss, or "
    "training accuracy still at chance). Rule (intention to treat): a diverged run counts at "
    "chance accuracy, 1/K with K the dataset's number of classes, in "
    + ", ".join(f"`{m}`" for m in CHANCE_METRICS)
    + " (the validation ones where the run has a validation split): in the cells' means, the "
    "ε × α tables, the picks on validation and the paired comparisons, so that a setting that "
    "often blows up (a large negative ε, say) cannot look better by losing its worst runs. "
    "Metrics without a chance level (loss, ECE, NLL, Brier score, memorisation) leave "
    "diverged runs out; their tables say how many (\"d diverged left out\"). A diverged run "
    "without a recorded number of classes cannot be counted and is a problem run (section 5). "
    "Training curves show completed runs only.")


def _diverged(f: Findings) -> list[str]:
    """How many runs diverged, per cell where any did, and how they are counted."""
    d = f.diverged
    out = ["## Diverged runs", ""]
    if d.empty:
        return out + [f"No run diverged. {DIVERGED_RULE}", ""]
    t = pd.DataFrame({"setting": d["panel"],
                      "cell": [findings.cell_text(a, e) for a, e in
                               zip(d["mixup_alpha"], d["smoothing"])],
                      "runs diverged": [f"{int(k)} of {int(n)}" for k, n in
                                   zip(d["n_diverged"], d["n"])]})
    return out + [f"{int(d['n_diverged'].sum())} of {f.n_analysed} runs diverged. "
                  f"{DIVERGED_RULE}", "", "The cells where any did:", "", _md(t), ""]


def _smoke(f: Findings) -> list[str]:
    """A plain warning for every panel too small to answer anything."""
    need, out = f.answers.options.min_pairs, []
    for v in f.answers.variance.itertuples():
        if v.max_runs_per_cell < need:
            out += [f"**Smoke test: {v.panel}** has at most {v.max_runs_per_cell} runs per "
                    f"cell (fewer than {need}): every verdict is undecided. Run at least "
                    f"{need} seeds (and 2 noise draws) to answer the questions.", ""]
        elif v.min_runs_per_cell < need:
            out += [f"**{v.panel}**: some cells have only {v.min_runs_per_cell} runs; "
                    "comparisons involving them are undecided (too few seeds).", ""]
    return out


def _tables(f: Findings) -> list[str]:
    """The ε × α table of final test accuracy per setting."""
    out = ["## ε × α: final test accuracy (%)", ""]
    for label, table in f.tables.items():
        out += [f"### {label}", "", table, ""]
    return out + ["The bold cell is the one the noisy validation split picks (highest mean "
                  f"{_picked_on(f, 'final_test_acc')}); without a validation split, the highest "
                  "test mean (optimistic: picked on test). Best test accuracy, test ECE and "
                  "memorisation tables are in `tables/` (`.md`, `.tex`), heatmaps and curves in "
                  "`plots/`.", ""]


def _split(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the tests of the corrected family, the claims that restate one or test nothing)."""
    family = (rows["restates"] == "") & (rows["verdict"] != findings.NOT_TESTED)
    return rows[family], rows[~family]


def _claims_block(f: Findings, rows: pd.DataFrame, intro: str, sentence: bool = True,
                  with_panel: bool = False) -> list[str]:
    """A claims table (from findings rows) with its intro and verdict counts."""
    if rows.empty:
        return []
    out = [intro, "", findings.markdown(rows, f.answers.options, with_panel), ""]
    return out + ([findings.summary_sentence(rows, f.answers.options), ""] if sentence else [])


def _picks_table(b: pd.DataFrame) -> str:
    """Q1's selection table: what validation picks at each α, and its test accuracy."""
    return _md(pd.DataFrame({
        "α": b["mixup_alpha"].map(fmt_value),
        "ε picked on validation": b["picked_smoothing"].map(fmt_value),
        "its val acc": b["picked_val_acc"].map(pct), "its test acc": b["picked_test_acc"].map(pct),
        "its test acc at best val epoch": b["picked_test_acc_at_best_val"].map(pct),
        "ε = 0 test acc": b["eps0_test_acc"].map(pct),
        "optimistic (picked on test): ε, test acc": [
            f"{fmt_value(e)}, {pct(a)}" for e, a in zip(b["optimistic_smoothing"],
                                                       b["optimistic_test_acc"])]}))


def _q1(f: Findings) -> list[str]:
    """Best ε per α (on validation) against ε = 0, and the whole corrected family."""
    out = ["## 1. Best ε per Mixup α", ""]
    if f.answers.best_eps.empty:
        return out + ["No completed runs with a final test accuracy.", ""]
    for p in f.panels:
        b = f.answers.best_eps[f.answers.best_eps["panel"] == p.label]
        family, picks = _split(_claims(f, "Q1", p.label))
        out += [f"### {p.label}", "", _picks_table(b), ""]
        out += _claims_block(f, picks, "The ε picked on validation against "
                             "ε = 0 (each restates its test in the family below):", False)
        out += _claims_block(f, family, "Every ε ≠ 0 against ε = 0 at the same α (the "
                             "corrected family):")
    return out


def _sign_sentence(rows: pd.DataFrame) -> str:
    """How often the best ε (on validation) is positive, zero or negative."""
    eps = rows["smoothing"].dropna()
    n = {s: int(k) for s, k in (("positive", (eps > 0).sum()), ("zero", (eps == 0).sum()),
                                 ("negative", (eps < 0).sum()))}
    better = int((rows["verdict"] == "better").sum())
    return (f"The best ε picked on validation is positive in {n['positive']}, zero in "
            f"{n['zero']} and negative in {n['negative']} of {len(rows)} settings "
            f"({len(rows) - len(eps)} without validation); its gain over ε = 0 is significant "
            f"(better, Q1's correction) in {better}.")


def _q2(f: Findings) -> list[str]:
    """How the best ε moves across settings, and its sign."""
    out = ["## 2. How the best ε moves across noise levels, datasets and models", ""]
    keys = {"noise rate": "noise_rate", "noise model": "noise", "dataset": "dataset",
            "model": "model", "label set": "noise_label_set"}
    varying = [n for n, k in keys.items()
               if len({fmt_value(p.values.get(k)) for p in f.panels}) > 1]
    fixed = [n for n, k in keys.items() if n not in varying and k != "noise_label_set"]
    rows = _claims(f, "Q2")
    out += [_md(f.answers.moves), "", "Cells: the best ε at each α, picked on validation.", "",
            "Its sign (ε < 0 is generalised label smoothing):", "",
            findings.markdown(rows, f.answers.options, with_panel=True), "",
            _sign_sentence(rows)]
    if varying:
        out.append(f"The settings differ in: {', '.join(varying)}.")
    if fixed:
        out.append(f"All runs share one {', '.join(fixed)}: the data cannot say how the best ε "
                   "moves along " + ("that dimension." if len(fixed) == 1 else "those."))
    return out + [""]


def _worse_sentence(rows: pd.DataFrame) -> str:
    """How many combined cells are worse than each single method (after correction)."""
    cells = rows.drop_duplicates(["alpha", "smoothing"])
    worse = rows[rows["verdict"] == "worse"]
    return (f"{len(cells)} combined cells: worse than Mixup alone in "
            f"{int(worse['comparison'].str.contains('Mixup alone').sum())}, worse than "
            f"smoothing alone in {int(worse['comparison'].str.contains('smoothing alone').sum())}.")


def _q3(f: Findings) -> list[str]:
    """Each combined cell against Mixup alone and against smoothing alone (matched)."""
    out = ["## 3. Where Mixup + smoothing does worse than either alone", ""]
    if _claims(f, "Q3").empty:
        return out + ["Cannot answer: no setting has a combined cell (α > 0, ε ≠ 0) together "
                      "with Mixup alone (same α, ε = 0) or smoothing alone (α = 0, same ε).", ""]
    out += ["Each combined cell (α > 0, ε ≠ 0) against Mixup alone at its α and against "
            "smoothing alone at its ε: both matched comparisons are in the corrected family.", ""]
    for p in f.panels:
        rows = _claims(f, "Q3", p.label)
        if not rows.empty:
            out += [f"### {p.label}", "", _worse_sentence(rows), ""]
            out += _claims_block(f, rows, "Combined minus single method:")
    return out


def _q4(f: Findings) -> list[str]:
    """The setting picked on validation: its honest test accuracy, the optimism of picking
    on test, and its test against ERM."""
    out = ["## 4. Choosing α, ε by noisy validation vs by test accuracy", ""]
    g = f.answers.val_gap
    if g.empty:
        return out + ["Skipped: no run has a validation split (best_val_acc is null), so "
                      "nothing can be picked honestly.", ""]
    t = pd.DataFrame({
        "setting": g["panel"],
        "picked on validation (α, ε)": [findings.cell_text(a, e) for a, e in
                                        zip(g["val_alpha"], g["val_smoothing"])],
        "its val acc": g["val_val_acc"].map(pct),
        "its test acc (honest)": g["val_test_acc"].map(pct),
        "at best val epoch": g["val_test_acc_at_best_val"].map(pct),
        "optimistic (picked on test)": [f"{findings.cell_text(a, e)}: {pct(v)}" for a, e, v in
                                        zip(g["test_alpha"], g["test_smoothing"],
                                            g["optimistic_test_acc"])],
        "optimism": g["optimism"].map(pp)})
    out += [_md(t), "", "Optimism: how much higher the best test accuracy looks when the "
            "setting is picked on the test set itself; the honest figure is the validation "
            "pick's test accuracy.", ""]
    out += _claims_block(f, _split(_claims(f, "Q4"))[1], "The validation pick against ERM "
                         "(each restates its test in the family below):", False, with_panel=True)
    for p in f.panels:
        family = _split(_claims(f, "Q4", p.label))[0]
        if not family.empty:
            out += [f"### {p.label}", ""] + _claims_block(
                f, family, "Every setting against ERM (α = 0, ε = 0), the corrected family:")
    return out


def _q5(f: Findings) -> list[str]:
    """The runs that are not in any mean."""
    out = ["## 5. Problem runs (not in any table or mean)", ""]
    if f.problems.empty:
        return out + ["None: every run found completed or diverged.", ""]
    counts = f.problems["status"].value_counts().rename_axis("status").reset_index(name="runs")
    out += [_md(counts), "", _md(f.problems[["run_dir", "status", "error"]].fillna("")), ""]
    if f.corrupt:
        out.append(f"{f.corrupt} corrupt results.json skipped.")
    return out + [""]


def _q6(f: Findings) -> list[str]:
    """Replicate variance: training seeds against noise draws."""
    v = f.answers.variance
    t = pd.DataFrame({"setting": v["panel"], "seeds": v["seeds"],
                      "noise draws": v["noise_draws"],
                      "runs per cell": [f"{a}-{b}" if a != b else str(a) for a, b in
                                        zip(v["min_runs_per_cell"], v["max_runs_per_cell"])],
                      "s.d. seeds": v["sd_seed"].map(_sd), "s.d. noise draws":
                      v["sd_noise_draw"].map(_sd), "s.d. residual": v["sd_residual"].map(_sd),
                      "s.d. draw × setting": v["sd_draw_x_setting"].map(_sd),
                      "how": v["note"]})
    return ["## 6. Replicates: training seeds vs noise draws", "", _md(t), "",
            "Standard deviations of final test accuracy within a cell, in pp. With seeds and "
            "noise draws crossed, a random-effects decomposition (Searle, Casella & McCulloch "
            "1992) splits them; \"not measured\" where one does not vary. The noise-draw s.d. "
            "rests on (draws - 1) degrees of freedom: with 2 draws it is rough. Draw × setting: "
            "how much the difference between settings changes from one noise draw to another; "
            "well above zero, the paired tests speak for the study's noise draws only.", ""]


def _sd(v: float) -> str:
    """A standard deviation (fraction) in pp, or 'not measured'."""
    return "not measured" if v is None or math.isnan(v) else f"{100 * v:.2f} pp"


CALIBRATION_NOTE = (
    "Which ECE to read depends on the validation labels, since the temperature of temperature "
    "scaling (TS; Guo et al., ICML 2017) is fitted on the validation split, whose labels carry "
    "the study's label noise. **Without label noise** (validation labels clean) TS removes the "
    "part of the miscalibration that one scalar can fix: read the **ECE after TS**. **Under "
    "label noise** the temperature is fitted to the noisy labels: it calibrates the model to "
    "the noise, not to the clean test labels (a model right on 90% of clean test images agrees "
    "with only about 55% of 40%-noisy validation labels, and a temperature that matches the "
    "second leaves it under-confident on the first), so TS can make test ECE worse. There, "
    "read the **raw ECE** with its over- and under-confident parts (raw ECE mixes the noise "
    "with miscalibration: a model fitted to noisy labels spreads probability over wrong labels, "
    "and the signed split shows the direction), and NLL and Brier score, proper scores of the "
    "whole prediction. *TS change* is ECE after TS minus raw ECE; *worse after TS* flags where "
    "TS raised the test ECE.")
WORSE = "worse after TS"


def is_clean(panel: Panel) -> bool:
    """Whether the panel's labels, validation split included, carry no noise."""
    return panel.values.get("noise") == "none" or panel.values.get("noise_rate") == 0


def _ts_change(raw: float, ts: float) -> str:
    """ECE after TS minus raw ECE in pp, flagged where TS made it worse."""
    if raw is None or ts is None or math.isnan(raw) or math.isnan(ts):
        return "n/a"
    return pp(ts - raw) + (f" ({WORSE})" if ts > raw else "")


def _to_read(clean: bool, ts: float) -> str:
    """Which ECE of a row to read: after TS only with clean validation labels."""
    if clean and ts is not None and not math.isnan(ts):
        return "ECE after TS (validation labels clean)"
    return "raw ECE (validation labels noisy)" if not clean else "raw ECE (no TS recorded)"


def _worse_sentence_ts(c: pd.DataFrame, clean: pd.Series) -> str:
    """How often TS made test ECE worse, and where."""
    worse = c["final_test_ece_ts"] > c["final_test_ece"]
    noisy = int((worse & ~clean).sum())
    text = (f"TS made test ECE worse in {int(worse.sum())} of "
            f"{int(c['final_test_ece_ts'].notna().sum())} rows with both numbers: {noisy} "
            f"under label noise")
    if (worse & clean).any():
        return text + (f", {int((worse & clean).sum())} with clean validation labels (where "
                       "the temperature fits the test distribution: a sign of too small a "
                       "validation split or of a fit that did not converge).")
    return text + "."


def _q7(f: Findings) -> list[str]:
    """Calibration of each method's cell picked on validation: raw and TS ECE side by side,
    with the one to read."""
    c = f.answers.calibration
    out = ["## 7. Calibration (each method's setting picked on validation)", "",
           CALIBRATION_NOTE, ""]
    if c.empty:
        return out + ["No setting could be picked on validation.", ""]
    clean = c["panel"].map({p.label: is_clean(p) for p in f.panels}).fillna(False).astype(bool)
    t = pd.DataFrame({"setting": c["panel"], "method": c["method"],
                      "(α, ε)": [findings.cell_text(a, e) for a, e in
                                 zip(c["mixup_alpha"], c["smoothing"])], "n": c["n"],
                      "diverged (left out)": c["n_diverged"],
                      "ECE (raw)": c["final_test_ece"].map(pct),
                      "ECE after TS": c["final_test_ece_ts"].map(pct),
                      "TS change": [_ts_change(r, t) for r, t in
                                    zip(c["final_test_ece"], c["final_test_ece_ts"])],
                      "read": [_to_read(k, t) for k, t in zip(clean, c["final_test_ece_ts"])],
                      "over-confident part": c["final_test_ece_over"].map(pct),
                      "under-confident part": c["final_test_ece_under"].map(pct),
                      "NLL": c["final_test_nll"].map(_num),
                      "Brier": c["final_test_brier"].map(_num)})
    return out + [_md(t), "", _worse_sentence_ts(c, clean), ""]


def _num(v: float) -> str:
    """A score with 4 decimals, or n/a (not recorded by older runs)."""
    return "n/a" if v is None or math.isnan(v) else f"{v:.4f}"


def write_report(f: Findings, path: Path) -> Path:
    """Write report.md."""
    parts = _header(f)
    if f.panels:
        parts += _smoke(f) + _method(f) + _tables(f) + _diverged(f) + _q1(f) + _q2(f) + \
            _q3(f) + _q4(f)
    else:
        parts += ["No completed or diverged runs: nothing to aggregate.", ""]
    parts += _q5(f)
    if f.panels:
        parts += _q6(f) + _q7(f)
    if f.figures:
        parts += ["## Figures", ""] + [f"- `{p.parent.name}/{p.name}`" for p in f.figures]
    path.write_text("\n".join(parts) + "\n")
    return path
