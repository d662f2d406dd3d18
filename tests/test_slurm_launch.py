"""What the cluster launchers decide without a cluster: the thread count inside a SLURM
allocation, the signal policy inside a submitit job, and batched_slurm's keys. The same
behaviour against a real scheduler: tests/cluster (make test-cluster)."""

from __future__ import annotations

import os
import signal

import pytest

from src.run.signals import EXIT_RESUMABLE, SIGNALS
from src.run.submitit_job import signal_policy
from src.training import threads

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE",
              "SLURM_NTASKS_PER_NODE", "LSMIX_JOBS")


@pytest.fixture
def outside_slurm(monkeypatch):
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    return monkeypatch


def test_auto_threads_are_the_allocations_cpus_whatever_else_runs(outside_slurm):
    outside_slurm.setattr(threads, "concurrent_jobs", lambda jobs=None: 4)  # busy machine
    assert threads.choose_threads("auto") == 2  # outside SLURM: shared
    outside_slurm.setenv("SLURM_JOB_ID", "7")
    outside_slurm.setenv("SLURM_CPUS_ON_NODE", "6")
    assert threads.choose_threads("auto") == 6  # the job's CPUs, one task
    outside_slurm.setenv("SLURM_NTASKS_PER_NODE", "2")
    assert threads.choose_threads("auto") == 3
    outside_slurm.setenv("SLURM_CPUS_PER_TASK", "5")
    assert threads.choose_threads("auto") == 5
    outside_slurm.setenv("SLURM_CPUS_PER_TASK", "16")
    assert threads.choose_threads("auto") == 8  # never more than the process may use
    assert threads.choose_threads(1) == 1  # a fixed count stays fixed


def test_slurm_variables_without_a_job_change_nothing(outside_slurm):
    outside_slurm.setenv("SLURM_CPUS_PER_TASK", "2")  # e.g. left in a login shell
    assert threads.slurm_cores() is None
    outside_slurm.setenv("SLURM_JOB_ID", "7")
    outside_slurm.setenv("SLURM_CPUS_PER_TASK", "0")
    assert threads.slurm_cores() is None


@pytest.fixture
def submitit_handler(monkeypatch):
    """A stand-in for submitit's SIGUSR2 handler, installed as submitit installs its own."""
    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    yield calls
    SIGNALS.restore()
    signal.signal(signal.SIGUSR2, before)


def test_in_a_submitit_job_a_signal_stops_the_run_then_reaches_submitit(submitit_handler):
    handler = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(SystemExit) as info, signal_policy():
        with SIGNALS.deferred():  # the training loop: the signal only sets the flag
            os.kill(os.getpid(), signal.SIGUSR2)
            assert SIGNALS() and submitit_handler == []
        SIGNALS.raise_if_requested()  # the loop checkpoints, then stops
    assert submitit_handler == [signal.SIGUSR2]  # then submitit requeues
    assert info.value.code == EXIT_RESUMABLE  # a handler that returns: resumable
    assert signal.getsignal(signal.SIGUSR2) is handler  # submitit's again


def test_outside_a_submitit_job_the_policy_is_the_entry_points(submitit_handler, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    handler = signal.getsignal(signal.SIGUSR2)
    with signal_policy():
        assert signal.getsignal(signal.SIGUSR2) is handler and not SIGNALS.previous


def test_batched_slurm_has_submitit_slurms_keys_and_max_members():
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf

    import hydra_plugins.lsmix_batched_launcher.config  # noqa: F401  (registers them)

    node = OmegaConf.to_container(
        ConfigStore.instance().load("hydra/launcher/batched_slurm.yaml").node)
    slurm = OmegaConf.to_container(OmegaConf.structured(SlurmQueueConf))
    assert node.pop("_target_").endswith("slurm_launcher.BatchedSlurmLauncher")
    assert node.pop("max_members") == 16 and node.pop("stack") == "auto"
    slurm.pop("_target_")
    assert node == slurm  # every key and default of submitit_slurm


def test_runs_failed_during_this_sweep_are_listed_whatever_the_launcher(tmp_path):
    import json
    import os

    from analysis.callback import failed_in_this_sweep

    old, new, ok = (tmp_path / n for n in ("a/seed=0", "b/seed=0", "c/seed=0"))
    for folder, status in ((old, "failed"), (new, "failed"), (ok, "completed")):
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"status": status, "error": "boom"}))
    os.utime(old / "results.json", (1, 1))  # failed in an earlier sweep into the folder
    (tmp_path / "multirun.yaml").write_text("{}")
    os.utime(tmp_path / "multirun.yaml", (10, 10))
    assert failed_in_this_sweep(tmp_path) == [f"{new}: failed: boom"]
    (ok / "results.json").write_text(json.dumps({"status": "interrupted", "error": None}))
    assert failed_in_this_sweep(tmp_path) == [f"{new}: failed: boom", f"{ok}: interrupted"]


def test_batched_slurm_plans_for_the_device_its_jobs_ask_for():
    from hydra_plugins.lsmix_batched_launcher.slurm_launcher import BatchedSlurmLauncher

    assert BatchedSlurmLauncher()._job_device() == "cpu"
    assert BatchedSlurmLauncher(gpus_per_node=1)._job_device() == "cuda"
    assert BatchedSlurmLauncher(gres="gpu:h100:1")._job_device() == "cuda"
