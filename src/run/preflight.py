"""A job's pre-flight and its one path to the lifecycle: what every job goes through, whether it
is one run, seeds trained together (`trainer.parallel_seeds`) or a batch of a sweep's jobs
(the batched launcher): validate, check the data, expand the members, skip the completed ones,
train the rest together (src.run.lifecycle), and report a job that did not complete.

A single run is a batch of one job through `run_jobs`: its errors propagate (the entry point
refuses or fails the process). A launcher's batch passes `on_error`: a bad job fails alone,
recorded as a failed job of the sweep, and the others train.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from src.config.entry import refusal, refuse
from src.config.validate import validate
from src.errors import ConfigError
from src.files import read_json
from src.run.identity import fingerprint
from src.run.init_from import check_parents
from src.run.lock import RunBusy
from src.run.records import RESULTS

log = logging.getLogger(__name__)
_SEED_DIR = re.compile(r"seed=\d+$")
# Outcomes a rerun skips (skip_completed=false trains them again).
FINAL = ("completed", "diverged")
# The jobs of this process's sweep that did not complete, listed when it ends (src.train).
FAILED_JOBS: list[str] = []


@dataclass
class LaunchedJob:
    """One job of a sweep, as the batched launcher composed it."""

    cfg: DictConfig  # its config, paths.run_dir the folder Hydra gives the job
    group: str  # its sweep folder name (hydra.job.override_dirname)
    hydra: DictConfig | None = None  # its Hydra config, for its .hydra record


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """The runs of a job: the config itself, or one per seed of `trainer.parallel_seeds`, each
    as a separate run of that seed would have it, writing to `.../seed=<each>`."""
    seeds = [int(s) for s in cfg.trainer.get("parallel_seeds") or []]
    if not seeds:
        return [cfg]
    run_dir = Path(cfg.paths.run_dir)
    out = []
    for seed in seeds:
        # Its seed set before anything is resolved: an interpolation of it (such as
        # noise.seed=${trainer.seed}) takes the member's seed, as its separate run's would.
        member = copy.deepcopy(cfg)
        with open_dict(member):
            member.trainer.seed, member.trainer.parallel_seeds = seed, []
            member.paths.run_dir = str(run_dir.with_name(f"seed={seed}")
                                       if _SEED_DIR.search(run_dir.name)
                                       else run_dir / f"seed={seed}")
        out.append(OmegaConf.create(OmegaConf.to_container(member, resolve=True,
                                                           throw_on_missing=False)))
    return out


def job_results(done: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's results: its one run's, or {"final_test_acc": the mean, "runs": each run's}."""
    if len(done) == 1:
        return done[0]
    accs = [r["final_test_acc"] for r in done
            if r.get("status") == "completed" and r.get("final_test_acc") is not None]
    return {"final_test_acc": sum(accs) / len(accs) if accs else None, "runs": done}


def run_jobs(jobs: list[LaunchedJob], spread: int | None = None,
             on_error: Callable[[LaunchedJob, Exception], None] | None = None
             ) -> list[dict[str, Any] | None]:
    """Each job's results (None for a failed one): every job validated, its data checked and
    its completed runs skipped, then the runs still to train, of every job, trained together as
    one model (src.run.lifecycle; they may differ only in src.config.BATCHABLE_KEYS). Without
    `on_error` an error propagates; with it, the jobs it hits are handed to it."""
    def failed(job_ids: list[int], err: Exception) -> None:
        if on_error is None:
            raise err
        for j in job_ids:
            on_error(jobs[j], err)

    ready: dict[int, tuple[list[DictConfig], list[dict[str, Any] | None]]] = {}
    for j, job in enumerate(jobs):
        try:
            validate(job.cfg)
            check_data(job.cfg)
            members = member_configs(job.cfg)
            check_parents(members)  # each seed's, where an interpolation picks it
            ready[j] = (members, [completed_results(m) for m in members])
        except Exception as err:
            failed([j], err)
    todo = [(j, k, m) for j, (members, done) in ready.items()
            for k, (m, d) in enumerate(zip(members, done)) if d is None]
    if todo:
        from src.run.lifecycle import run_job  # torch is imported only for a good config

        try:
            trained = run_job([m for _, _, m in todo], [jobs[j].group for j, _, _ in todo],
                              spread, hydra=[jobs[j].hydra for j, _, _ in todo])
        except Exception as err:
            hit = sorted({j for j, _, _ in todo})
            for j in hit:
                ready.pop(j)
            failed(hit, err)
        else:
            for (j, k, _), res in zip(todo, trained):
                ready[j][1][k] = res
    return [job_results(ready[j][1]) if j in ready else None for j in range(len(jobs))]


def check_data(cfg: DictConfig) -> None:
    """The archive is readable and what the config declares, and the validation split holds
    an image and leaves the training split a batch: checked before any folder or record is
    written (the dataset's size is known only once it is loaded)."""
    from src.data.arrays import load_arrays  # cached: a sweep reads each archive once
    from src.data.subset import subset_indices, subset_size

    labels = load_arrays(cfg.dataset).y_train
    size = subset_size(cfg.dataset, len(labels))
    if size is not None:
        check_subset(cfg.dataset.train_subset, size, len(labels))
        labels = labels[subset_indices(cfg.dataset, len(labels), int(cfg.noise.seed))]
    frac, batch = float(cfg.dataset.val_fraction), int(cfg.trainer.batch_size)
    if frac > 0:
        check_val_split(labels, int(cfg.dataset.num_classes), frac, batch)


def check_subset(value: Any, size: int, n: int) -> None:
    """dataset.train_subset keeps at least one image and at most the training set."""
    if not 1 <= size <= n:
        raise ConfigError("dataset.train_subset", value, f"null (every image), a count from 1 "
                          f"to {n} (this training set's size), or a fraction in (0, 1) that "
                          f"keeps at least one image", hint=f"it would keep {size} of {n} images")


def check_val_split(labels: Any, k: int, frac: float, batch: int) -> None:
    """The split takes round(frac * n) of each class's n images (src.data.arrays.
    stratified_split), carved on the noisy labels: it must hold an image whatever the noise
    does to the class sizes, so even classes (the largest as small as it can be, n/K) must
    give one; and the training split must keep a batch."""
    import numpy as np

    n = len(labels)
    even = -(-n // k)  # the largest class holds at least this many images, noisy or not
    if frac * even <= 0.5:
        val = int(sum(round(frac * c) for c in np.bincount(labels)))
        raise ConfigError("dataset.val_fraction", frac, f"0 (no validation split) or more than "
                          f"{0.5 / even:.4g}, so that the validation split holds at least 1 image",
                          hint=f"it takes round(fraction x n) of each class's n images: {val} of "
                               f"these {n}" + ("" if val == 0 else f", and none if label noise "
                               f"evens the {k} classes out to {even} images each"))
    left = n - int(round(frac * n))
    if left < min(batch, n):
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
    # A diverged run is an outcome as final as a completed one: training it again until it
    # survives would keep only the survivors (the analysis counts it at chance).
    if status in FINAL and same:
        log.info("skipping %s: results.json says %s", run_dir, status)
        return done
    if not same:
        changed = "".join(f": the content of {k} changed" for k in changed_inputs(cfg, done))
        raise ConfigError("skip_completed", True, "false to overwrite it, or another sweep "
                          "folder", hint=f"{run_dir} holds a{'n' if status != 'completed' else ''}"
                          f" {status} run of a different configuration{changed}"
                          " (see its config.yaml); it is kept as it is")
    return None


def changed_inputs(cfg: DictConfig, done: dict[str, Any]) -> dict[str, str]:
    """The input files (by key, with their path) whose content differs from what the run's
    results record (results.json `inputs`); for the run it started from, also its identity
    (a parent retrained, src.run.init_from)."""
    from src.run.identity import input_records

    before = done.get("inputs") or {}
    return {k: v["path"] for k, v in input_records(cfg).items()
            if k in before and (before[k].get("hash") != v["hash"]
                                or before[k].get("fingerprint") != v.get("fingerprint"))}


def parallel_job_number() -> int | None:
    """The job's number in a sweep run by a parallel launcher (joblib, submitit), else None."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    target = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode is None or "BasicLauncher" in target or not target:
        return None
    return int(hydra_cfg.job.num)


def drop_empty_run_dir(run_dir: Path) -> None:
    """Remove the folder of a job rejected before training, so that no stray folder looks
    like a run to the analysis. A folder that holds any result or checkpoint stays as it is."""
    keep = ("results.json", "metrics.jsonl", "checkpoint.pt")
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in keep):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


def job_failed(run_dir: Path, err: Exception, multirun: bool) -> None:
    """Report a job that did not complete: a configuration error is one paragraph (exit 2
    outside a sweep) and leaves no empty folder; any other error has already marked its run
    failed in results.json (exit 1 outside a sweep). In a sweep the job is listed at the end."""
    if isinstance(err, ConfigError):
        if not isinstance(err, RunBusy):  # a busy folder is another job's, not ours to drop
            drop_empty_run_dir(run_dir)
        if not multirun:
            refuse(err)
        print(refusal(err), file=sys.stderr)
        FAILED_JOBS.append(f"{run_dir}: {err}")
        return
    log.error("run failed", exc_info=err)
    if not multirun:
        sys.exit(1)
    FAILED_JOBS.append(f"{run_dir}: {type(err).__name__}: {err}")


