"""Entry point: `python -m src.train [overrides]`, or `-m` / `+experiment=NAME` for a sweep.

Thin by design: validate the composed config, skip the runs that are already complete, hand
the rest to src.run.lifecycle. A failing job of a multirun is recorded as failed and the sweep
goes on; a signal stops the whole process (src.run.signals).
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

if not __package__:  # `python src/train.py`: Python put src/ on the path, not the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import src.config  # noqa: F401  (registers the resolver conf/hydra/default.yaml uses)
from src.config.validate import validate
from src.errors import ConfigError
from src.files import read_json
from src.run.identity import fingerprint
from src.run.lock import RunBusy
from src.run.records import RESULTS
from src.run.signals import SIGNALS, Stopped

log = logging.getLogger(__name__)
_SEED_DIR = re.compile(r"seed=\d+$")


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """The runs of a job: the config itself, or one per seed of `trainer.parallel_seeds`, each
    as a separate run of that seed would have it, writing to `.../seed=<each>`."""
    seeds = [int(s) for s in cfg.trainer.get("parallel_seeds") or []]
    if not seeds:
        return [cfg]
    run_dir = Path(cfg.paths.run_dir)
    out = []
    for seed in seeds:
        member = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True,
                                                         throw_on_missing=False))
        member.trainer.seed, member.trainer.parallel_seeds = seed, []
        member.paths.run_dir = str(run_dir.with_name(f"seed={seed}")
                                   if _SEED_DIR.search(run_dir.name) else run_dir / f"seed={seed}")
        out.append(member)
    return out


def train(cfg: DictConfig, group: str = "", spread: int | None = None) -> dict[str, Any]:
    """Validate, then train the job's runs (or return the results of completed ones).

    One run: its results object. Seeds trained together: {"final_test_acc": their mean,
    "runs": each seed's results object}.
    """
    validate(cfg)
    check_data(cfg)
    members = member_configs(cfg)
    done = [completed_results(m) for m in members]
    todo = [m for m, d in zip(members, done) if d is None]
    if todo:
        from src.run.lifecycle import run_job  # torch is imported only for a good config

        trained = iter(run_job(todo, group, spread))
        done = [d if d is not None else next(trained) for d in done]
    if len(members) == 1:
        return done[0]
    accs = [r["final_test_acc"] for r in done if r.get("final_test_acc") is not None]
    return {"final_test_acc": sum(accs) / len(accs) if accs else None, "runs": done}


def check_data(cfg: DictConfig) -> None:
    """The archive is readable and what the config declares, and the training split that the
    validation split leaves holds a batch: checked before any folder or record is written."""
    from src.data.arrays import load_arrays  # cached: a sweep reads each archive once

    n = len(load_arrays(cfg.dataset).y_train)
    frac, batch = float(cfg.dataset.val_fraction), int(cfg.trainer.batch_size)
    left = n - int(round(frac * n))
    if frac > 0 and left < min(batch, n):
        most = max((n - batch) / n, 0.0)
        raise ConfigError("dataset.val_fraction", frac, f"at most {most:.4f}, so that the "
                          f"training split keeps one batch of trainer.batch_size={batch}",
                          hint=f"{n} training images would leave {left}")


def completed_results(cfg: DictConfig) -> dict[str, Any] | None:
    """With skip_completed, the results of this config's completed run in its folder (None
    when there is none to skip). A completed or interrupted run of another config (or of
    another input file) in the folder is refused: its records and checkpoint are kept. With
    skip_completed=false the folder's previous run is replaced: trained again from scratch."""
    run_dir = Path(cfg.paths.run_dir)
    done = read_json(run_dir / RESULTS)
    if not done:
        return None
    if not cfg.skip_completed:
        from src.training.checkpoint import BEST_WEIGHTS, LAST_WEIGHTS, remove_checkpoints

        remove_checkpoints(run_dir)  # asked to overwrite: never resume the old run
        for name in (LAST_WEIGHTS, BEST_WEIGHTS):  # nor keep its weights beside new results
            (run_dir / name).unlink(missing_ok=True)
        return None
    same = done.get("config_fingerprint") == fingerprint(cfg)
    status = done.get("status")
    if status == "completed" and same:
        log.info("skipping %s: results.json says completed", run_dir)
        return done
    if not same:
        raise ConfigError("skip_completed", True, "false to overwrite it, or another sweep "
                          "folder", hint=f"{run_dir} holds a{'n' if status != 'completed' else ''}"
                          f" {status} run of a different configuration{_changed_inputs(cfg, done)}"
                          " (see its config.yaml); it is kept as it is")
    return None


def _changed_inputs(cfg: DictConfig, done: dict[str, Any]) -> str:
    """', input X changed' for each input file whose content differs from the recorded one."""
    from src.run.identity import input_records

    before = done.get("inputs") or {}
    changed = [k for k, v in input_records(cfg).items()
               if k in before and before[k].get("hash") != v["hash"]]
    return "".join(f": the content of {k} changed" for k in changed)


def parallel_job_number() -> int | None:
    """The job's number in a sweep run by a parallel launcher (joblib, submitit), else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    target = str(hc.launcher.get("_target_", ""))
    if hc.mode is None or "BasicLauncher" in target or not target:
        return None
    return int(hc.job.num)


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
    hc = HydraConfig.get()
    group, multirun = hc.job.override_dirname, hc.mode == RunMode.MULTIRUN
    run_dir = Path(cfg.paths.run_dir)
    try:
        results = train(cfg, group=group, spread=parallel_job_number())
    except ConfigError as err:
        if not isinstance(err, RunBusy):  # a busy folder is another job's, not ours to drop
            _drop_empty_run_dir(run_dir)
        print(f"Configuration error: {err}. Nothing was trained.", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        _FAILED_JOBS.append(f"{run_dir}: {err}")
        return None
    except Exception as err:
        # The run's results.json already says failed, with the error.
        log.exception("run failed")
        if not multirun:
            sys.exit(1)
        _FAILED_JOBS.append(f"{run_dir}: {type(err).__name__}: {err}")
        return None  # one failed job must not end the sweep
    return results.get("final_test_acc")


def cli() -> None:
    """Run Hydra's main under the process's signal policy; a sweep with failed jobs ends with
    a non-zero exit code, a stopped one with 75 (resumable) or 130 (Ctrl-C)."""
    SIGNALS.install()
    try:
        main()
    except Stopped as stop:
        print(f"{stop}: what could be saved was saved.", file=sys.stderr)
        stop.hand_on()  # submitit requeues the job from its own handler
        sys.exit(stop.exit_code)
    if _FAILED_JOBS:
        print(f"{len(_FAILED_JOBS)} job(s) did not complete:", file=sys.stderr)
        for line in _FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
