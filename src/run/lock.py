"""One writer per run folder: an advisory lock held for as long as a job writes there.

Two copies of the same job (a sweep started twice, a requeue racing the original) would
otherwise write one folder at once. The lock is `fcntl.flock` on `<run_dir>/.lock`: the kernel
releases it when the process ends, however it ends, so a crashed job never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from src.errors import ConfigError

LOCK = ".lock"


class RunBusy(ConfigError):
    """Another process is writing the run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dirs: list[Path]) -> Iterator[None]:
    """Hold the lock of every folder, or raise RunBusy naming the one another process holds."""
    handles = []
    try:
        for run_dir in run_dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            f = open(run_dir / LOCK, "a+")  # noqa: SIM115 (held until the block ends)
            handles.append(f)
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise RunBusy("paths.run_dir", str(run_dir), "a run folder no other job is "
                              "writing", hint=f"held by pid {holder}; wait for it to finish, "
                              "or run this job into another folder") from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        yield
    finally:
        for f in handles:
            f.close()
