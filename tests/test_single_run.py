"""What a single run (not a sweep) tells its user: where it went, how it ended, and after an
interrupt the exact command that resumes it in its folder; what it leaves there."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from src.files import read_json
from src.run.lock import LOCK, RunBusy, run_folder_lock
from src.train import train
from tests.conftest import TINY, make_cfg, module_env, popen_module, run_module

# Long enough to be stopped in the middle (~0.1 s an epoch), short enough for CI.
LONG = ["trainer.epochs=30", "trainer.batch_size=32", "model=cnn", "model.channels=[8,16]",
        "trainer.checkpoint_interval_s=0", "trainer.progress=false"]


def _metrics(root: Path) -> list[Path]:
    return sorted(root.glob("**/metrics.jsonl"))


def test_an_interrupted_single_run_prints_the_command_that_resumes_it(tmp_path):
    # An output folder whose name Hydra's grammar must read quoted (`=` and `,`).
    args = [*LONG, "paths.output_dir='out=a,b'"]
    proc = popen_module(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    deadline = time.time() + 180
    while not (_metrics(tmp_path) and _metrics(tmp_path)[0].read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run did not reach epoch 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    run_dir = _metrics(tmp_path)[0].parent
    assert read_json(run_dir / "results.json")["status"] == "interrupted"
    lines = err.splitlines()
    command = lines[lines.index("resume it with:") + 1].strip()
    argv = shlex.split(command)
    assert argv[1:3] == ["-m", "src.train"]
    assert argv[3:-1] == args and argv[-1].startswith("hydra.run.dir=")
    # The printed command, as the user would paste it: it continues the same run.
    out = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=module_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout + out.stderr
    assert _metrics(tmp_path) == [run_dir / "metrics.jsonl"]  # no new timestamped folder
    results = read_json(run_dir / "results.json")
    assert results["status"] == "completed" and results["epochs_done"] == 30
    assert "resuming" in (run_dir / "train.log").read_text()


def test_a_single_run_ends_with_its_folder_and_a_summary(tmp_path):
    out = run_module([*TINY, "trainer.epochs=1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = _metrics(tmp_path)[0].parent
    acc = read_json(run_dir / "results.json")["final_test_acc"]
    last = out.stdout.strip().splitlines()[-2:]
    assert last == [f"run folder: {run_dir.relative_to(tmp_path)}",
                    f"completed: final test accuracy {acc:.4f}, 1/1 epochs"]


def test_a_completed_run_leaves_no_lock_file(tmp_path):
    assert train(make_cfg([*TINY, "trainer.epochs=1"], run_dir=tmp_path))["status"] == \
        "completed"
    assert not (tmp_path / LOCK).exists()


def test_the_lock_file_is_removed_on_release_and_still_refuses_a_second_writer(tmp_path):
    with run_folder_lock([tmp_path]):
        assert (tmp_path / LOCK).is_file()
        try:
            with run_folder_lock([tmp_path]):
                raise AssertionError("a second writer got the folder")
        except RunBusy:
            pass
        assert (tmp_path / LOCK).is_file()  # the refused writer leaves the holder's file
    assert not (tmp_path / LOCK).exists()
    with run_folder_lock([tmp_path]):  # free again
        pass

