"""A short hash of the settings that define a run's numbers (not how it is executed)."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Trainer keys that change how a run executes or reports, not what it computes.
_EXECUTION_ONLY = {"progress", "device", "eval_batch_size", "compile", "checkpoint_every",
                   "keep_checkpoint", "parallel_seeds"}
# Where the data comes from is not what it is: the same archive may move.
_DATA_LOCATION = {"root", "npz", "download"}


def fingerprint(cfg: DictConfig) -> str:
    """Hash of dataset, model, augmentation, noise and trainer settings; 16 hex digits."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True)
             for k in ("dataset", "model", "augmentation", "noise", "trainer")}
    parts["trainer"] = {k: v for k, v in parts["trainer"].items() if k not in _EXECUTION_ONLY}
    parts["dataset"] = {k: v for k, v in parts["dataset"].items() if k not in _DATA_LOCATION}
    parts["noise"].pop("file", None)
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
