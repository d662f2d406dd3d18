"""Nothing lost: resume after SIGKILL and SIGTERM, bad checkpoints, divergence, failures."""

import os
import signal
import subprocess
import sys
import time

import pytest

from src.files import read_json, write_json_atomic
from src.run.records import read_metrics
from tests.conftest import TINY, make_cfg, popen_module, run_module

# Long enough to be stopped in the middle, short enough for CI (~0.1 s an epoch).
LONG = ["trainer.epochs=30", "trainer.batch_size=32", "model=cnn", "model.channels=[16,32]",
        "trainer.checkpoint_interval_s=0",
        "trainer.progress=false", "augmentation=mixup_smoothing", "noise=symmetric",
        "noise.rate=0.3"]
SAME = ["final_test_acc", "best_test_acc", "best_epoch", "final_test_loss", "final_test_ece",
        "final_memorized", "final_recovered", "epochs_done", "status"]


def _popen(args, cwd):
    return popen_module(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(run_dir, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(read_metrics(run_dir / "metrics.jsonl")) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"run did not reach epoch {n}")


def _kill_after(args, cwd, run_dir, epochs, settle=0.0):
    """Start the run, SIGKILL it once `epochs` epochs are logged (and `settle` s later)."""
    proc = _popen(args, cwd)
    _wait_for_epochs(run_dir, epochs, proc)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _rerun_matches(args, cwd, run_dir, reference):
    """Run the job again to its end; its results equal the uninterrupted run's."""
    out = run_module(args, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    _same(read_json(run_dir / "results.json"), reference[0])
    return out


def _by_status(root):
    """Every results.json under root, by its status."""
    return {r["status"]: r for r in map(read_json, root.rglob("results.json"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run to compare every resumed run with."""
    d = tmp_path_factory.mktemp("ref")
    out = run_module(LONG + [f"hydra.run.dir={d / 'run'}"], cwd=d)
    assert out.returncode == 0, out.stderr[-3000:]
    return read_json(d / "run" / "results.json"), read_metrics(d / "run" / "metrics.jsonl")


def _same(a, b):
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_identical_results(tmp_path, reference):
    run_dir = tmp_path / "run"
    args = LONG + [f"hydra.run.dir={run_dir}"]
    _kill_after(args, tmp_path, run_dir, 5, settle=0.05)  # land inside an epoch
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "checkpoint.pt").exists()
    out = _rerun_matches(args, tmp_path, run_dir, reference)
    assert "resuming" in out.stderr + out.stdout
    got = read_metrics(run_dir / "metrics.jsonl")
    assert [r["test_acc"] for r in got] == [r["test_acc"] for r in reference[1]]
    assert not (run_dir / "checkpoint.pt").exists()  # removed once completed


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_mid_epoch_and_resumes_exactly(tmp_path, reference, sig):
    run_dir = tmp_path / "run"
    args = LONG + [f"hydra.run.dir={run_dir}", "trainer.checkpoint_every=0"]
    proc = _popen(args, tmp_path)
    _wait_for_epochs(run_dir, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    res = read_json(run_dir / "results.json")
    assert res["status"] == "interrupted" and sig.name in res["error"]
    assert (run_dir / "checkpoint.pt").exists()
    _rerun_matches(args, tmp_path, run_dir, reference)


@pytest.mark.slow
def test_truncated_checkpoint_is_reported_and_run_starts_over(tmp_path, reference):
    run_dir = tmp_path / "run"
    args = LONG + [f"hydra.run.dir={run_dir}"]
    _kill_after(args, tmp_path, run_dir, 3)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    (run_dir / "checkpoint.prev.pt").write_bytes(b"not a checkpoint")
    out = _rerun_matches(args, tmp_path, run_dir, reference)
    assert "unreadable" in out.stderr + out.stdout


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_is_never_unpickled_as_code(tmp_path):
    import pickle

    from src.training.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps({"fingerprint": "x", "e": Evil()}))
    assert load_checkpoint(tmp_path, "x") is None
    assert not (tmp_path / "pwned").exists()


def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = run_module(["-m", "model=mlp", "trainer.lr=50,0.05", "trainer.schedule=constant",
                      "trainer.epochs=3", "trainer.progress=false"], cwd=tmp_path)
    found = _by_status(tmp_path / "outputs")
    assert set(found) == {"diverged", "completed"}, out.stderr[-3000:]
    assert "non-finite" in found["diverged"]["error"]
    assert out.returncode == 0


def test_a_failing_job_does_not_stop_the_multirun(tmp_path, monkeypatch):
    from src import train as entry
    from src.run import preflight
    from src.training.trainer import Trainer

    original = Trainer.train_epoch

    def flaky(self, *args, **kwargs):
        if float(self.cfg["lr"]) == 0.07:
            raise RuntimeError("injected failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", flaky)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["src.train", "-m", *TINY, "trainer.epochs=1",
                                      "trainer.lr=0.07,0.05", "hydra/job_logging=disabled"])
    monkeypatch.setattr(preflight, "FAILED_JOBS", [])
    with pytest.raises(SystemExit) as info:
        entry.cli()
    assert info.value.code == 1
    found = _by_status(tmp_path / "outputs")
    assert set(found) == {"failed", "completed"}
    assert found["failed"]["error"] == "RuntimeError: injected failure"


def test_disk_full_leaves_previous_results_intact(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"status": "completed", "final_test_acc": 0.9})

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "failed"})
    assert read_json(path)["final_test_acc"] == 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_wandb_unreachable_run_completes_offline(tmp_path, monkeypatch):
    from src.run import loggers
    from src.train import train

    monkeypatch.setattr(loggers, "_SERVER_DOWN", False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg(TINY + ["trainer.epochs=1", "logger=wandb", "logger.mode=online",
                           "logger.init_timeout=5", f"logger.dir={tmp_path / 'wb'}"],
                   run_dir=tmp_path / "run")
    res = train(cfg)
    assert res["status"] == "completed"
    assert loggers._SERVER_DOWN
    assert list((tmp_path / "wb" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("args,needle", [
    (["model=resnet50"], "model"),
    (["dataset=mnist", "dataset.npz=/nonexistent/mnist.npz"], "dataset.npz"),
    (["noise=human", "noise.file=/nonexistent/CIFAR-10_human.pt"], "noise.file"),
    (["trainer.device=cuda:7"], "trainer.device"),
])
def test_cli_bad_input_exits_nonzero_without_traceback_or_outputs(tmp_path, args, needle):
    out = run_module(args, cwd=tmp_path)
    assert out.returncode != 0
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "outputs").rglob("*.json"))
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir()
                and p.name[:4].isdigit()]
