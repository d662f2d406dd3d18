"""How many CPU threads a run's torch uses: the cores it may use, shared by the jobs running.

Every torch process takes every core by default; two or three suite processes on a 2-core
machine then fight over them and each slows down 5-30x (measured: three concurrent 10-epoch
runs took 49 s with default threads, 9.8 s with one thread each). `trainer.threads: auto`
divides the cores this process may use (its CPU affinity, capped by a cgroup CPU quota) by the
number of suite jobs running at once on the machine: those a parallel launcher starts
(joblib's n_jobs, submitit's tasks per node), those started separately (every training process
registers itself in a folder while it runs), or LSMIX_JOBS when set. The count is taken again
at every epoch, so a run started alone gives cores back when others start, and takes them
again when they end. An integer sets the count itself.

Inside a SLURM job (submitit_slurm, batched_slurm, a plain sbatch script) `auto` is the CPUs
of the job's allocation instead: SLURM_CPUS_PER_TASK, else the job's CPUs on the node
(SLURM_CPUS_ON_NODE) shared by its tasks there. Other jobs on the node have allocations of
their own, so nothing is re-counted: the count stays the same for the life of the job and for
its requeued reruns, which is what bit-for-bit equal results need (another thread count sums
in another order).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
from pathlib import Path
from typing import Any

from src.files import user_cache_dir

RUNNING = Path(os.environ.get("LSMIX_RUNNING_DIR") or user_cache_dir() / "running")


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    return max(cores, 1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Registry:
    """The suite's training processes on this machine: one file per live process."""

    def __init__(self, folder: Path = RUNNING) -> None:
        self.folder = folder
        self.mine: Path | None = None

    def register(self) -> None:
        if self.mine is not None:
            return
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            self.mine = self.folder / str(os.getpid())
            self.mine.write_text("")
            atexit.register(self.unregister)

    def unregister(self) -> None:
        if self.mine is not None:
            self.mine.unlink(missing_ok=True)
            self.mine = None

    def count(self) -> int:
        """Live registered processes (this one included); stale files are removed."""
        live = 0
        with contextlib.suppress(OSError):
            for f in self.folder.iterdir():
                if f.name.isdigit() and pid_alive(int(f.name)):
                    live += 1
                else:
                    f.unlink(missing_ok=True)
        return max(live, 1)


REGISTRY = Registry()


def concurrent_jobs(launcher_jobs: int | None = None) -> int:
    """Jobs sharing the cores: LSMIX_JOBS, else the most of the launcher's parallel jobs and
    the suite's live training processes."""
    forced = os.environ.get("LSMIX_JOBS")
    if forced and forced.isdigit() and int(forced) > 0:
        return int(forced)
    return max(launcher_jobs or 1, REGISTRY.count())


def _positive(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def slurm_cores(launcher_jobs: int | None = None) -> int | None:
    """CPUs of this task's SLURM allocation (SLURM_CPUS_PER_TASK, else the job's CPUs on this
    node divided among its tasks there); None outside a SLURM job."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    per_task = _positive(os.environ.get("SLURM_CPUS_PER_TASK"))
    if per_task is not None:
        return per_task
    on_node = _positive(os.environ.get("SLURM_CPUS_ON_NODE"))
    if on_node is None:
        return None
    tasks = _positive(os.environ.get("SLURM_NTASKS_PER_NODE")) or launcher_jobs or 1
    return max(1, on_node // tasks)


def choose_threads(setting: Any, launcher_jobs: int | None = None) -> int:
    """The intra-op thread count for `trainer.threads` (auto or a positive integer)."""
    if setting != "auto":
        return int(setting)
    allocated = slurm_cores(launcher_jobs)
    if allocated is not None:  # the job's own CPUs, whatever else runs on the node
        return max(1, min(allocated, usable_cores()))
    return max(1, usable_cores() // concurrent_jobs(launcher_jobs))


def apply_threads(setting: Any, launcher_jobs: int | None = None) -> int:
    """Register this process, choose the count and give it to torch; returns it."""
    import torch

    REGISTRY.register()
    n = choose_threads(setting, launcher_jobs)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before inter-op work starts
        torch.set_num_interop_threads(n)
    return n


def launcher_jobs() -> int | None:
    """Parallel jobs of this sweep's launcher (joblib n_jobs, submitit tasks per node)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    for key in ("n_jobs", "tasks_per_node"):
        value = launcher.get(key)
        if isinstance(value, int) and value > 0:
            return value
        if isinstance(value, int) and value < 0:  # joblib: -1 means one per core
            return usable_cores()
    return None
