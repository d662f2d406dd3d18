"""The analysis package on a planted study: every expected number is computed here by hand."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from analysis import AnalysisError, analyse, load_runs
from analysis.__main__ import main
from analysis.stats import welch_p
from analysis.wandb_push import push
from tests.conftest import run_module

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
            (True, True): "mixup_smoothing"}[(alpha > 0, eps > 0)]


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
            "test_acc_at_best_val": AT_BEST_VAL.get(key, [acc] * 2)[i]
            if acc is not None else None,
            "epochs_done": 3, "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:10:00+00:00", **kw}


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


def make_study(study: Path) -> None:
    """The planted grid plus failed, diverged, interrupted, unfinished and corrupt runs."""
    for (rate, alpha, eps), accs in ACC.items():
        for seed, acc in enumerate(accs):
            write_run(cell_dir(study, rate, alpha, eps, seed), result(rate, alpha, eps, seed, acc))
    # Absurd accuracies: any of them in a mean would move it far from the planted one.
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
    for (rate, alpha, eps), accs in ACC.items():
        row = summary_row(folder, rate, alpha, eps)
        assert row["n"] == len(accs) == row["final_test_acc_n"]
        assert row["final_test_acc_mean"] == pytest.approx(sum(accs) / len(accs))
        if len(accs) > 1:
            assert row["final_test_acc_std"] == pytest.approx(statistics.stdev(accs))
        else:
            assert math.isnan(row["final_test_acc_std"])
        assert row["best_test_acc_mean"] == pytest.approx(sum(accs) / len(accs) + 0.01)
    # Failed (99), diverged (-50) and interrupted (42) runs stay out: mean of 0.60, 0.64 only.
    assert summary_row(folder, 0.4, 0.0, 0.0)["final_test_acc_mean"] == pytest.approx(0.62)


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
    assert sorted(probs["status"]) == sorted(["failed", "diverged", "interrupted",
                                              "unfinished", "corrupt", "corrupt"])
    unfinished = probs[probs.status == "unfinished"].iloc[0]
    assert unfinished["run_dir"] == str(cell_dir(study, 0.4, 0.4, 0.0, 5))
    runs = pd.read_csv(folder / "runs.csv")
    assert len(runs) == sum(map(len, ACC.values())) + 3  # + failed, diverged, interrupted
    assert "6 runs not in any mean" in stdout
    report = (folder / "report.md").read_text()
    assert "## 5. Problem runs" in report and "diverged!" in report


def test_corrupt_results_are_named_skipped_and_counted(planted, tmp_path):
    study, folder, _, stderr = planted
    for seed in (6, 7):
        assert str(cell_dir(study, 0.4, 0.4, 0.1, seed) / "results.json") in stderr
    assert "missing required keys: dataset, final_test_acc" in stderr
    probs = pd.read_csv(folder / "problems.csv")
    assert (probs.status == "corrupt").sum() == 2
    assert load_runs([study]).corrupt == 2
    assert "2 corrupt results.json skipped" in (folder / "report.md").read_text()


def test_best_eps_per_alpha_and_welch_p(planted):
    _, folder, _, _ = planted
    best = pd.read_csv(folder / "best_eps.csv")
    at = best[best.panel.str.contains("0.4")].set_index("mixup_alpha")
    assert at.loc[0.0, "best_smoothing"] == 0.1 and at.loc[0.4, "best_smoothing"] == 0.0
    assert at.loc[0.0, "gain"] == pytest.approx(0.71 - 0.62)
    p = stats.ttest_ind([0.70, 0.72], [0.60, 0.64], equal_var=False).pvalue
    assert at.loc[0.0, "p_value"] == pytest.approx(p)
    assert math.isnan(at.loc[0.4, "p_value"])  # best ε is 0: nothing to test
    report = (folder / "report.md").read_text()
    assert f"{p:.3g}" in report and "+9.00 pp" in report
    assert "best in 1 of 4 (setting, α) pairs" in report


def test_combination_hurts_lists_the_planted_case(planted):
    _, folder, _, _ = planted
    hurts = pd.read_csv(folder / "combination_hurts.csv")
    assert len(hurts) == 1
    row = hurts.iloc[0]
    assert (row.mixup_alpha, row.smoothing, row.better_alone) == (0.4, 0.1, "mixup")
    assert row["diff"] == pytest.approx(0.735 - 0.77)
    p = stats.ttest_ind([0.73, 0.74], [0.75, 0.79], equal_var=False).pvalue
    assert row["p_value"] == pytest.approx(p)
    section = (folder / "report.md").read_text().split("## 3.")[1].split("## 4.")[0]
    assert "1 of them do worse (0 with Welch p < 0.05)" in section
    assert "-3.50 pp" in section and f"{p:.3g}" in section


def test_validation_vs_test_gap(planted):
    _, folder, _, _ = planted
    gap = pd.read_csv(folder / "val_vs_test.csv")
    row = gap[gap.panel.str.contains("0.4")].iloc[0]
    assert (row.val_alpha, row.val_smoothing) == (0.0, 0.1)
    assert (row.test_alpha, row.test_smoothing) == (0.4, 0.0)
    assert row.val_test_acc_at_best_val == pytest.approx(0.74)
    assert row.val_final_test_acc == pytest.approx(0.71)
    assert row.gap_final == pytest.approx(0.77 - 0.71)
    assert row.gap_at_best_val == pytest.approx(0.77 - 0.74)
    assert "+6.00 pp" in (folder / "report.md").read_text()


def test_table_files_latex_and_plots(planted):
    _, folder, stdout, _ = planted
    tables = folder / "tables"
    for metric in ("final_test_acc", "best_test_acc", "final_test_ece", "final_memorized"):
        assert (tables / f"digits__cnn__symmetric_0.4__{metric}.md").exists()
        assert (folder / "plots" / f"digits__cnn__symmetric_0.4__{metric}__heatmap.png").exists()
    # No memorisation without noise: that table is left out rather than all n/a.
    assert not (tables / "digits__cnn__symmetric_0__final_memorized.md").exists()
    tex = (tables / "digits__cnn__symmetric_0.4__final_test_acc.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textbf{77.00 $\pm$ 2.83 (2)}" in tex and tex.count(r"\textbf") == 1
    ece = (tables / "digits__cnn__symmetric_0.4__final_test_ece.tex").read_text()
    assert r"\textbf{2.30 $\pm$ 0.28 (2)}" in ece  # lowest ECE: (1 - 0.77) / 10
    assert (folder / "plots" / "digits__cnn__symmetric__acc_vs_noise_rate.png").exists()
    assert (folder / "plots" / "digits__cnn__symmetric_0.4__curves.png").exists()
    assert "**77.00 ± 2.83 (2)**" in stdout and "report.md" in stdout


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
    assert main([str(a), str(b), "--quiet"]) == 1
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
    assert "no gain to test" in report
    assert "report.md" in capsys.readouterr().out


def test_single_seeds_give_no_p_value(tmp_path):
    write_run(tmp_path / "a", result(0.4, 0.0, 0.0, 0, 0.6))
    write_run(tmp_path / "b", result(0.4, 0.0, 0.1, 0, 0.7))
    report = (analyse([tmp_path], quiet=True) / "report.md").read_text()
    assert "No p-value could be computed" in report and "+10.00 pp" in report
    assert "n/a (needs ≥ 2 seeds on both sides)" in report


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
    assert math.isnan(welch_p([0.5], [0.6, 0.7]))
    assert welch_p([0.5, 0.6], [0.6, 0.7]) == pytest.approx(
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


def test_wandb_offline_run_holds_the_tables(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
                       "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    frame = pd.DataFrame({"ε": [0.0, 0.1], "α=0": ["62.00 ± 2.83 (2)", "n/a"]})
    assert push({"summary": frame}, pd.DataFrame({"experiment": ["planted"]}), tmp_path)
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/summary_*.table.json"))
    assert len(tables) == 1 and "62.00" in tables[0].read_text()
