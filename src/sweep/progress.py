"""Where a sweep stands: a Hydra callback logging `job k/N, elapsed, ETA` as each job starts.

Registered in conf/hydra/default.yaml (hydra.callbacks.sweep_progress). N is counted the way
Hydra's basic sweeper expands the grid (its params, then the command line's overrides); with
another sweeper N is unknown and the line says `job k`. Under a parallel launcher each worker
holds a copy of this callback made when the sweep was launched, so the start time is shared
and the line is written by the job itself (into its own log, with its job number).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.run.progress import format_duration

log = logging.getLogger(__name__)


def count_jobs(config: DictConfig) -> int | None:
    """The number of jobs Hydra's basic sweeper makes of this multirun, or None when another
    sweeper runs it or the overrides cannot be counted here (e.g. a glob over a group)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = config.hydra
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(
            params + list(hydra_cfg.overrides.task))
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception:  # an uncountable grid only loses the "/N"
        return None
    return sum(len(batch) for batch in batches)


def sweep_line(k: int, total: int | None, elapsed_s: float) -> str:
    """`job k/N, elapsed H:MM:SS, ETA H:MM:SS`: the ETA assumes the jobs still to start take
    as long as those started so far (none before the second job)."""
    head = f"job {k}/{total}" if total else f"job {k}"
    line = f"{head}, elapsed {format_duration(elapsed_s)}"
    if total and k > 1:
        line += f", ETA {format_duration(elapsed_s / (k - 1) * (total - k + 1))}"
    return line


class SweepProgress(Callback):
    """Logs `job k/N, elapsed, ETA` at the start of each job of a multirun (not of a single run),
    and the sweep's size and time when it ends."""

    def __init__(self, clock: Any = time.time) -> None:
        # Wall time, not a monotonic clock: parallel workers compare it with the launcher's.
        self.clock = clock
        self.started: float | None = None
        self.total: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started, self.total = self.clock(), count_jobs(config)
        if self.total:
            log.info("sweep of %d jobs in %s", self.total, config.hydra.sweep.dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.started is None:  # a single run
            return
        k = int(config.hydra.job.num) + 1
        log.info(sweep_line(k, self.total, self.clock() - self.started))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.started is None:
            return
        jobs = f"{self.total} jobs" if self.total else "sweep"
        log.info("%s finished in %s", jobs, format_duration(self.clock() - self.started))
