"""The analysis package on a planted study: every expected number is computed here by hand."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import AnalysisError, analyse, load_runs
from analysis.__main__ import main
from analysis.stats import welch
from analysis.wandb_push import push
from tests.conftest import module_env, run_module

# final test accuracy per (noise_rate, α, ε) and seed. At 40 % noise: ε = 0.1 helps at α = 0,
# hurts at α = 0.4 (the planted "combination hurts" case: 0.735 < Mixup alone 0.77); the
# (0, 0.2) cell lacks seed 1 (n = 1), the (0.4, 0.2) cell has no runs at all.
ACC = {
    (0.4, 0.0, 0.0): [0.60, 0.64], (0.4, 0.0, 0.1): [0.70, 0.72], (0.4, 0.0, 0.2): [0.66],
    (0.4, 0.4, 0.0): [0.75, 0.79], (0.4, 0.4, 0.1): [0.73, 0.74],
    (0.0, 0.0, 0.0): [0.90, 0.92], (0.0, 0.4, 0.0): [0.93, 0.95],
}
# Noisy validation prefers (α = 0, ε = 0.1) at 40 % noise, test accuracy prefers (0.4, 0).
VAL = {(0.4, 0.0, 0.1): [0.90, 0.92]}
AT_BEST_VAL = {(0.4, 0.0, 0.1): [0.73, 0.75]}


def method(alpha: float, eps: float) -> str:
    return {(False, False): "none", (True, False): "mixup", (False, True): "smoothing",
            (True, True): "mixup_smoothing"}[(alpha > 0, eps != 0)]


def config(rate: float, alpha: float, eps: float, **kw) -> dict:
    """The `config` object of a result: every training setting, dotted keys (no seeds)."""
    return {"dataset.name": "digits", "dataset.num_classes": 10, "dataset.val_fraction": 0.2,
            "dataset.val_seed": 0,
            "dataset.root": None, "model.name": "cnn", "model.channels": [16, 32],
            "augmentation.name": "mixup_smoothing", "augmentation.mixup_alpha": alpha,
            "augmentation.smoothing": eps, "augmentation.smoothing_to": "all",
            "noise.name": "symmetric", "noise.rate": rate, "noise.include_true_class": False,
            "trainer.lr": 0.05, "trainer.batch_size": 64, "trainer.epochs": 3, **kw}


def result(rate: float, alpha: float, eps: float, seed: int, acc: float | None, **kw) -> dict:
    """A results.json as the trainer writes it."""
    key, i = (rate, alpha, eps), min(seed, 1)
    val = VAL.get(key, [acc - 0.05] * 2)[i] if acc is not None else None
    return {"status": "completed", "error": None, "experiment": "planted",
            "group": f"a={alpha},e={eps},r={rate}", "run_dir": "elsewhere", "dataset": "digits",
            "model": "cnn", "augmentation": "mixup_smoothing", "method": method(alpha, eps),
            "mixup_alpha": alpha, "smoothing": eps, "noise": "symmetric", "noise_rate": rate,
            "noise_seed": 0, "noise_label_set": None, "seed": seed, "epochs": 3,
            "val_fraction": 0.2, "noise_rate_realized": rate, "device": "cpu", "amp": "off",
            "train_time_s": 1.0 + seed, "images_per_s": 100.0, "final_test_acc": acc,
            "best_test_acc": None if acc is None else acc + 0.01, "best_epoch": 3,
            "final_test_loss": 1.0, "final_test_ece": None if acc is None else (1 - acc) / 10,
            "final_memorized": (0.5 - acc / 2) if rate > 0 and acc is not None else None,
            "final_recovered": None, "best_val_acc": val,
            # Calibration: ECE after temperature scaling is lowest at (α = 0, ε = 0.1).
            "final_test_nll": None if acc is None else 2 * (1 - acc),
            "final_test_brier": None if acc is None else 1 - acc,
            "final_test_ece_over": 0.02, "final_test_ece_under": 0.01,
            "final_test_ece_ts": abs(eps - 0.1) / 10 + alpha / 100 + 0.01,
            "test_acc_at_best_val": AT_BEST_VAL.get(key, [acc] * 2)[i]
            if acc is not None else None,
            "epochs_done": 3, "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:10:00+00:00", "smoothing_to": "all",
            "smoothing_uniform_mass": eps, "config": config(rate, alpha, eps), "inputs": {},
            **kw}


def write_run(folder: Path, res: dict | str | None, epochs: int = 3) -> Path:
    """A fake run folder: .hydra/, a few metrics.jsonl lines and (unless None) results.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("task_name: planted\n")
    acc = res.get("final_test_acc") if isinstance(res, dict) else None
    lines = [{"epoch": e, "test_acc": (acc or 0.5) * e / epochs} for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if res is not None:
        (folder / "results.json").write_text(res if isinstance(res, str) else json.dumps(res))
    return folder


def cell_dir(study: Path, rate: float, alpha: float, eps: float, seed: int) -> Path:
    return study / f"noise.rate={rate},alpha={alpha},eps={eps}" / f"seed={seed}"


# The cell of the planted diverged run (seed 3), and what it counts as there: chance, 1/K.
DIVERGED_CELL, CHANCE = (0.4, 0.0, 0.0), 1 / 10


def make_study(study: Path) -> None:
    """The planted grid plus failed, diverged, interrupted, unfinished and corrupt runs."""
    for (rate, alpha, eps), accs in ACC.items():
        for seed, acc in enumerate(accs):
            write_run(cell_dir(study, rate, alpha, eps, seed), result(rate, alpha, eps, seed, acc))
    # Absurd accuracies: any of them in a mean would move it far from the planted one (the
    # diverged run's recorded one too: it counts at chance, whatever it recorded).
    bad = {"failed": 99.0, "diverged": -50.0, "interrupted": 42.0}
    for seed, (status, acc) in enumerate(bad.items(), start=2):
        write_run(cell_dir(study, 0.4, 0.0, 0.0, seed),
                  result(0.4, 0.0, 0.0, seed, acc, status=status, error=f"{status}!"))
    write_run(cell_dir(study, 0.4, 0.4, 0.0, 5), None)  # unfinished
    write_run(cell_dir(study, 0.4, 0.4, 0.1, 6), "{not json")
    missing = result(0.4, 0.4, 0.1, 7, 0.1)
    del missing["final_test_acc"], missing["dataset"]
    write_run(cell_dir(study, 0.4, 0.4, 0.1, 7), missing)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted study, analysed once: (study folder, output folder, stdout, stderr)."""
    study = tmp_path_factory.mktemp("study")
    make_study(study)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        folder = analyse([study])
    return study, folder, out.getvalue(), err.getvalue()


def summary_row(folder: Path, rate: float, alpha: float, eps: float) -> pd.Series:
    s = pd.read_csv(folder / "summary.csv")
    rows = s[(s.noise_rate == rate) & (s.mixup_alpha == alpha) & (s.smoothing == eps)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_summary_has_hand_computed_means_stds_and_counts(planted):
    _, folder, _, _ = planted
    assert folder == planted[0] / "analysis"
    for cell, accs in ACC.items():
        row = summary_row(folder, *cell)
        diverged = [CHANCE] if cell == DIVERGED_CELL else []
        values, best = accs + diverged, [a + 0.01 for a in accs] + diverged
        assert row["n"] == len(values) == row["final_test_acc_n"]
        assert row["n_diverged"] == len(diverged)
        assert row["final_test_acc_mean"] == pytest.approx(sum(values) / len(values))
        if len(values) > 1:
            assert row["final_test_acc_std"] == pytest.approx(statistics.stdev(values))
        else:
            assert math.isnan(row["final_test_acc_std"])
        assert row["best_test_acc_mean"] == pytest.approx(sum(best) / len(best))
    # Failed (99) and interrupted (42) runs stay out; the diverged one (it recorded -50) counts
    # at chance: the mean of 0.60, 0.64 and 0.10.
    assert summary_row(folder, *DIVERGED_CELL)["final_test_acc_mean"] == pytest.approx(1.34 / 3)


def test_missing_seed_shows_as_n1(planted):
    _, folder, _, _ = planted
    assert summary_row(folder, 0.4, 0.0, 0.2)["n"] == 1
    assert summary_row(folder, 0.4, 0.0, 0.2)["seeds"] == "0"
    assert summary_row(folder, 0.4, 0.0, 0.1)["n"] == 2
    md = (folder / "tables" / "digits__cnn__symmetric_0.4__final_test_acc.md").read_text()
    assert "66.00 ± n/a (1)" in md and "71.00 ± 1.41 (2)" in md


def test_problems_are_listed_and_not_averaged(planted):
    study, folder, stdout, stderr = planted
    probs = pd.read_csv(folder / "problems.csv")
    # The diverged run is no problem: it is an outcome, in the means at chance.
    assert sorted(probs["status"]) == sorted(["failed", "interrupted", "unfinished", "corrupt",
                                              "corrupt"])
    unfinished = probs[probs.status == "unfinished"].iloc[0]
    assert unfinished["run_dir"] == str(cell_dir(study, 0.4, 0.4, 0.0, 5))
    runs = pd.read_csv(folder / "runs.csv")
    assert len(runs) == sum(map(len, ACC.values())) + 3  # + failed, diverged, interrupted
    assert "5 runs not in any mean" in stdout
    assert "1 diverged runs counted at chance accuracy" in stdout
    report = (folder / "report.md").read_text()
    assert "## 5. Problem runs" in report and "failed!" in report and "interrupted!" in report


def test_corrupt_results_are_named_skipped_and_counted(planted, tmp_path):
    study, folder, _, stderr = planted
    for seed in (6, 7):
        assert str(cell_dir(study, 0.4, 0.4, 0.1, seed) / "results.json") in stderr
    assert "missing required keys: dataset, final_test_acc" in stderr
    probs = pd.read_csv(folder / "problems.csv")
    assert (probs.status == "corrupt").sum() == 2
    assert load_runs([study]).corrupt == 2
    assert "2 corrupt results.json skipped" in (folder / "report.md").read_text()


def findings_rows(folder: Path, question: str) -> pd.DataFrame:
    """The rows of findings.csv for one question in the 40 % noise panel."""
    f = pd.read_csv(folder / "findings.csv", keep_default_na=False, na_values=[""])
    return f[(f.question == question) & f.panel.str.contains("0.4")].set_index("comparison")


def test_best_eps_picked_on_validation_and_tested_paired(planted):
    _, folder, _, _ = planted
    best = pd.read_csv(folder / "best_eps.csv")
    at = best[best.panel.str.contains("0.4")].set_index("mixup_alpha")
    # Validation (not test accuracy) picks: 0.91 for ε = 0.1 at α = 0; 0.72 for ε = 0 at 0.4.
    assert at.loc[0.0, "picked_smoothing"] == 0.1 and at.loc[0.4, "picked_smoothing"] == 0.0
    assert at.loc[0.0, "picked_test_acc"] == pytest.approx(0.71)
    assert at.loc[0.0, "sign"] == "positive" and at.loc[0.4, "sign"] == "zero"
    q1 = findings_rows(folder, "Q1")
    row = q1.loc["α=0: ε=0.1 vs ε=0"]
    # Paired on the seed: differences 0.10 and 0.08. Of the 4 sign assignments, the observed
    # one and its mirror reach |0.18|: the exact sign-flip p-value is 2/4.
    assert row.effect_pp == pytest.approx(9.0) and row.n_pairs == 2
    # ε = 0's diverged seed 3 has no partner at ε = 0.1: unpaired, and said so.
    assert row.p == 0.5 and row.test == "paired sign-flip (exact; 1 unpaired runs left out)"
    half = stats.t.ppf(0.975, 1) * statistics.stdev([0.10, 0.08]) / math.sqrt(2)
    assert (row.ci_low_pp, row.ci_high_pp) == pytest.approx((100 * (0.09 - half),
                                                             100 * (0.09 + half)))
    # Holm over the two testable comparisons of the panel (ε = 0.2 has one run); the other's
    # differences (-0.02, -0.05) also give 2/4.
    assert row.p_adjusted == 1.0 == q1.loc["α=0.4: ε=0.1 vs ε=0"].p_adjusted
    assert row.verdict == "undecided (too few seeds)"  # 2 seeds decide nothing
    picked = q1.loc["α=0: best ε on validation (ε=0.1) vs ε=0"]
    assert picked.restates == "Q1" and picked.p_adjusted == row.p_adjusted
    report = (folder / "report.md").read_text()
    assert f"{row.p:.3g}" in report and "+9.00 pp" in report
    assert "**Smoke test: digits / cnn / symmetric 0.4**" in report


def test_combination_is_compared_with_each_single_method(planted):
    _, folder, _, _ = planted
    q3 = findings_rows(folder, "Q3")
    assert len(q3) == 2  # the one combined cell (0.4, 0.1), against each single method
    mixup = q3.loc["α=0.4, ε=0.1 vs Mixup alone (α=0.4, ε=0)"]
    smooth = q3.loc["α=0.4, ε=0.1 vs smoothing alone (α=0, ε=0.1)"]
    assert mixup.effect_pp == pytest.approx(-3.5) and smooth.effect_pp == pytest.approx(2.5)
    p_mix = p_smooth = 0.5  # two pairs of one sign each: 2 of 4 sign assignments
    assert (mixup.p, smooth.p) == (p_mix, p_smooth)
    assert smooth.p_adjusted == min(1, 2 * min(p_mix, p_smooth))
    assert set(q3.verdict) == {"undecided (too few seeds)"}
    section = (folder / "report.md").read_text().split("## 3.")[1].split("## 4.")[0]
    assert "worse than Mixup alone in 0, worse than smoothing alone in 0" in section
    assert "-3.50 pp" in section and f"{p_mix:.3g}" in section


def test_validation_pick_and_the_optimism_of_a_test_pick(planted):
    _, folder, _, _ = planted
    gap = pd.read_csv(folder / "val_vs_test.csv")
    row = gap[gap.panel.str.contains("0.4")].iloc[0]
    assert (row.val_alpha, row.val_smoothing) == (0.0, 0.1)
    assert (row.test_alpha, row.test_smoothing) == (0.4, 0.0)
    assert row.val_test_acc_at_best_val == pytest.approx(0.74)
    assert row.val_test_acc == pytest.approx(0.71)
    assert row.optimism == pytest.approx(0.77 - 0.71)
    report = (folder / "report.md").read_text()
    assert "+6.00 pp" in report and "optimistic (picked on test)" in report
    q4 = findings_rows(folder, "Q4")
    erm = q4.loc["best on validation (α=0, ε=0.1) vs ERM"]
    assert erm.restates == "Q4" and erm.effect_pp == pytest.approx(9.0)


def test_table_files_latex_and_plots(planted):
    _, folder, stdout, _ = planted
    tables, plots = folder / "tables", folder / "plots"
    for metric in ("final_test_acc", "best_test_acc", "final_test_ece", "final_memorized",
                   "final_test_ece_ts", "final_test_nll", "final_test_brier"):
        assert (tables / f"digits__cnn__symmetric_0.4__{metric}.md").exists()
        # One heatmap figure per metric for the clean and 40 % panels together.
        for ext in ("png", "pdf"):
            assert (plots / f"digits__cnn__symmetric__{metric}__heatmap.{ext}").exists()
    # No memorisation without noise: that table is left out rather than all n/a.
    assert not (tables / "digits__cnn__symmetric_0__final_memorized.md").exists()
    tex = (tables / "digits__cnn__symmetric_0.4__final_test_acc.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    # The bold cell is the one noisy validation picks, never the best test mean.
    summary = pd.read_csv(folder / "summary.csv")
    noisy = summary[summary["noise_rate"] == 0.4]
    pick = noisy.loc[noisy["best_val_acc_mean"].idxmax()]
    text = f"{100 * pick['final_test_acc_mean']:.2f} $\\pm$ {100 * pick['final_test_acc_std']:.2f}"
    assert tex.count(r"\textbf") == 1 and rf"\textbf{{{text} (2)}}" in tex
    ece = (tables / "digits__cnn__symmetric_0.4__final_test_ece.tex").read_text()
    assert r"\textbf{2.30 $\pm$ 0.28 (2)}" in ece  # lowest ECE: (1 - 0.77) / 10
    for stem in ("digits__cnn__symmetric__acc_vs_noise_rate", "digits__cnn__symmetric_0.4__curves"):
        assert (plots / f"{stem}.png").exists() and (plots / f"{stem}.pdf").exists()
    assert f"**{100 * pick['final_test_acc_mean']:.2f} ±" in stdout and "report.md" in stdout


def test_calibration_tables_bold_the_lowest_and_say_why(planted):
    _, folder, _, _ = planted
    tables = folder / "tables"
    ts = (tables / "digits__cnn__symmetric_0.4__final_test_ece_ts.md").read_text()
    # abs(ε - 0.1) / 10 + α / 100 + 0.01 is lowest (1 %) at α = 0, ε = 0.1, and only there.
    assert "**1.00 ± 0.00 (2)**" in ts and ts.count("**") == 2 + 2  # caption + one cell
    assert "Bold: the lowest mean" in ts and "temperature" in ts.lower()
    raw = (tables / "digits__cnn__symmetric_0.4__final_test_ece.md").read_text()
    assert "mixes the noise with miscalibration" in raw and "final_test_ece_ts" in raw
    nll = (tables / "digits__cnn__symmetric_0.4__final_test_nll.md").read_text()
    assert "**0.460 ± 0.057 (2)**" in nll and "proper scoring rule" in nll  # 2 (1 - 0.77)
    acc = (tables / "digits__cnn__symmetric_0.4__final_test_acc.md").read_text()
    assert "Bold: the cell the noisy validation split picks" in acc
    s = summary_row(folder, 0.4, 0.0, 0.1)
    assert s["final_test_ece_ts_mean"] == pytest.approx(0.01) and s["final_test_brier_n"] == 2


def test_path_without_runs_raises_and_cli_exits_nonzero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnalysisError, match=str(empty)):
        load_runs([empty])
    with pytest.raises(AnalysisError, match="no such file"):
        analyse([tmp_path / "missing"])
    proc = run_module([str(empty)], cwd=tmp_path, timeout=60, module="analysis")
    assert proc.returncode != 0
    assert str(empty) in proc.stderr and "holds no runs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_duplicates_raise_or_keep_the_newest(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    old = result(0.4, 0.0, 0.0, 0, 0.6)
    new = result(0.4, 0.0, 0.0, 0, 0.8, experiment="other", finished_at="2026-02-01T00:00:00Z")
    write_run(a / "run", old)
    write_run(b / "run", new)
    with pytest.raises(AnalysisError, match="duplicate") as err:
        load_runs([a, b])
    assert str(a / "run") in str(err.value) and str(b / "run") in str(err.value)
    assert main([str(a), str(b), "--quiet"]) == 2
    assert "duplicate" in capsys.readouterr().err
    out = analyse([a, b], tmp_path / "out", quiet=True, allow_duplicates=True)
    s = pd.read_csv(out / "summary.csv")
    assert s["final_test_acc_mean"].tolist() == [0.8] and s["n"].tolist() == [1]
    probs = pd.read_csv(out / "problems.csv")
    assert probs[["run_dir", "status"]].values.tolist() == [[str(a / "run"), "duplicate"]]


def test_single_run_folder_without_validation(tmp_path, capsys):
    run = write_run(tmp_path / "run", result(0.4, 0.0, 0.0, 0, 0.6, best_val_acc=None,
                                             test_acc_at_best_val=None))
    assert main([str(run), "--quiet"]) == 0
    report = (run / "analysis" / "report.md").read_text()
    assert "Skipped: no run has a validation split" in report
    assert "α=0: best ε not picked (cannot select honestly" in report
    assert "report.md" in capsys.readouterr().out


def test_single_seeds_give_no_p_value(tmp_path):
    write_run(tmp_path / "a", result(0.4, 0.0, 0.0, 0, 0.6))
    write_run(tmp_path / "b", result(0.4, 0.0, 0.1, 0, 0.7))
    report = (analyse([tmp_path], quiet=True) / "report.md").read_text()
    assert "none (fewer than 2 runs in a cell)" in report and "+10.00 pp" in report
    assert "undecided (too few seeds)" in report and "Smoke test" in report


def test_different_settings_are_never_averaged(tmp_path):
    # Same cell, two training budgets: epochs and an unknown new config key both split groups.
    write_run(tmp_path / "e3", result(0.4, 0.0, 0.0, 0, 0.6))
    write_run(tmp_path / "e9", result(0.4, 0.0, 0.0, 0, 0.7, epochs=9))
    write_run(tmp_path / "w", result(0.4, 0.0, 0.0, 0, 0.8, epochs=9, weight_decay=0.1))
    runs = load_runs([tmp_path])
    from analysis.aggregate import group_keys, summarise

    s = summarise(runs.completed, group_keys(runs.completed))
    assert len(s) == 3 and "weight_decay" in s.columns


def test_seeds_of_two_studies_are_not_pooled(tmp_path):
    write_run(tmp_path / "s0", result(0.4, 0.0, 0.0, 0, 0.6))
    write_run(tmp_path / "s1", result(0.4, 0.0, 0.0, 1, 0.7, experiment="other"))
    s = pd.read_csv(analyse([tmp_path], quiet=True) / "summary.csv")
    assert sorted(s["experiment"]) == ["other", "planted"] and s["n"].tolist() == [1, 1]


def test_welch_needs_two_seeds_per_side():
    assert math.isnan(welch(np.array([0.5]), np.array([0.6, 0.7]))[3])
    assert welch(np.array([0.5, 0.6]), np.array([0.6, 0.7]))[3] == pytest.approx(
        stats.ttest_ind([0.5, 0.6], [0.6, 0.7], equal_var=False).pvalue)


class FakeWandb(types.ModuleType):
    """Records what would be pushed."""

    def __init__(self, fail: bool = False):
        super().__init__("wandb")
        self.fail, self.inits, self.logged, self.finished = fail, [], {}, False

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    def init(self, **kw):
        if self.fail:
            raise RuntimeError("no network")
        self.inits.append(kw)
        return types.SimpleNamespace(log=self.logged.update, finish=self._finish)

    def _finish(self):
        self.finished = True


def test_wandb_push_tables_and_failure_is_a_warning(monkeypatch, tmp_path, capsys):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    done = pd.DataFrame({"experiment": ["planted"]})
    frame = pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", None]})
    assert push({"summary": frame}, done, tmp_path)
    assert fake.inits[0]["group"] == "planted" and fake.inits[0]["job_type"] == "analysis"
    assert fake.logged["summary"].data == [[1.0, "x"], [None, None]] and fake.finished
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=True))
    assert not push({"summary": frame}, done, tmp_path)
    assert "W&B push failed" in capsys.readouterr().err


def test_wandb_offline_run_holds_tables_figures_and_report(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    from matplotlib.figure import Figure

    from analysis.plots import save

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    study, out = tmp_path / "study", tmp_path / "elsewhere" / "analysis"
    study.mkdir()
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    png, _ = save(fig, out / "plots" / "a_figure")
    report = out / "report.md"
    report.write_text("# the report\n")
    frame = pd.DataFrame({"ε": [0.0, 0.1], "α=0": ["62.00 ± 2.83 (2)", "n/a"]})
    assert push({"summary": frame}, pd.DataFrame({"experiment": ["planted"]}), out,
                figures=[png], report=report, study=study)
    # Under the study, whatever --out was: syncing the study's folder uploads it.
    (files,) = study.glob("wandb/offline-run-*/files")
    (table,) = files.glob("media/table/summary_*.table.json")
    assert "62.00" in table.read_text()
    (image,) = files.glob("media/images/figures/a_figure_*.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (files / "report.md").is_symlink()
    report.write_text("a later analysis\n")  # the run keeps the report it was given
    assert (files / "report.md").read_text() == "# the report\n"


def summarise_runs(runs) -> pd.DataFrame:
    """The summary over seeds and noise draws, as the pipeline groups it."""
    from analysis.aggregate import group_keys, summarise

    return summarise(runs.completed, group_keys(runs.completed))


def test_runs_differing_only_in_a_config_setting_are_two_cells(tmp_path):
    for seed, lr in ((0, 0.05), (1, 0.05), (0, 0.1)):
        res = result(0.4, 0.0, 0.1, seed, 0.6 + lr, config=config(0.4, 0.0, 0.1, **{
            "trainer.lr": lr}))
        write_run(tmp_path / f"lr{lr}" / f"s{seed}", res)
    runs = load_runs([tmp_path])
    # Lists as JSON text; copies of top-level keys (ε, α, noise rate) and non-settings dropped.
    assert set(runs.table["config.model.channels"]) == {"[16, 32]"}
    assert not {"config.augmentation.smoothing", "config.noise.rate", "config.trainer.epochs",
                "config.augmentation.name", "config.dataset.root", "config"} & set(runs.table)
    s = summarise_runs(runs).sort_values("config.trainer.lr")
    assert s["config.trainer.lr"].tolist() == [0.05, 0.1] and s["n"].tolist() == [2, 1]
    assert s["final_test_acc_mean"].tolist() == pytest.approx([0.65, 0.7])
    out = analyse([tmp_path], tmp_path / "out", quiet=True)
    names = {p.name for p in (out / "tables").iterdir()}
    assert any("config.trainer.lr=0.1" in n for n in names)
    assert any("config.trainer.lr=0.05" in n for n in names)


def test_a_run_on_another_archive_is_another_cell(tmp_path):
    def on(digest: str, path: str) -> dict:
        return {"dataset.npz": {"path": path, "size": 100, "hash": digest}}

    cfg = config(0.4, 0.0, 0.1, **{"dataset.npz": "/data/a.npz"})
    write_run(tmp_path / "a0", result(0.4, 0.0, 0.1, 0, 0.6, config=cfg,
                                      inputs=on("aaa", "/data/a.npz")))
    # The same archive moved elsewhere is the same data: its seed pools with the first.
    write_run(tmp_path / "a1", result(0.4, 0.0, 0.1, 1, 0.7, inputs=on("aaa", "/mnt/a.npz"),
                                      config={**cfg, "dataset.npz": "/mnt/a.npz"}))
    write_run(tmp_path / "b0", result(0.4, 0.0, 0.1, 0, 0.9, config=cfg,
                                      inputs=on("bbb", "/data/a.npz")))
    runs = load_runs([tmp_path])
    assert "config.dataset.npz" not in runs.table  # where the file is, not what it holds
    s = summarise_runs(runs).sort_values("input.dataset.npz")
    assert s["input.dataset.npz"].tolist() == ["aaa", "bbb"] and s["n"].tolist() == [2, 1]
    assert s["final_test_acc_mean"].tolist() == pytest.approx([0.65, 0.9])


def test_an_input_without_a_hash_is_corrupt(tmp_path, capsys):
    write_run(tmp_path / "a", result(0.4, 0.0, 0.1, 0, 0.6,
                                     inputs={"dataset.npz": {"path": "/a.npz", "size": 1}}))
    write_run(tmp_path / "b", result(0.4, 0.0, 0.1, 1, 0.6))
    runs = load_runs([tmp_path])
    assert runs.problems["status"].tolist() == ["corrupt"]
    assert "without a content hash: dataset.npz" in capsys.readouterr().err


def test_noise_draws_and_seeds_are_replicates_of_one_cell(tmp_path):
    accs = {(0, 0): 0.60, (0, 1): 0.62, (1, 0): 0.64, (1, 1): 0.70}
    for (seed, noise_seed), acc in accs.items():
        write_run(tmp_path / f"s{seed}n{noise_seed}",
                  result(0.4, 0.0, 0.1, seed, acc, noise_seed=noise_seed))
    write_run(tmp_path / "other", result(0.4, 0.0, 0.2, 0, 0.5))
    out = analyse([tmp_path], tmp_path / "out", quiet=True)
    s = pd.read_csv(out / "summary.csv")
    row = s[s.smoothing == 0.1].iloc[0]
    assert row["n"] == 4 and row["final_test_acc_mean"] == pytest.approx(0.64)
    assert "noise_seed" not in s.columns  # a replicate, never a setting
    # Panel labels (and the file names made of them) name only keys that vary across panels.
    assert {p.name for p in (out / "tables").glob("*final_test_acc.md")} == \
        {"digits__cnn__symmetric_0.4__final_test_acc.md"}


def test_results_without_config_load_with_one_warning(tmp_path, capsys):
    for seed in range(3):
        old = result(0.4, 0.0, 0.1, seed, 0.6 + seed / 100)
        for key in ("config", "inputs", "smoothing_to", "smoothing_uniform_mass"):
            del old[key]
        write_run(tmp_path / f"s{seed}", old)
    runs = load_runs([tmp_path])
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "3 of 3 runs" in err and "incomplete" in err
    # The convention of the smoothing code of the time: over all classes, mass ε.
    assert set(runs.table["smoothing_to"]) == {"all"}
    assert runs.table["smoothing_uniform_mass"].tolist() == [0.1] * 3
    assert summarise_runs(runs)["n"].tolist() == [3]
    capsys.readouterr()
    write_run(tmp_path / "new", result(0.4, 0.0, 0.1, 0, 0.9))
    load_runs([tmp_path])
    assert "3 of 4 runs" in capsys.readouterr().err


@pytest.mark.parametrize("acc", ["null", "NaN", "Infinity"])
def test_completed_without_a_finite_accuracy_is_a_problem(tmp_path, acc):
    write_run(tmp_path / "good", result(0.4, 0.0, 0.1, 0, 0.6))
    bad = json.dumps(result(0.4, 0.0, 0.1, 1, 0.99)).replace('"final_test_acc": 0.99',
                                                              f'"final_test_acc": {acc}')
    write_run(tmp_path / "bad", bad)
    out = analyse([tmp_path], tmp_path / "out", quiet=True)
    probs = pd.read_csv(out / "problems.csv")
    assert probs[["run_dir", "status"]].values.tolist() == [[str(tmp_path / "bad"), "invalid"]]
    assert "final_test_acc" in probs["error"].iloc[0]
    s = pd.read_csv(out / "summary.csv")
    assert s["n"].tolist() == [1] and s["final_test_acc_mean"].tolist() == [0.6]
    assert s["best_test_acc_mean"].tolist() == [pytest.approx(0.61)]  # 0.99 + 0.01 left out


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_an_unusable_out_is_refused_before_anything_is_written(tmp_path, capsys):
    study = tmp_path / "study"
    write_run(study / "run", result(0.4, 0.0, 0.1, 0, 0.6))
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a file")
    (tmp_path / "has_plots_file").mkdir()
    (tmp_path / "has_plots_file" / "plots").write_text("a file")
    before = _files(tmp_path)
    for out in (blocker, blocker / "sub", tmp_path / "has_plots_file"):
        with pytest.raises(AnalysisError, match="cannot write the analysis there") as err:
            analyse([study], out, quiet=True)
        assert "\n" not in str(err.value) and "not a folder" in str(err.value)
        assert main([str(study), "--out", str(out), "--quiet"]) == 2
        msg = capsys.readouterr().err
        assert msg.startswith("analysis error: --out") and msg.count("\n") == 1
    assert _files(tmp_path) == before  # no analysis folder, no half-written files


def test_a_read_only_out_is_refused(tmp_path):
    study = tmp_path / "study"
    write_run(study / "run", result(0.4, 0.0, 0.1, 0, 0.6))
    if os.geteuid() == 0:  # root writes through permissions: a file system that refuses all
        target = Path("/proc/analysis")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "analysis"
    proc = run_module([str(study), "--out", str(target)], cwd=tmp_path, timeout=120,
                      module="analysis")
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the analysis there" in proc.stderr and str(target) in proc.stderr
    assert not (study / "analysis").exists() and not target.exists()


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by its path below it, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _small_study(study: Path) -> None:
    """Two cells (ε = 0 and 0.1 at α = 0) with two seeds each."""
    for seed in range(2):
        for eps, acc in ((0.0, 0.60), (0.1, 0.65)):
            write_run(study / f"eps={eps}" / f"seed={seed}",
                      result(0.4, 0.0, eps, seed, acc + seed / 100))


def test_a_new_analysis_replaces_the_earlier_one_whole_and_nothing_else(tmp_path):
    study, out = tmp_path / "study", tmp_path / "out"
    _small_study(study)
    analyse([study], out, quiet=True, figure_formats=("png",))
    (out / "plots" / "a_panel_since_removed.png").write_bytes(b"old")
    analyse([study], out, quiet=True, figure_formats=("png",))
    assert (out / "report.md").exists() and not (out / "plots" / "a_panel_since_removed.png"
                                                 ).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "study"]  # nothing left aside
    # A folder holding anything else is never replaced: a study's runs, a person's notes.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    for folder, entry in ((tmp_path / "notes", "mine.txt"), (study, "eps=0.0")):
        before = _snapshot(folder)
        with pytest.raises(AnalysisError, match=f"it holds {entry}, which no analysis writes"):
            analyse([study], folder, quiet=True)
        assert _snapshot(folder) == before


# The analysis CLI with a signal sent to it once its first figure is written (by it, or by a
# worker drawing figures for it): the handler main installs raises while the new analysis is
# half written.
SIGNAL_AFTER_THE_FIRST_FIGURE = """
import os, signal, sys
from analysis import plots
from analysis.__main__ import main
save, command = plots.save, os.getpid()
def save_then_signal(*args, **kwargs):
    written = save(*args, **kwargs)
    os.kill(command, getattr(signal, os.environ["SEND"]))
    return written
plots.save = save_then_signal
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 75), ("SIGINT", 130)])
def test_a_signal_while_writing_leaves_the_earlier_analysis_untouched(tmp_path, name, code):
    import subprocess

    study, out = tmp_path / "study", tmp_path / "out"
    _small_study(study)
    analyse([study], out, quiet=True, figure_formats=("png",))
    before = _snapshot(out)
    write_run(study / "eps=0.1" / "seed=2", result(0.4, 0.0, 0.1, 2, 0.7))  # new numbers
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_THE_FIRST_FIGURE, str(study),
                           "--out", str(out), "--quiet"], cwd=tmp_path,
                          env=module_env({"SEND": name}), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"analysis interrupted by {name}: nothing in {out} "
                                            "was changed; rerun the same command")
    assert "Traceback" not in proc.stderr and "Report:" not in proc.stdout
    assert _snapshot(out) == before  # the old report, the old figures: no mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "study"]  # no .partial left


# The signal arrives the moment the command's policy is installed, before any slow import.
SIGNAL_AT_START = """
import os, signal, sys
from analysis import __main__ as command
from src.run.signals import SIGNALS
install = SIGNALS.install
def install_then_signal():
    install()
    os.kill(os.getpid(), signal.SIGTERM)
SIGNALS.install = install_then_signal
sys.exit(command.main(sys.argv[1:]))
"""


def test_a_signal_at_start_up_is_one_line_and_exit_75(tmp_path):
    """`python -m analysis` imports the package before main: were pandas and matplotlib
    imported with it, a SIGTERM in those seconds would end the command silently (exit 143)."""
    import subprocess

    code = "import sys, analysis.__main__; sys.exit('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=module_env()).returncode == 0
    study = tmp_path / "study"
    _small_study(study)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT_START, str(study)], cwd=tmp_path,
                          env=module_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.splitlines() == ["analysis interrupted by SIGTERM before it started: "
                                        "nothing was written"]
    assert sorted(p.name for p in study.iterdir()) == ["eps=0.0", "eps=0.1"]


def test_the_study_callback_stopped_while_writing_keeps_the_earlier_analysis(tmp_path,
                                                                             monkeypatch):
    """In a sweep the entry point (src.train) holds the signal policy: the callback's analysis
    raises a Stopped, which that entry turns into exit 75, the sweep's analysis unchanged."""
    from omegaconf import OmegaConf

    from analysis import plots
    from analysis.callback import AnalyseSweep
    from analysis.errors import Interrupted
    from src.run.signals import SIGNALS, Stopped

    sweep = tmp_path / "sweep"
    _small_study(sweep)
    analyse([sweep], quiet=True, figure_formats=("png",))
    before = _snapshot(sweep / "analysis")
    save, main = plots.save, os.getpid()

    def save_then_signal(*args, **kwargs):
        written = save(*args, **kwargs)
        os.kill(main, signal.SIGTERM)  # the analysing process (figures may be drawn apart)
        return written

    monkeypatch.setattr(plots, "save", save_then_signal)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SIGNALS.install()
    try:
        with pytest.raises(Interrupted) as stop:
            AnalyseSweep(quiet=True, figures=["png"]).on_multirun_end(cfg)
    finally:
        SIGNALS.restore()
    assert isinstance(stop.value, Stopped) and stop.value.exit_code == 75
    assert str(stop.value).startswith(f"analysis interrupted by SIGTERM: nothing in "
                                      f"{sweep / 'analysis'} was changed")
    assert _snapshot(sweep / "analysis") == before
    assert not list(sweep.glob(".analysis.*"))


NEG = {-8.0: [0.50, 0.52], -1.0: [0.80, 0.84], 0.0: [0.70, 0.72], 0.4: [0.75, 0.77]}


def write_neg_study(root: Path, smoothing_to: str = "all", k: int = 10) -> None:
    """ε from -8 to 0.4 (generalised label smoothing) at α = 0 and 1."""
    for eps, accs in NEG.items():
        for alpha in (0.0, 1.0):
            for seed, acc in enumerate(accs):
                mass = eps if smoothing_to == "all" else eps * k / (k - 1)
                res = result(0.4, alpha, eps, seed, acc - alpha / 10, smoothing_to=smoothing_to,
                             smoothing_uniform_mass=mass)
                res["config"]["augmentation.smoothing_to"] = smoothing_to
                write_run(root / f"{smoothing_to}_a{alpha}_e{eps}_s{seed}", res)


def test_negative_eps_in_numeric_order_and_bold_on_the_best(tmp_path):
    write_neg_study(tmp_path / "study")
    out = analyse([tmp_path / "study"], tmp_path / "out", quiet=True)
    md = (out / "tables" / "digits__cnn__symmetric_0.4__final_test_acc.md").read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("|")][2:]
    assert rows == ["-8", "-1", "0", "0.4"]
    assert "**82.00 ± 2.83 (2)**" in md and md.count("**") == 4  # ε = -1, α = 0 only
    assert "rows: label smoothing ε as configured (smoothing_to=all)" in md
    tex = (out / "tables" / "digits__cnn__symmetric_0.4__final_test_acc.tex").read_text()
    assert tex.index(r"$\varepsilon=-8$") < tex.index(r"$\varepsilon=-1$") < \
        tex.index(r"$\varepsilon=0$") < tex.index(r"$\varepsilon=0.4$")
    assert r"\textbf{82.00 $\pm$ 2.83 (2)}" in tex


def test_eps_axis_uniform_mass_and_conventions_never_mixed(tmp_path, capsys):
    write_neg_study(tmp_path / "study", "all")
    write_neg_study(tmp_path / "study", "others")
    assert main([str(tmp_path / "study"), "--out", str(tmp_path / "out"), "--quiet",
                 "--eps-axis", "uniform_mass"]) == 0
    tables = tmp_path / "out" / "tables"
    both = sorted(tables.glob("*final_test_acc.md"))
    assert [p.name for p in both] == [
        "digits__cnn__symmetric_0.4__smoothing_to=all__final_test_acc.md",
        "digits__cnn__symmetric_0.4__smoothing_to=others__final_test_acc.md"]
    others = both[1].read_text()
    assert "rows: uniform mass m of the smoothed target" in others
    rows = [line.split("|")[1].strip() for line in others.splitlines()
            if line.startswith("|")][2:]
    assert rows == ["-8.88889", "-1.11111", "0", "0.444444"]  # ε K / (K - 1), K = 10
    s = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert s.groupby("smoothing_to")["n"].sum().to_dict() == {"all": 16, "others": 16}
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "study"), "--eps-axis", "mass"])
    assert err.value.code == 2 and "--eps-axis" in capsys.readouterr().err
    with pytest.raises(AnalysisError, match="eps axis 'mass'"):
        analyse([tmp_path / "study"], tmp_path / "out2", eps_axis="mass")


def test_figures_option_writes_only_the_formats_asked_for(planted, tmp_path, capsys):
    study = planted[0]
    with pytest.raises(SystemExit) as err:  # refused before anything is written
        main([str(study), "--out", str(tmp_path / "jpg"), "--figures", "jpg"])
    assert err.value.code == 2 and not (tmp_path / "jpg").exists()
    message = capsys.readouterr().err
    assert "--figures" in message and "'jpg'" in message and "png,pdf" in message
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(study), "--out", str(tmp_path / "png"), "--figures", "png",
                     "--quiet"]) == 0
        assert main([str(study), "--out", str(tmp_path / "none"), "--figures", "none",
                     "--quiet"]) == 0
    suffixes = {p.suffix for p in (tmp_path / "png" / "plots").iterdir()}
    assert suffixes == {".png"}
    assert not list((tmp_path / "none").rglob("*.p[nd][gf]"))
    assert (tmp_path / "none" / "report.md").is_file()
