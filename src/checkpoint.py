"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the model, optimizer, scheduler and scaler states, the state of every
random generator the run draws from, the epoch (and, when a signal paused it, the position
inside the epoch) and the metrics so far. It is written atomically; the previous one is kept
as a fallback. Loading never runs code from the file (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from src.trainer import Trainer

log = logging.getLogger("src.train")

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """The trainer's full state: weights, optimiser, schedule, scaler, generators, paused epoch."""
    state = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "gen": trainer.gen.get_state(),
        "np_rng": trainer.np_rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),  # dropout draws from the global generator
        "epoch_state": trainer.epoch_state,
    }
    if trainer.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
    return state


def restore_trainer(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put a trainer back into the state `trainer_state` recorded."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.gen.set_state(state["gen"].cpu() if trainer.device.type == "cpu" else state["gen"])
    trainer.np_rng.bit_generator.state = state["np_rng"]
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)
    ep = state.get("epoch_state")
    if ep is not None:
        ep = {k: v.to(trainer.device) if torch.is_tensor(v) else v for k, v in ep.items()}
    trainer.epoch_state = ep


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; the checkpoint it replaces is kept as the fallback."""
    path, tmp = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, run_dir / PREVIOUS)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: Path, expected: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of this run's config, or None to start from scratch."""
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
