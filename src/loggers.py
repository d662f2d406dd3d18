"""External experiment loggers: none, or Weights & Biases (one W&B run per job)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")
_SERVER_DOWN = False  # set once W&B failed to connect in this process


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
        global _SERVER_DOWN
        if mode == "online" and _SERVER_DOWN:
            mode = "offline"  # said once already; later jobs of the sweep need not wait again
        try:
            timeout = float(cfg.get("init_timeout", 60))
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=timeout),
                                  **kwargs)
        except Exception as err:  # network down, no credentials: keep training, keep the run
            if mode != "online":
                raise
            _SERVER_DOWN = True
            log.warning("W&B is unreachable (%s: %s). Training goes on and the runs of this "
                        "process are kept offline; upload them later with: wandb sync %s",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "",
                        Path(kwargs["dir"]) / "wandb" / "offline-run-*")
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
