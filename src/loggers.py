"""External experiment loggers: none, or Weights & Biases (one W&B run per job)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SERVER_DOWN = False  # set once W&B failed to connect in this process


class NullLogger:
    """Logs nothing: the run directory holds every result."""

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        """Record one evaluated epoch."""

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        """Close the run with its final summary."""


# The W&B run id of a job, kept in its run directory: a job resumed from its checkpoint goes on
# logging into the same W&B run instead of opening a second one.
WANDB_ID = "wandb_run_id.txt"


def wandb_run_id(run_dir: str, resume: bool) -> str:
    """The job's W&B run id: the stored one when resuming, else a new one (then stored)."""
    path = Path(run_dir) / WANDB_ID
    if resume and path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [a-z0-9] too
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class WandbLogger(NullLogger):
    """One W&B run per job; falls back to offline mode when the server cannot be reached."""

    def __init__(self, cfg: Mapping[str, Any], config: dict[str, Any], name: str,
                 run_dir: str, resume: bool = False) -> None:
        import wandb

        self.wandb = wandb
        mode = str(cfg.get("mode", "online"))
        kwargs = dict(project=cfg.get("project"), entity=cfg.get("entity"),
                      group=cfg.get("group"), tags=list(cfg.get("tags") or []), name=name,
                      config=config, dir=str(cfg.get("dir") or run_dir), job_type="train",
                      reinit="finish_previous", id=wandb_run_id(run_dir, resume),
                      resume="allow")
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
            # The failed attempt keeps its id busy in W&B's service: the offline run gets a
            # new one (stored, so a later resume of this job continues the offline run).
            kwargs["id"] = wandb_run_id(run_dir, resume=False)
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
                run_dir: str, resume: bool = False) -> NullLogger:
    """The logger the `logger` config group chooses (`resume`: the job continues from its
    checkpoint, so its W&B run continues too)."""
    if cfg.get("name", "none") == "wandb" and cfg.get("mode") != "disabled":
        return WandbLogger(cfg, config, name, run_dir, resume)
    return NullLogger()
