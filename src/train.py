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
from src.fingerprint import fingerprint
from src.preempt import EXIT_RESUMABLE, Preempted
from src.results import RESULTS, read_json
from src.validate import validate

log = logging.getLogger("src.train")


def train(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """Validate, then train one run (or return the results of a completed one)."""
    validate(cfg)
    if cfg.trainer.get("parallel_seeds"):  # several seeds as one batched model
        from src.multiseed import run_parallel
        return run_parallel(cfg, group)
    done = completed_results(cfg)
    if done is not None:
        return done
    from src.run import run  # torch is imported only once the config is known to be good

    return run(cfg, group=group)


def completed_results(cfg: DictConfig) -> dict[str, Any] | None:
    """With skip_completed, the results of this config's completed run in its directory
    (None when there is none); a completed run of another config there is an error."""
    run_dir = Path(cfg.paths.run_dir)
    done = read_json(run_dir / RESULTS)
    if not (cfg.skip_completed and done and done.get("status") == "completed"):
        return None
    if done.get("config_fingerprint") != fingerprint(cfg):
        # Hydra has rewritten .hydra/ already; results.json and config.yaml beside it
        # still describe the run that produced them, and they are kept as they are.
        raise ConfigError("skip_completed", True, "false to overwrite, or another sweep "
                          "folder", hint=f"{run_dir} holds a completed run of a different "
                          "configuration (see its config.yaml)")
    log.info("skipping %s: results.json says completed", run_dir)
    return done


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


_FAILED_JOBS: list[str] = []
# An absolute path, so the entry works however it is imported (module, test, launcher).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra's entry: returns the final test accuracy (for sweepers that optimise it)."""
    group, multirun = _hydra_context()
    run_dir = Path(cfg.paths.run_dir)
    try:
        results = train(cfg, group=group)
    except ConfigError as err:
        _drop_empty_run_dir(run_dir)
        print(f"Configuration error: {err}. Nothing was trained.", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        _FAILED_JOBS.append(f"{run_dir}: {err}")
        return None
    except Preempted as err:
        log.warning("%s: checkpoint saved in %s", err, run_dir)
        err.hand_on()  # submitit requeues the job from its own handler
        sys.exit(EXIT_RESUMABLE)  # the whole sweep stops: the machine is going away
    except Exception as err:
        # The run's results.json already says failed, with the error.
        log.exception("run failed")
        if not multirun:
            sys.exit(1)
        _FAILED_JOBS.append(f"{run_dir}: {type(err).__name__}: {err}")
        return None  # one failed job must not end the sweep
    return results.get("final_test_acc")


def cli() -> None:
    """Run Hydra's main; a sweep with failed jobs ends with a non-zero exit code."""
    main()
    if _FAILED_JOBS:
        print(f"{len(_FAILED_JOBS)} job(s) did not complete:", file=sys.stderr)
        for line in _FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
