"""Pre-emption: SIGTERM, SIGUSR1 and SIGUSR2 ask the run to checkpoint and stop.

SLURM sends SIGTERM (or the signal of `--signal`) before it pre-empts or times out a job;
submitit uses SIGUSR2 and requeues the job from its own handler. The handler here only sets
a flag; the training loop polls it between steps, saves a checkpoint, and then hands the
signal on to the previous handler (submitit's requeue), or exits with EXIT_RESUMABLE.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on request, rerun the same job to resume
SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None),
                            getattr(signal, "SIGUSR2", None)) if s is not None)


class Preempted(Exception):
    """The run saved its state and stopped because a signal asked it to."""

    def __init__(self, signum: int, previous: Any) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; rerun to resume")
        self.signum, self.previous = signum, previous

    def hand_on(self) -> None:
        """Let a handler installed before ours (submitit's requeue) act on the signal."""
        if callable(self.previous):
            self.previous(self.signum, None)


class StopFlag:
    """Callable that says whether a stop was requested, and by which signal."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def raise_if_set(self) -> None:
        if self.signum is not None:
            raise Preempted(self.signum, self.previous.get(self.signum))


@contextlib.contextmanager
def catch_preemption() -> Iterator[StopFlag]:
    """Install the flag-setting handlers for the duration of a run (main thread only)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.signum = signum

    for s in SIGNALS:
        flag.previous[s] = signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, prev in flag.previous.items():
            signal.signal(s, prev)
