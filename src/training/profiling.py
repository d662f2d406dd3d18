"""torch.profiler over a few training steps of a run (trainer.profile=true, debug=profile)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

TRACE = "trace.json"
TABLE = "profile.txt"
# The first step skipped (one-off costs: allocations, cuDNN's algorithm search), one warm-up
# step (the profiler's own start-up), three recorded.
SCHEDULE = {"wait": 1, "warmup": 1, "active": 3, "repeat": 1}


def step_profiler(enabled: bool, run_dir: Path, device: torch.device
                  ) -> contextlib.AbstractContextManager[Any]:
    """A profiler to `.step()` after each training step (None when not `enabled`); when its
    recorded steps are done it writes run_dir/trace.json (a Chrome trace: chrome://tracing or
    ui.perfetto.dev) and run_dir/profile.txt (operators by total time)."""
    if not enabled:
        return contextlib.nullcontext(None)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def write(prof: profile) -> None:
        prof.export_chrome_trace(str(run_dir / TRACE))
        table = prof.key_averages().table(
            sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=30)
        (run_dir / TABLE).write_text(table + "\n")

    return profile(activities=activities, schedule=schedule(**SCHEDULE), on_trace_ready=write,
                   record_shapes=True)
