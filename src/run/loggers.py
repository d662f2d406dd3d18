"""External experiment loggers: none, or Weights & Biases (one W&B run per job).

A W&B run reads like the study: a short name (study/method/α/ε[/noise]/seed), the resolved
config as nested sections plus the run's identity under `run`, per-epoch metrics in `train/`,
`val/`, `test/`, `noise/` and `perf/` sections against `epoch`, and the final and best figures
in the summary (`test/acc_final`, `test/acc_best`, ...). W&B's own console output (about 34
lines a job) is silenced; the job logs one line saying where its W&B run is.
"""

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


def _num(value: Any) -> str:
    """A number as short as it reads: 0.4, 1, 0.05."""
    return f"{float(value):g}"


def run_name(identity: Mapping[str, Any] | str) -> str:
    """The W&B name of a run, from its identity (src.run's run_identity): study / method /
    a<α> / e<ε> / noise and rate (absent without noise) / s<seed>, e.g.
    `quickstart/mixup_smoothing/a0.4/e0.1/symmetric0.4/s1`. Dataset and model are in the
    config. A string is taken as a ready name."""
    if isinstance(identity, str):
        return identity
    parts = [str(identity.get("experiment") or "run"), str(identity.get("method") or "")]
    if identity.get("mixup_alpha") is not None:
        parts.append(f"a{_num(identity['mixup_alpha'])}")
    if identity.get("smoothing") is not None:
        parts.append(f"e{_num(identity['smoothing'])}")
    noise, rate = identity.get("noise") or "none", float(identity.get("noise_rate") or 0)
    if noise == "human":  # CIFAR-10N: the label set is the noise
        parts.append(f"human-{identity.get('noise_label_set')}")
    elif noise != "none" and rate > 0:
        parts.append(f"{noise}{_num(rate)}")
    if identity.get("seed") is not None:
        parts.append(f"s{identity['seed']}")
    return "/".join(p for p in parts if p)


# Per-epoch keys (metrics.jsonl) outside the train_/val_/test_ prefixes, by section.
_SECTION = {"lr": "train/lr", "memorized": "noise/memorized", "recovered": "noise/recovered",
            "epoch_time_s": "perf/epoch_time_s", "images_per_s": "perf/images_per_s"}
_SPLITS = ("train", "val", "test")


def metric_key(key: str) -> str:
    """The W&B name of a per-epoch metric: `test_acc` -> `test/acc`, `memorized` ->
    `noise/memorized`; `epoch` (the step) and unknown keys stay as they are."""
    split, _, rest = key.partition("_")
    if split in _SPLITS and rest:
        return f"{split}/{rest}"
    return _SECTION.get(key, key)


# results.json's final and best figures, by their W&B summary names.
SUMMARY = {
    "final_test_acc": "test/acc_final", "best_test_acc": "test/acc_best",
    "best_epoch": "test/acc_best_epoch", "final_test_loss": "test/loss_final",
    "final_test_ece": "test/ece_final", "best_val_acc": "val/acc_best",
    "test_acc_at_best_val": "test/acc_at_best_val",
    "final_memorized": "noise/memorized_final", "final_recovered": "noise/recovered_final",
    "noise_rate_realized": "noise/rate_realized",
    "train_time_s": "perf/train_time_s", "eval_time_s": "perf/eval_time_s",
    "images_per_s": "perf/images_per_s", "epochs_done": "epochs_done", "status": "status",
    "error": "error",
}


def summary_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of a W&B run from its results object (null values left out)."""
    return {name: results[key] for key, name in SUMMARY.items() if results.get(key) is not None}


class WandbLogger(NullLogger):
    """One W&B run per job; falls back to offline mode when the server cannot be reached."""

    def __init__(self, cfg: Mapping[str, Any], config: dict[str, Any],
                 identity: Mapping[str, Any] | str, run_dir: str, resume: bool = False) -> None:
        import wandb

        self.wandb = wandb
        mode = str(cfg.get("mode", "online"))
        name = run_name(identity)
        if not isinstance(identity, str):
            config = {**config, "run": dict(identity)}  # method and the like: filters in W&B
        # W&B's folder defaults to the run's own, so a study's offline runs lie in its folder
        # (python -m src.tools.wandb_sync <study folder> uploads them all).
        wandb_dir = str(cfg.get("dir") or run_dir)
        kwargs = dict(project=cfg.get("project"), entity=cfg.get("entity"),
                      group=cfg.get("group"), tags=list(cfg.get("tags") or []), name=name,
                      config=config, dir=wandb_dir, job_type="train",
                      reinit="finish_previous", id=wandb_run_id(run_dir, resume),
                      resume="allow")
        os.makedirs(wandb_dir, exist_ok=True)
        # silent: none of W&B's banner, sync hints and run summary on the console; the job
        # says in one line where its run is (below).
        settings = dict(silent=True, init_timeout=float(cfg.get("init_timeout", 60)))
        global _SERVER_DOWN
        if mode == "online" and _SERVER_DOWN:
            mode = "offline"  # said once already; later jobs of the sweep need not wait again
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
        except Exception as err:  # network down, no credentials: keep training, keep the run
            if mode != "online":
                raise
            _SERVER_DOWN = True
            log.warning("W&B is unreachable (%s: %s). Training goes on and the runs of this "
                        "process are kept offline; upload them later with: "
                        "python -m src.tools.wandb_sync %s", type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "", wandb_dir)
            mode = "offline"
            # The failed attempt keeps its id busy in W&B's service: the offline run gets a
            # new one (stored, so a later resume of this job continues the offline run).
            kwargs["id"] = wandb_run_id(run_dir, resume=False)
            self.run = wandb.init(mode=mode, settings=wandb.Settings(silent=True), **kwargs)
        if mode == "online":
            log.info("W&B run %s: %s", name, self.run.url)
        else:
            log.info("W&B run %s is %s in %s", name, mode, wandb_dir)
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        self.run.log({metric_key(k): v for k, v in metrics.items()})

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        for key, value in summary_metrics({**summary, "status": status}).items():
            self.run.summary[key] = value
        self.run.finish(exit_code=0 if status == "completed" else 1)


def make_logger(cfg: Mapping[str, Any], config: dict[str, Any],
                identity: Mapping[str, Any] | str, run_dir: str,
                resume: bool = False) -> NullLogger:
    """The logger the `logger` config group chooses. config: the resolved config as nested
    dicts; identity: the run's identity (src.run's run_identity), which names the W&B run;
    resume: the job continues from its checkpoint, so its W&B run continues too."""
    if cfg.get("name", "none") == "wandb" and cfg.get("mode") != "disabled":
        return WandbLogger(cfg, config, identity, run_dir, resume)
    return NullLogger()
