"""The suite's signal policy in a job that a submitit launcher runs (submitit_slurm,
submitit_local, batched_slurm).

There the process's entry point is submitit's, not src.train's `cli`, so without this the
suite's policy (src.run.signals) is not in place: submitit's own handler takes SLURM's
pre-emption and time-limit signal (SIGUSR2, `scancel --signal=USR2`, `--signal=USR2@120`)
wherever the step is, requeues the job and exits at once, without a checkpoint, and the
requeued job starts again from the last periodic one (trainer.checkpoint_interval_s).

`signal_policy()` puts the suite's policy in front of submitit's handler for the job: the
training loop finishes its step, checkpoints and marks the run `interrupted`, then hands the
signal on; submitit requeues the job and exits (or, past `max_num_timeout` time-outs, declines
with an error, which the job reports); the requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

from src.run.signals import SIGNALS, Stopped


def in_submitit_job() -> bool:
    """Whether this process runs a job for submitit (its executor sets SUBMITIT_EXECUTOR)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


@contextlib.contextmanager
def signal_policy() -> Iterator[None]:
    """Inside a submitit job, the suite's signal policy for the block, handed on to submitit's
    handler when a signal stops it; elsewhere (the entry point's own policy) nothing."""
    if not in_submitit_job() or SIGNALS.previous:
        yield
        return
    SIGNALS.install()
    try:
        yield
    except Stopped as stop:
        # submitit's own handlers again while it requeues. The requeue makes SLURM send
        # SIGTERM to every process of the job, `scontrol requeue` among them while submitit
        # waits for it: ignored meanwhile (a child process inherits that), so the requeue
        # command is never killed before it returns.
        SIGNALS.restore()
        term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stop.hand_on()  # submitit: requeue and exit, or raise when it will not requeue
        finally:
            signal.signal(signal.SIGTERM, term)
        sys.exit(stop.exit_code)  # a handler that only logged it: 75, resumable
    finally:
        SIGNALS.restore()
