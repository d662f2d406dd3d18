"""One signal policy for the whole life of the process.

SLURM sends SIGTERM (or the signal of `--signal`) before it pre-empts or times out a job;
submitit uses SIGUSR2 and requeues the job from its own handler; a person presses Ctrl-C
(SIGINT). Whatever the process is doing when one arrives:

* inside the epoch loop (`SIGNALS.deferred()`), the handler only sets a flag: the loop polls it
  between steps, saves a checkpoint and then raises `Stopped`;
* while an entry point imports its modules (`SIGNALS.hold()` until `release()` in its main
  function), likewise: the flag is acted on once the entry's own code runs;
* anywhere else (start-up, data loading, skipping completed runs, between the jobs of a
  sweep), the handler raises `Stopped` at once: there is nothing to save yet.

`Stopped` derives from BaseException, so it passes through Hydra's and the jobs' `except
Exception` to the entry point, which marks the run `interrupted`, hands the signal on to a
handler installed before ours (submitit's requeue) and exits with EXIT_RESUMABLE (75: rerun
the same command to resume) or, for SIGINT, 130, without a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on request, rerun the same job to resume
EXIT_SIGINT = 130  # the shell's convention for a command ended by Ctrl-C
HANDLED = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None),
                            getattr(signal, "SIGUSR2", None)) if s is not None)


class Stopped(BaseException):
    """A signal asked the process to stop; what could be saved was saved."""

    def __init__(self, signum: int, previous: Any = None) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; rerun to resume")
        self.signum, self.previous = signum, previous

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signum == signal.SIGINT else EXIT_RESUMABLE

    def hand_on(self) -> None:
        """Let a handler installed before ours (submitit's requeue) act on the signal."""
        if callable(self.previous) and self.previous not in (signal.default_int_handler,):
            self.previous(self.signum, None)


class SignalPolicy:
    """The process's handler: raise at once, or (inside `deferred`) set a flag to poll."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}
        self._deferring = 0
        self._held = False

    def install(self) -> None:
        """Take over the handled signals (main thread only; once per process)."""
        if self.previous or threading.current_thread() is not threading.main_thread():
            return
        for s in HANDLED:
            self.previous[s] = signal.signal(s, self._handle)

    def hold(self) -> None:
        """Install now, but only note a signal until `release`: for the imports an entry
        point runs before its main function, where a raised `Stopped` would be a traceback."""
        self.install()
        if self.previous and not self._held:
            self._held = True
            self._deferring += 1

    def release(self) -> None:
        """End `hold`: from now on a signal raises at once, and one noted meanwhile raises
        here."""
        if self._held:
            self._held = False
            self._deferring -= 1
        self.raise_if_requested()

    def restore(self) -> None:
        """Give the signals back to the handlers found at install (tests; embedding code)."""
        for s, prev in self.previous.items():
            signal.signal(s, prev)
        self.previous.clear()
        self.pending = None
        if self._held:
            self._held = False
            self._deferring -= 1

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = signum
        if not self._deferring:
            raise Stopped(signum, self.previous.get(signum))

    @contextlib.contextmanager
    def deferred(self) -> Iterator[SignalPolicy]:
        """Signals only set the flag in this block (the training loop polls `requested`)."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1

    def __call__(self) -> bool:
        """Whether a stop was requested (the training loop's poll)."""
        return self.pending is not None

    def raise_if_requested(self) -> None:
        if self.pending is not None:
            raise Stopped(self.pending, self.previous.get(self.pending))


SIGNALS = SignalPolicy()
