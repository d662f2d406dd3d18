"""Which run this is: its identity fields and the fingerprint of the settings that define
its numbers (not how, or where, it is executed)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import EXECUTION_KEYS, LOCATION_KEYS
from src.mixing import method_name

SECTIONS = ("dataset", "model", "augmentation", "noise", "trainer")


def _drop(section: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`section` without the dotted `keys` that belong to it."""
    own = {k.split(".", 1)[1] for k in keys if k.startswith(name + ".")}
    return {k: v for k, v in section.items() if k not in own}


def fingerprint(cfg: DictConfig) -> str:
    """Hash of dataset, model, augmentation, noise and trainer settings; 16 hex digits."""
    parts = {k: _drop(OmegaConf.to_container(cfg[k], resolve=True), k,
                      EXECUTION_KEYS + LOCATION_KEYS) for k in SECTIONS}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_identity(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """The keys that say which run this is (written into results.json and W&B)."""
    aug, noise = cfg.augmentation, cfg.noise
    return {
        "experiment": cfg.task_name,
        "group": group,
        "run_dir": str(cfg.paths.run_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "augmentation": aug.name,
        "method": method_name(float(aug.mixup_alpha), float(aug.smoothing)),
        "mixup_alpha": float(aug.mixup_alpha),
        "smoothing": float(aug.smoothing),
        "noise": noise.name,
        "noise_rate": float(noise.rate),
        "noise_seed": int(noise.seed),
        "noise_label_set": noise.get("label_set") if noise.name == "human" else None,
        "seed": int(cfg.trainer.seed),
        "epochs": int(cfg.trainer.epochs),
        "val_fraction": float(cfg.dataset.get("val_fraction", 0.0)),
    }
