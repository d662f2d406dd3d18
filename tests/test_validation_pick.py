"""A "best" cell is picked on the validation accuracy of the epoch its reported metric is read
from: `final_val_acc` for the last epoch (final_test_acc), `best_val_acc` for the best
validation epoch (test_acc_at_best_val). Runs recorded before `final_val_acc` existed get it
from their own metrics log; without it anywhere the picks fall back to `best_val_acc`, and the
report says which accuracy picked."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import analyse, load_runs
from analysis.stats import StatsOptions
from tests.test_analysis import result, write_run

SEEDS = range(5)
# ε = -0.4 is ε = 0 until its warm-up ends, so its best validation epoch is at least ε = 0's
# (planted higher here), but it ends lower: at the last epoch, on validation and on test.
RUNS = {  # ε: (best_val_acc, final_val_acc, final_test_acc, test_acc_at_best_val)
    0.0: (0.80, 0.70, 0.75, 0.60),
    -0.4: (0.85, 0.50, 0.55, 0.65),
}


def write_study(study: Path, *, record_final: bool, log_val: bool) -> None:
    """Two cells (α = 0; ε = 0 and -0.4) × 5 seeds at 40 % noise. `record_final`: results.json
    has `final_val_acc` (else it is older than the key); `log_val`: metrics.jsonl's epochs have
    `val_acc`, the last one the final validation accuracy."""
    for eps, (best_val, final_val, final_test, at_best) in RUNS.items():
        for seed in SEEDS:
            res = result(0.4, 0.0, eps, seed, final_test + seed / 1000,
                         best_val_acc=best_val + seed / 1000, test_acc_at_best_val=at_best)
            if record_final:
                res["final_val_acc"] = final_val + seed / 1000
            folder = write_run(study / f"e={eps}" / f"seed={seed}", res)
            if log_val:
                rows = [{"epoch": 1, "test_acc": 0.5, "val_acc": best_val + seed / 1000},
                        {"epoch": 2, "test_acc": final_test, "val_acc": final_val + seed / 1000}]
                (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                              for r in rows))


def picks(study: Path, metric: str = "final_test_acc") -> tuple[pd.DataFrame, str]:
    """best_eps.csv and report.md of the study analysed on `metric`."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        folder = analyse([study], study.parent / f"{study.name}-{metric}",
                         stats=StatsOptions(metric=metric), figure_formats=())
    return pd.read_csv(folder / "best_eps.csv"), (folder / "report.md").read_text()


@pytest.mark.parametrize("record_final", [True, False], ids=["recorded", "from-the-log"])
def test_last_epoch_metrics_are_picked_on_the_last_epochs_validation(tmp_path, record_final):
    study = tmp_path / "study"
    write_study(study, record_final=record_final, log_val=True)
    runs = load_runs([study]).completed
    want = {(eps, s): RUNS[eps][1] + s / 1000 for eps in RUNS for s in SEEDS}
    assert {(r.smoothing, r.seed): r.final_val_acc for r in runs.itertuples()} == \
        pytest.approx(want)
    best, report = picks(study)
    (row,) = best.to_dict("records")
    assert row["picked_smoothing"] == 0.0 and row["picked_on"] == "final_val_acc"
    assert row["picked_val_acc"] == pytest.approx(0.702)
    assert "highest mean `final_val_acc`" in report
    # Read at the best validation epoch, the metric is picked on that epoch's accuracy.
    best, report = picks(study, "test_acc_at_best_val")
    (row,) = best.to_dict("records")
    assert row["picked_smoothing"] == -0.4 and row["picked_on"] == "best_val_acc"
    assert "highest mean `best_val_acc`" in report


def test_without_a_last_epoch_validation_the_pick_falls_back_and_says_so(tmp_path):
    study = tmp_path / "study"
    write_study(study, record_final=False, log_val=False)
    assert load_runs([study]).completed["final_val_acc"].isna().all()
    best, report = picks(study)
    (row,) = best.to_dict("records")
    assert row["picked_on"] == "best_val_acc" and row["picked_smoothing"] == -0.4
    assert "highest mean `best_val_acc`" in report


def test_a_partly_recorded_final_val_acc_never_picks_cell_by_cell():
    from analysis.questions import pick_on_validation, validation_metric

    cells = pd.DataFrame({"mixup_alpha": [0.0, 0.0], "smoothing": [0.0, -0.4],
                          "best_val_acc_mean": [0.80, 0.85],
                          "final_val_acc_mean": [0.70, float("nan")]})
    # A NaN is never picked, so a cell without the value would lose by its absence alone.
    assert validation_metric(cells, "final_test_acc") == "best_val_acc"
    assert pick_on_validation(cells, "final_test_acc")["smoothing"] == -0.4
    full = cells.assign(final_val_acc_mean=[0.70, 0.50])
    assert pick_on_validation(full, "final_test_acc")["smoothing"] == 0.0
    assert pick_on_validation(full, "test_acc_at_best_val")["smoothing"] == -0.4


def test_a_diverged_run_counts_at_chance_on_the_last_epochs_validation_too():
    from analysis.outcomes import diverged_value

    assert diverged_value("final_val_acc", 10, 0.1) == pytest.approx(0.1)
    assert math.isnan(diverged_value("final_val_acc", 10, 0.0))  # no split: nothing measured


def test_a_panel_with_a_run_lacking_final_val_acc_is_picked_on_best_val_acc_throughout():
    from analysis.aggregate import one_validation

    cells = pd.DataFrame({"final_val_acc_mean": [0.7, 0.5], "final_val_acc_n": [10, 10],
                          "best_val_acc_n": [10, 10]})
    assert one_validation(cells)["final_val_acc_mean"].tolist() == [0.7, 0.5]
    short = cells.assign(final_val_acc_n=[10, 9])  # one old run without it
    assert one_validation(short)["final_val_acc_mean"].isna().all()


def test_the_early_stopped_accuracy_can_be_the_compared_metric(tmp_path):
    from analysis.__main__ import main

    study = tmp_path / "study"
    write_study(study, record_final=True, log_val=True)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(study), "--out", str(tmp_path / "a"), "--figures", "none", "--quiet",
                     "--metric", "test_acc_at_best_val"]) == 0
    findings = pd.read_csv(tmp_path / "a" / "findings.csv")
    assert set(findings["metric"]) == {"test_acc_at_best_val"}
    (row,) = pd.read_csv(tmp_path / "a" / "best_eps.csv").to_dict("records")
    assert row["picked_on"] == "best_val_acc" and row["picked_smoothing"] == -0.4
