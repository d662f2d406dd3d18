"""Checkpoints: everything a job needs to continue exactly where it stopped.

A checkpoint holds the trainer's state (src.training.trainer.Trainer.state_dict: weights,
optimizer, schedule, scaler, every generator and, when a signal paused it, the position inside
the epoch) and the job's records so far. It is written atomically under a unique temporary
name; the previous one is kept as a fallback. Loading never runs code from the file
(`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from src.files import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; the checkpoint it replaces is kept as the fallback."""
    path = run_dir / CHECKPOINT

    def write(f: Any) -> None:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
        if path.exists():  # the new one is durable: the old one becomes the fallback
            os.replace(path, run_dir / PREVIOUS)

    atomic_write(path, write, binary=True)


def load_checkpoint(run_dir: Path, expected: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of this job's config, or None to start from scratch."""
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, corrupt, or not a checkpoint at all
            log.warning("checkpoint %s is unreadable (%s: %s); ignoring it", path,
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            continue
        if not isinstance(state, dict) or state.get("fingerprint") != expected:
            log.warning("checkpoint %s belongs to another configuration; ignoring it", path)
            continue
        return state
    return None


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoints (they can be large; results are kept)."""
    for name in (CHECKPOINT, PREVIOUS):
        (run_dir / name).unlink(missing_ok=True)
