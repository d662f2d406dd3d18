"""Divergence is an outcome: a diverged run counts at chance accuracy (1/K) in every mean, pick
on validation and paired comparison, and is counted where it is left out; and an analysis'
runs.csv re-analysed without the run folders gives the same tables, claims and report."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import AnalysisError, analyse, load_runs
from analysis.__main__ import main
from analysis.outcomes import diverged_value
from analysis.pipeline import default_out
from tests.test_analysis import config, result, write_run

K = 10
CHANCE = 1 / K
SEEDS = range(5)
# ε = -1 diverges on seeds 3 and 4 and does well on the others; ε = 0 never diverges. What the
# diverged runs recorded (nothing, or a high accuracy from before the collapse) is never used.
DIVERGES = {3: None, 4: 0.99}


def acc(eps: float, seed: int) -> float:
    """Final test accuracy of a run that did not diverge: 0.90.. at ε = -1, 0.80.. at ε = 0."""
    return (0.90 if eps < 0 else 0.80) + seed / 100


def diverged_result(eps: float, seed: int, **kw) -> dict:
    """A run of (α = 0, ε) at 40 % noise that diverged, as the trainer records one."""
    return result(0.4, 0.0, eps, seed, DIVERGES[seed], status="diverged",
                  error="training loss -1.2e+03 below -230 in epoch 2: the logits ran away", **kw)


def write_study(study: Path) -> None:
    """5 seeds at ε = 0 and at ε = -1, 2 of the latter diverged."""
    for seed in SEEDS:
        write_run(study / f"eps=0/seed={seed}", result(0.4, 0.0, 0.0, seed, acc(0.0, seed)))
        run = diverged_result(-1.0, seed) if seed in DIVERGES else \
            result(0.4, 0.0, -1.0, seed, acc(-1.0, seed))
        write_run(study / f"eps=-1/seed={seed}", run)


def analysed(study: Path, out: Path) -> tuple[Path, str]:
    """The analysis of `study` into `out` (PNG figures only), and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        analyse([study], out, figure_formats=("png",))
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """The study analysed: (output folder, stdout)."""
    root = tmp_path_factory.mktemp("itt")
    write_study(root / "study")
    return analysed(root / "study", root / "out")


def cell(folder: Path, eps: float) -> pd.Series:
    s = pd.read_csv(folder / "summary.csv")
    return s[s.smoothing == eps].iloc[0]


def test_diverged_runs_are_counted_in_n_diverged_and_in_the_means_at_chance(diverging):
    folder, stdout = diverging
    row = cell(folder, -1.0)
    assert (row["n"], row["n_diverged"], row["final_test_acc_n"]) == (5, 2, 5)
    kept = [acc(-1.0, s) for s in SEEDS if s not in DIVERGES]
    assert row["final_test_acc_mean"] == pytest.approx((sum(kept) + 2 * CHANCE) / 5)
    assert row["best_val_acc_mean"] == pytest.approx((sum(kept) - 3 * 0.05 + 2 * CHANCE) / 5)
    assert cell(folder, 0.0)["n_diverged"] == 0
    assert "2 diverged runs counted at chance accuracy" in stdout
    assert pd.read_csv(folder / "problems.csv").empty  # an outcome, not a problem run


def test_paired_comparisons_use_chance_for_the_diverged_runs(diverging):
    folder, _ = diverging
    f = pd.read_csv(folder / "findings.csv", keep_default_na=False, na_values=[""])
    row = f[(f.question == "Q1") & (f.comparison == "α=0: ε=-1 vs ε=0")].iloc[0]
    # Paired on all 5 seeds: +10 pp on seeds 0-2, chance minus ε = 0's 0.83 and 0.84 on 3-4.
    diffs = [acc(-1.0, s) - acc(0.0, s) if s not in DIVERGES else CHANCE - acc(0.0, s)
             for s in SEEDS]
    assert (row.n_pairs, row.n_a, row.n_b) == (5, 5, 5)
    assert row.effect_pp == pytest.approx(100 * sum(diffs) / 5)  # -23.4 pp, not +10 pp
    assert row.test == "paired sign-flip (exact)"


def test_a_setting_that_often_diverges_is_not_picked_on_its_survivors(diverging):
    """Its 3 surviving runs beat ε = 0 on validation (0.86 against 0.77); with its 2 diverged
    runs at chance it does not, and validation picks ε = 0."""
    folder, _ = diverging
    best = pd.read_csv(folder / "best_eps.csv").iloc[0]
    assert best["picked_smoothing"] == 0.0 and best["sign"] == "zero"
    assert cell(folder, -1.0)["best_val_acc_mean"] < cell(folder, 0.0)["best_val_acc_mean"]


def test_metrics_without_chance_leave_diverged_runs_out_and_say_so(diverging):
    folder, _ = diverging
    row = cell(folder, -1.0)
    assert row["final_test_loss_n"] == row["final_test_ece_n"] == row["final_test_nll_n"] == 3
    tables = folder / "tables"
    accuracy = (tables / "digits__cnn__symmetric_0.4__final_test_acc.md").read_text()
    assert "(5, 2 diverged at chance)" in accuracy and "counted at chance accuracy" in accuracy
    ece = (tables / "digits__cnn__symmetric_0.4__final_test_ece.md").read_text()
    assert "(3, 2 diverged left out)" in ece and "diverged runs left out" in ece
    smoothing = pd.read_csv(folder / "calibration.csv").set_index("method").loc["smoothing"]
    assert (smoothing["n"], smoothing["n_diverged"]) == (5, 2)
    assert smoothing["final_test_ece"] == pytest.approx(
        sum((1 - acc(-1.0, s)) / 10 for s in SEEDS if s not in DIVERGES) / 3)


def test_the_report_states_how_many_diverged_per_cell_and_the_rule(diverging):
    folder, _ = diverging
    report = (folder / "report.md").read_text()
    section = report.split("## Diverged runs")[1].split("\n## ")[0]
    assert "2 of 10 runs diverged" in section
    (row,) = [line for line in section.splitlines() if "ε=-1" in line]
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "digits / cnn / symmetric 0.4", "α=0, ε=-1", "2 of 5"]
    assert "counts at chance accuracy, 1/K" in section and "intention to treat" in section
    assert "(loss, ECE, NLL, Brier score, memorisation) leave diverged runs out" in section
    assert "10 runs with results, 8 completed, 2 diverged; 0 problem runs" in report


def test_a_study_without_divergence_says_so(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "study" / f"s{seed}", result(0.4, 0.0, 0.0, seed, 0.8))
    out, _ = analysed(tmp_path / "study", tmp_path / "out")
    report = (out / "report.md").read_text()
    assert "No run diverged. A run diverges when" in report
    assert pd.read_csv(out / "summary.csv")["n_diverged"].tolist() == [0]


def test_the_rule_gives_chance_for_measured_accuracies_only():
    assert diverged_value("final_test_acc", 100, 0.2) == pytest.approx(0.01)
    assert diverged_value("best_val_acc", 10, 0.2) == pytest.approx(0.1)
    assert math.isnan(diverged_value("best_val_acc", 10, 0.0))  # no validation split
    assert math.isnan(diverged_value("test_acc_at_best_val", 10, math.nan))
    for metric in ("final_test_loss", "final_test_ece", "final_test_nll", "final_memorized"):
        assert math.isnan(diverged_value(metric, 10, 0.2))


def test_the_number_of_classes_comes_from_the_config_or_the_top_level(tmp_path):
    cifar100 = config(0.4, 0.0, -1.0, **{"dataset.num_classes": 100})
    write_run(tmp_path / "a", diverged_result(-1.0, 3, config=cifar100))
    no_config = diverged_result(-1.0, 4, num_classes=4)
    del no_config["config"]
    write_run(tmp_path / "b", no_config)
    runs = load_runs([tmp_path])
    chance = runs.analysed.set_index("seed")["final_test_acc"]
    assert chance.to_dict() == {3: pytest.approx(0.01), 4: pytest.approx(0.25)}


def test_a_diverged_run_without_a_class_count_is_a_problem_not_dropped_silently(tmp_path):
    old = diverged_result(-1.0, 3)
    del old["config"]
    write_run(tmp_path / "old", old)
    write_run(tmp_path / "new", result(0.4, 0.0, -1.0, 0, 0.9))
    runs = load_runs([tmp_path])
    assert runs.analysed["status"].tolist() == ["completed"]
    (problem,) = runs.problems.to_dict("records")
    assert problem["status"] == "diverged" and "no dataset.num_classes" in problem["error"]


def test_failed_and_interrupted_runs_stay_out(tmp_path):
    write_run(tmp_path / "ok", result(0.4, 0.0, 0.0, 0, 0.8))
    for seed, status in ((1, "failed"), (2, "interrupted")):
        write_run(tmp_path / status, result(0.4, 0.0, 0.0, seed, 0.3, status=status))
    runs = load_runs([tmp_path])
    assert runs.analysed["seed"].tolist() == [0]
    assert sorted(runs.problems["status"]) == ["failed", "interrupted"]


def test_a_diverged_and_a_completed_run_of_one_seed_are_duplicates(tmp_path):
    write_run(tmp_path / "a", diverged_result(-1.0, 3))
    write_run(tmp_path / "b", result(0.4, 0.0, -1.0, 3, 0.9))
    with pytest.raises(AnalysisError, match="duplicate"):
        load_runs([tmp_path])


# --- re-analysis from runs.csv -----------------------------------------------------------


def _report_body(report: str) -> list[str]:
    """The report without the lines that name its input and its figures."""
    body = report.split("## Figures")[0].splitlines()
    return [line for line in body
            if not line.startswith("Runs read from:") and "read from a runs table" not in line]


@pytest.fixture(scope="module")
def reanalysed(tmp_path_factory):
    """A study with a diverged, a failed, an unfinished and a corrupt run and two panels,
    analysed from its run folders and then from that analysis' runs.csv alone."""
    root = tmp_path_factory.mktemp("csv")
    study = root / "study"
    write_study(study)
    write_run(study / "clean/s0", result(0.0, 0.0, 0.0, 0, 0.95))
    write_run(study / "failed", result(0.4, 0.0, 0.0, 7, 0.5, status="failed", error="OOM"))
    write_run(study / "unfinished", None)
    write_run(study / "corrupt", "{not json")
    with contextlib.redirect_stderr(io.StringIO()):
        first, _ = analysed(study, root / "first")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(first / "runs.csv"), "--out", str(root / "second"), "--quiet"]) == 0
    return first, root / "second"


def test_runs_csv_holds_every_column_the_analysis_reads(reanalysed):
    first, _ = reanalysed
    runs = pd.read_csv(first / "runs.csv")
    assert {"status", "error", "seed", "noise_seed", "mixup_alpha", "smoothing", "noise_rate",
            "config.dataset.num_classes", "config.trainer.lr", "final_test_acc",
            "best_val_acc", "final_test_ece", "run_dir"} <= set(runs.columns)
    assert sorted(runs["status"].unique()) == ["completed", "diverged", "failed"]


@pytest.mark.parametrize("name", ["findings.csv", "summary.csv", "problems.csv", "runs.csv",
                                  "best_eps.csv", "calibration.csv", "variance_split.csv"])
def test_reanalysis_of_runs_csv_gives_the_same_tables(reanalysed, name):
    first, second = reanalysed
    assert (second / name).read_text() == (first / name).read_text()


def test_reanalysis_of_runs_csv_gives_the_same_report_and_tables(reanalysed):
    first, second = reanalysed
    tables = sorted(p.name for p in (first / "tables").iterdir())
    assert tables == sorted(p.name for p in (second / "tables").iterdir())
    for name in tables:
        assert (second / "tables" / name).read_text() == (first / "tables" / name).read_text()
    old, new = ((d / "report.md").read_text() for d in (first, second))
    assert _report_body(new) == _report_body(old)
    assert "## Diverged runs" in new and "2 of 11 runs diverged" in new
    assert "unfinished" in new and "corrupt" in new  # from the problems.csv beside runs.csv


def test_reanalysis_of_runs_csv_leaves_out_the_curves_and_says_so(reanalysed):
    first, second = reanalysed
    assert list((first / "plots").glob("*__curves.png"))
    assert not list((second / "plots").glob("*__curves.png"))
    assert list((second / "plots").glob("*__heatmap.png"))
    report = (second / "report.md").read_text()
    assert "12 runs were read from a runs table (`runs.csv`), which holds no per-epoch " \
           "metrics" in report
    assert "runs table" not in (first / "report.md").read_text()


def test_runs_csv_beside_its_analysis_is_reanalysed_beside_it(tmp_path):
    table = tmp_path / "study" / "analysis" / "runs.csv"
    table.parent.mkdir(parents=True)
    table.write_text("x\n")
    assert default_out([table]) == tmp_path / "study" / "analysis-reanalysis"


def test_a_csv_that_is_not_a_runs_table_is_refused(tmp_path, capsys):
    other = tmp_path / "summary.csv"
    other.write_text("dataset,n\ndigits,3\n")
    with pytest.raises(AnalysisError, match="not a runs table"):
        load_runs([other])
    assert main([str(other), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("analysis error:") and err.count("\n") == 1
