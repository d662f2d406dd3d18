"""External experiment loggers: none, or Weights & Biases (one W&B run per job)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


class NullLogger:
    """Logs nothing: the run directory holds every result."""

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        """Record one evaluated epoch."""

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        """Close the run with its final summary."""


class WandbLogger(NullLogger):
    """One W&B run per job; falls back to offline mode when the server cannot be reached."""

    def __init__(self, cfg: Mapping[str, Any], config: dict[str, Any], name: str,
                 run_dir: str) -> None:
        import wandb

        self.wandb = wandb
        mode = str(cfg.get("mode", "online"))
        kwargs = dict(project=cfg.get("project"), entity=cfg.get("entity"),
                      group=cfg.get("group"), tags=list(cfg.get("tags") or []), name=name,
                      config=config, dir=str(cfg.get("dir") or run_dir), job_type="train",
                      reinit="finish_previous")
        os.makedirs(kwargs["dir"], exist_ok=True)
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=30), **kwargs)
        except Exception as err:  # network down, no credentials: keep training, keep the run
            if mode != "online":
                raise
            log.warning("W&B could not reach its server (%s); logging offline. Sync later "
                        "with: wandb sync %s", err, kwargs["dir"])
            self.run = wandb.init(mode="offline", **kwargs)
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        self.run.log(dict(metrics))

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        for k, v in summary.items():
            self.run.summary[k] = v
        self.run.finish(exit_code=0 if status == "completed" else 1)


def make_logger(cfg: Mapping[str, Any], config: dict[str, Any], name: str,
                run_dir: str) -> NullLogger:
    """The logger the `logger` config group chooses."""
    if cfg.get("name", "none") == "wandb" and cfg.get("mode") != "disabled":
        return WandbLogger(cfg, config, name, run_dir)
    return NullLogger()
