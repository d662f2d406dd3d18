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
from collections.abc import Mapping
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


# A run's model weights, apart from its checkpoint (which a completed run deletes): the final
# model and the one of the best noisy-validation accuracy, for src.eval to evaluate later.
LAST_WEIGHTS = "last.pt"
BEST_WEIGHTS = "best.pt"


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write a model's state_dict atomically and durably, on the CPU (readable without a GPU):
    `torch.load` and `model.load_state_dict` read it back without this suite."""
    cpu = {name: t.detach().cpu() for name, t in state_dict.items()}
    atomic_write(path, lambda f: torch.save(cpu, f), binary=True, fsync=True)


def load_weights(path: Path, member: int = 0) -> dict[str, torch.Tensor]:
    """A model's state_dict from a weights file (`save_weights`) or from a checkpoint (its
    trainer's weights; of a job that trained seeds together, member `member`'s, named as its
    own model's). ValueError when the file holds neither; torch's error when it is unreadable.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("trainer"), dict):
        state = state["trainer"].get("weights")
        if isinstance(state, dict) and set(state) == {"params", "buffers"}:  # stacked members
            state = {name: t[member] for name, t in (state["params"] | state["buffers"]).items()}
    if not (isinstance(state, dict) and state
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise ValueError(f"{path} holds no model weights (a state_dict or a checkpoint)")
    return state
