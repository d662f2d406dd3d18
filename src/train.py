"""Entry point: `python -m src.train [overrides]`, or `-m` / `+experiment=NAME` for a sweep.

Thin by design: validate the composed config, skip a run that is already complete, hand the
rest to src.run. A failing job of a multirun is recorded as failed and the sweep goes on.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.errors import ConfigError
from src.results import RESULTS, is_completed, read_json
from src.validate import validate

log = logging.getLogger("src.train")


def train(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """Validate, then train one run (or return the results of a completed one)."""
    validate(cfg)
    run_dir = Path(cfg.paths.run_dir)
    if cfg.skip_completed and is_completed(run_dir):
        log.info("skipping %s: results.json says completed", run_dir)
        return read_json(run_dir / RESULTS) or {}
    from src.run import run  # torch is imported only once the config is known to be good

    return run(cfg, group=group)


def _hydra_context() -> tuple[str, bool]:
    """The sweep cell (override_dirname without the seed) and whether this is a multirun."""
    hc = HydraConfig.get()
    return hc.job.override_dirname, hc.mode == RunMode.MULTIRUN


def _drop_empty_run_dir(run_dir: Path) -> None:
    """Remove the folder of a job rejected before training, so that no stray folder looks
    like a run to the analysis. A folder that holds any result or checkpoint stays as it is."""
    keep = ("results.json", "metrics.jsonl", "checkpoint.pt")
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in keep):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra's entry: returns the final test accuracy (for sweepers that optimise it)."""
    group, multirun = _hydra_context()
    try:
        results = train(cfg, group=group)
    except ConfigError as err:
        _drop_empty_run_dir(Path(cfg.paths.run_dir))
        print(f"Configuration error: {err}. Nothing was trained.", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    except Exception:
        # The run's results.json already says failed, with the error.
        log.exception("run failed")
        if multirun:
            return None  # one failed job must not end the sweep
        raise
    return results.get("final_test_acc")


if __name__ == "__main__":
    main()
