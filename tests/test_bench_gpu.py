"""make bench-gpu: its CPU dry run runs every step and writes the JSON and the table; plan=true's
output is read and projected; the table in docs/performance.md has a row per measurement and
is replaced in place. No figure is asserted: timings are the script's output on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from src.tools import bench_gpu
from src.tools.bench_gpu import parse_plan, projected_seconds
from src.tools.gpu_table import BEGIN, DOC, END, ROWS, render_table, update_doc
from tests.conftest import ROOT, module_env

PLAN = """Plan of mixup_paper_cifar10: 18 runs into outputs/mixup_paper_cifar10
grid:
  noise.rate: 0.2, 0.5, 0.8 (3)
finished already: 2 of 18 (skipped when it runs)
to run: 16, estimated 1:02:03 one at a time on this machine (16 threads):
     6 x 0:04:00  noise.rate=0.2  (200 epochs x 390 steps of 3.1 ms)
    10 x 0:03:00  noise.rate=0.5  (100 epochs x 390 steps of 4.5 ms)
Nothing was trained or written (plan=true).
"""


def test_plan_output_is_read_for_its_total_and_its_settings():
    total, settings = parse_plan(PLAN)
    assert total == {"runs": 16, "plan_estimate_s": 3723}
    assert settings == [{"runs": 6, "epochs": 200, "steps": 390},
                        {"runs": 10, "epochs": 100, "steps": 390}]
    assert parse_plan("Configuration error: ...") == (None, [])


def test_projection_is_steps_at_the_step_time_plus_evaluations_at_the_eval_rate():
    settings = [{"runs": 2, "epochs": 10, "steps": 100}, {"runs": 1, "epochs": 3, "steps": 50}]
    got = projected_seconds(settings, step_s=0.01, eval_every=2, eval_images=600,
                            eval_images_per_s=300)
    # 2 x (10 x 100 x 0.01 + 5 evaluations x 2 s) + 1 x (3 x 50 x 0.01 + 2 x 2 s)
    assert got == pytest.approx(2 * (10 + 10) + (1.5 + 4))


def report_with(steps: dict) -> dict:
    machine = {"torch": "2.x", "python": "3.x", "cpu_count": 16}
    return {"dry_run": False, "card": "NVIDIA H100", "machine": machine, "created_at": "now",
            "command": "python -m src.tools.bench_gpu", "wall_s": 400.0, "steps": steps}


def test_the_table_names_the_card_and_says_what_each_step_gave():
    ok = {"status": "ok", "figures": {"suite_images_per_s": 90_000.0, "bare_images_per_s": 1.0,
                                      "overhead_vs_bare": 0.02, "eval_images_per_s": None}}
    table = render_table(report_with({
        "throughput_512": ok,
        "throughput_128": {"status": "timeout", "figures": {}},
        "projection_answer_gpu": {"status": "not defined", "figures": {}},
    }))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(ROWS) + 1  # the header, then one row per measurement
    assert "NVIDIA H100" in table and table.startswith(BEGIN) and table.rstrip().endswith(END)
    assert "| 90,000 images/s | yes |" in rows[1] and "| +2.0% | yes |" in rows[4]
    assert "timeout (see its log) | no |" in rows[2]
    assert "not defined" in rows[-1] and "not measured" in rows[6]


def test_the_docs_table_is_replaced_between_its_markers(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Title\n\nbefore\n" + render_table(None) + "\nafter\n")
    update_doc(render_table(report_with({})), doc)
    text = doc.read_text()
    assert text.count(BEGIN) == text.count(END) == 1
    assert "before" in text and "after" in text and "NVIDIA H100" in text
    assert "Not measured yet" not in text
    fresh = tmp_path / "new.md"
    update_doc(render_table(None), fresh)  # no page yet: the table is the page
    assert fresh.read_text().startswith(BEGIN)


def test_docs_performance_holds_the_table_with_a_row_per_measurement():
    text = DOC.read_text()
    assert BEGIN in text and END in text
    for row in ROWS:
        assert f"| {row.label} | {row.target} |" in text


def test_options_that_cannot_work_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--dry-run", "--update-docs"])
    assert "--update-docs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--data", str(tmp_path / "none.npz")])
    assert "--data=" in capsys.readouterr().err


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """scripts/bench_gpu.sh --dry-run, as `make bench-gpu DRY=1` runs it: every step at tiny
    sizes, a study that does not exist reported as such, the JSON and the table written."""
    out = tmp_path / "bench_gpu"
    env = module_env({"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run(
        ["scripts/bench_gpu.sh", "--dry-run", "--out", str(out), "--experiments",
         "mixup_paper_cifar10", "answer_gpu", "no_such_study"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    steps = report["steps"]
    assert report["dry_run"] is True and os.path.isfile(out / "performance.md")
    assert {k for k, v in steps.items() if v["status"] != "ok"} == {"projection_no_such_study"}
    assert steps["projection_no_such_study"]["status"] == "not defined"
    assert "projection_no_such_study: not defined" in proc.stdout
    assert steps["throughput_128"]["figures"]["eval_images_per_s"] > 0
    assert steps["batched_launcher"]["figures"]["runs"] == 2
    assert steps["gpu_tests"]["figures"]["tests collected"] > 0
    for name in ("mixup_paper_cifar10", "answer_gpu"):
        figures = steps[f"projection_{name}"]["figures"]
        assert figures["runs"] > 0 and figures["projected_gpu_s"] > 0
    assert "DRY RUN" in (out / "performance.md").read_text()
    assert (out / "logs" / "launcher_batched.log").is_file()
