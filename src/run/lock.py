"""One writer per run folder: an advisory lock held for as long as a job writes there.

Two copies of the same job (a sweep started twice, a requeue racing the original) would
otherwise write one folder at once. The lock is `fcntl.flock` on `<run_dir>/.lock`: the kernel
releases it when the process ends, however it ends, so a crashed job never leaves a stale lock
(only the file, which the next job locks again). A job that ends removes the file while it
still holds the lock; a job that locked a file removed meanwhile (it opened the file before
the holder removed it) locks the folder's new file instead, so two jobs never hold one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from src.errors import ConfigError

LOCK = ".lock"


class RunBusy(ConfigError):
    """Another process is writing the run folder."""


def _lock_one(run_dir: Path) -> IO[str]:
    """The folder's lock file, opened and locked by this process; RunBusy if another holds it."""
    path = run_dir / LOCK
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held until the job ends)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunBusy("paths.run_dir", str(run_dir), "a run folder no other job is "
                          "writing", hint=f"held by pid {holder}; wait for it to finish, "
                          "or run this job into another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()  # the file was removed by the job that held it: lock the folder's new one


@contextlib.contextmanager
def run_folder_lock(run_dirs: list[Path]) -> Iterator[None]:
    """Hold the lock of every folder, or raise RunBusy naming the one another process holds.
    The lock files are removed when the block ends (a run folder keeps no `.lock`)."""
    held: list[tuple[Path, IO[str]]] = []
    try:
        for run_dir in run_dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            f = _lock_one(run_dir)
            held.append((run_dir, f))
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        yield
    finally:
        for run_dir, f in held:
            with contextlib.suppress(OSError):  # removed while held: still ours to close
                (run_dir / LOCK).unlink()
            f.close()
