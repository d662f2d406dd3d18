"""Run progress (src.run.progress) and sweep progress (src.sweep.progress): the lines they write."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from analysis.callback import SweepEnd
from src.run.progress import Progress, format_duration
from src.sweep.progress import SweepProgress, count_jobs, sweep_line
from tests.conftest import module_env


class FakeClock:
    """Seconds that move only when told: ETAs become exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _row(epoch: int, val: bool = True) -> dict:
    row = {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": 0.5 + epoch / 100,
           "test_acc": 0.6 + epoch / 100, "images_per_s": 20000.0 + epoch}
    if val:
        row["val_acc"] = 0.55 + epoch / 100
    return row


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "src.run.progress"]


def _train(progress: Progress, clock: FakeClock, epochs: range, seconds: float = 10.0,
           steps: int = 5) -> None:
    for epoch in epochs:
        progress.start_epoch(epoch)
        for _ in range(steps):
            progress.step()
        clock.now += seconds
        progress.end_epoch(_row(epoch))
    progress.close()


def test_one_line_per_epoch_with_job_id_and_eta_without_a_terminal(caplog, capsys):
    caplog.set_level(logging.INFO, logger="src.run.progress")
    clock = FakeClock()
    progress = Progress("auto", epochs=3, steps_per_epoch=5, desc="quickstart/mixup/s1",
                        job="7", clock=clock)
    _train(progress, clock, range(1, 4))
    lines = _lines(caplog)
    assert len(lines) == 3
    assert all(line.startswith("[job 7] quickstart/mixup/s1 epoch ") for line in lines)
    assert "epoch 1/3 loss 1.0000 train_acc 0.5100 val_acc 0.5600 test_acc 0.6100" in lines[0]
    assert "20,001 img/s" in lines[0]
    assert lines[0].endswith("10.0 s/epoch, ETA 0:00:20")
    assert lines[1].endswith("10.0 s/epoch, ETA 0:00:10")
    assert lines[2].endswith("done in 0:00:30")
    assert progress.steps == 5
    assert capsys.readouterr().err == ""  # no bar where there is no terminal


def test_line_without_job_or_validation(caplog):
    caplog.set_level(logging.INFO, logger="src.run.progress")
    progress = Progress(False, epochs=2, steps_per_epoch=3, clock=FakeClock())
    progress.start_epoch(1)
    progress.end_epoch(_row(1, val=False))
    (line,) = _lines(caplog)
    assert line.startswith("epoch 1/2 loss") and "[job" not in line and "val_acc" not in line


def test_resumed_run_eta_counts_the_epochs_of_this_process(caplog):
    caplog.set_level(logging.INFO, logger="src.run.progress")
    clock = FakeClock()
    progress = Progress(False, epochs=10, steps_per_epoch=5, clock=clock)
    _train(progress, clock, range(7, 9), seconds=4.0)  # resumed after epoch 6
    lines = _lines(caplog)
    assert lines[0].endswith("4.0 s/epoch, ETA 0:00:12")  # 3 epochs left at 4 s
    assert lines[1].endswith("4.0 s/epoch, ETA 0:00:08")


def test_bar_on_a_terminal_is_cleared_before_the_epoch_line(caplog, capsys, monkeypatch):
    caplog.set_level(logging.INFO, logger="src.run.progress")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    clock = FakeClock()
    progress = Progress("auto", epochs=2, steps_per_epoch=4, desc="run", batch_size=64,
                        clock=clock)
    assert progress.live
    _train(progress, clock, range(1, 3), steps=4)
    err = capsys.readouterr().err
    assert "run epoch 1/2" in err and "run epoch 2/2" in err
    assert "steps [" in err and "img/s]" in err  # steps, images/s, ETA
    assert len(_lines(caplog)) == 2  # the log (train.log) still gets its line per epoch
    # Under a parallel launcher "auto" means no bar, even on a terminal.
    assert not Progress("auto", epochs=2, steps_per_epoch=4, job="3").live


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(-1) == "0:00:00"


def _hydra_cfg(params: dict, task: list[str], target: str = "BasicSweeper"):
    return OmegaConf.create({"hydra": {
        "sweeper": {"_target_": f"hydra._internal.core_plugins.basic_sweeper.{target}",
                    "params": params},
        "overrides": {"task": task}, "sweep": {"dir": "outputs/x"}, "job": {"num": 0}}})


def test_count_jobs_expands_the_grid_as_the_basic_sweeper_does():
    # The command line replaces a param's axis (seed: 3 values, not 2); c=1 is a single value.
    cfg = _hydra_cfg({"a": "0,0.2,0.4", "trainer.seed": "0,1"},
                     ["trainer.seed=0,1,2", "c=1", "model=cnn,mlp"])
    assert count_jobs(cfg) == 3 * 3 * 2
    assert count_jobs(_hydra_cfg({}, ["x=1"])) == 1
    assert count_jobs(_hydra_cfg({"a": "1,2"}, [], target="OptunaSweeper")) is None


def test_sweep_line():
    assert sweep_line(1, 4, 2.0) == "job 1/4, elapsed 0:00:02"
    assert sweep_line(3, 4, 20.0) == "job 3/4, elapsed 0:00:20, ETA 0:00:20"
    assert sweep_line(5, None, 20.0) == "job 5, elapsed 0:00:20"


def test_sweep_progress_logs_each_job_of_a_multirun_only(caplog):
    caplog.set_level(logging.INFO, logger="src.sweep.progress")
    clock = FakeClock()
    callback = SweepProgress(clock=clock)
    job = _hydra_cfg({"a": "1,2,3"}, [])
    callback.on_job_start(job)  # a single run: no sweep line
    assert not caplog.records
    callback.on_multirun_start(job)
    for num in range(3):
        job.hydra.job.num = num
        callback.on_job_start(job)
        clock.now += 30
    callback.on_multirun_end(job)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["sweep of 3 jobs in outputs/x", "job 1/3, elapsed 0:00:00",
                     "job 2/3, elapsed 0:00:30, ETA 0:01:00",
                     "job 3/3, elapsed 0:01:00, ETA 0:00:30", "3 jobs finished in 0:01:30"]


APP = """
import hydra
from src.run.progress import Progress

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    progress = Progress("auto", epochs=3, steps_per_epoch=2, desc=f"x={cfg.x}")
    for epoch in range(1, 4):
        progress.start_epoch(epoch)
        progress.step(2)
        progress.end_epoch({"epoch": epoch, "train_loss": 0.5, "train_acc": 0.5,
                            "test_acc": 0.5, "images_per_s": 100.0})

if __name__ == "__main__":
    main()
"""


def test_hydra_job_logs_get_one_line_per_epoch_and_the_sweep_line(tmp_path: Path):
    """Through Hydra itself: its job log file (train.log for src.train) holds the lines."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    out = subprocess.run(
        [sys.executable, "app.py", "-m", "+x=1,2", "hydra.sweep.dir=sweep",
         "hydra.sweep.subdir=${hydra.job.num}",
         "+hydra.callbacks.progress._target_=src.sweep.progress.SweepProgress",
         "+hydra.callbacks.sweep_end._target_=analysis.callback.SweepEnd"],
        cwd=tmp_path, env=module_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for num in (0, 1):
        log = (tmp_path / "sweep" / str(num) / "app.log").read_text().splitlines()
        epochs = [line for line in log if f"x={num + 1} epoch " in line]
        assert len(epochs) == 3, log
        assert any(f"job {num + 1}/2, elapsed" in line for line in log), log
    # SweepEnd: where the runs are and the command that analyses them (no results.json here).
    assert "Sweep finished: no runs in sweep" in out.stdout
    assert "Analyse them with: python -m analysis sweep" in out.stdout


def _results(folder: Path, status: str) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"status": status}))


def test_sweep_end_says_where_the_runs_are_and_how_to_analyse_them(tmp_path, capsys):
    sweep = tmp_path / "outputs" / "my sweep"
    _results(sweep / "a" / "seed=0", "completed")
    _results(sweep / "a" / "seed=1", "completed")
    _results(sweep / "b" / "seed=0", "failed")
    (sweep / "b" / "seed=1").mkdir()
    (sweep / "b" / "seed=1" / "results.json").write_text("{half")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SweepEnd().on_multirun_end(cfg)
    out = capsys.readouterr().out
    assert f"Sweep finished: 4 runs (2 completed, 1 failed, 1 unreadable) in {sweep}" in out
    assert f"Analyse them with: python -m analysis '{sweep}'" in out  # quoted for the shell
    assert "hydra.callbacks.analysis.quiet=true" in out
    # A study whose analysis callback wrote its report: the report is named instead.
    (sweep / "analysis").mkdir()
    (sweep / "analysis" / "report.md").write_text("# report")
    study = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "callbacks": {
        "analysis": {"_target_": "analysis.callback.AnalyseSweep", "quiet": True}}}})
    SweepEnd().on_multirun_end(study)
    out = capsys.readouterr().out
    assert f"Report: {sweep / 'analysis' / 'report.md'}" in out
    assert "Analyse them with" not in out


@pytest.mark.parametrize("mode", [True, False])
def test_close_without_an_epoch_is_harmless(mode):
    progress = Progress(mode, epochs=1, steps_per_epoch=1)
    progress.step()
    progress.close()
    assert progress.steps == 1
