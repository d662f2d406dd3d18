"""The bench check's decision on given numbers (never a timing: the check itself is a
benchmark script, run on a quiet machine)."""

from __future__ import annotations

import json

import pytest

from src.tools.bench_check import TOLERANCE, judge, main


@pytest.mark.parametrize("overhead,ok", [
    (-0.03, True),   # faster than the bare loop (noise, or the bare loop's own costs)
    (0.0, True),
    (0.049, True),
    (0.05, True),    # exactly at the limit
    (0.0501, False),
    (0.25, False),
])
def test_the_suite_may_be_at_most_five_percent_behind_its_bare_loop(overhead, ok):
    verdict = judge({"overhead_vs_bare": overhead})
    assert TOLERANCE == 0.05
    assert verdict.ok is ok and verdict.exit_code == (0 if ok else 1)
    assert verdict.line.startswith("PASS" if ok else "FAIL")
    assert f"{abs(overhead):.1%}" in verdict.line


def test_a_tighter_tolerance_fails_what_the_default_passes():
    assert judge({"overhead_vs_bare": 0.04}).ok is True
    assert judge({"overhead_vs_bare": 0.04}, tolerance=0.03).ok is False


def test_a_report_without_the_figures_is_neither_pass_nor_fail():
    verdict = judge({"overhead_vs_bare": None})
    assert verdict.ok is None and verdict.exit_code == 2


@pytest.mark.parametrize("overhead,code", [(0.02, 0), (0.09, 1), (None, 2)])
def test_the_exit_code_of_a_written_report(tmp_path, capsys, overhead, code):
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"summary": {"overhead_vs_bare": overhead}}))
    with pytest.raises(SystemExit) as stop:
        main(["--report", str(report)])
    assert stop.value.code == code
    assert capsys.readouterr().out.strip()


def test_an_unreadable_report_and_a_bad_tolerance_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--report", str(tmp_path / "missing.json")])
    assert stop.value.code == 2 and "--report=" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--tolerance", "1.5"])
    assert stop.value.code == 2 and "--tolerance=1.5" in capsys.readouterr().err
