"""Entry point: `python -m src.train [overrides]`, or `-m` / `+experiment=NAME` for a sweep.

Thin by design: validate the composed config, skip the runs that are already complete, hand
the rest to src.run.lifecycle. A failing job of a multirun is recorded as failed and the sweep
goes on; a signal stops the whole process (src.run.signals). Under `hydra/launcher=batched`
(hydra_plugins/lsmix_batched_launcher) the launcher hands a batch of a sweep's jobs to
`train_batch`, which does the same for each job and trains their runs together.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # `python src/train.py`: Python put src/ on the path, not the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from src.run.signals import SIGNALS, Stopped  # standard library only: first

if __name__ == "__main__":  # from the first import on: a signal during them acts in cli()
    SIGNALS.hold()

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

import src.config  # noqa: F401  (registers the resolver conf/hydra/default.yaml uses)
from src.config.entry import REFUSED, compose_command_line, refusal, refuse, unwritable
from src.config.validate import NAME, validate
from src.errors import ConfigError
from src.files import read_json
from src.run.identity import fingerprint
from src.run.lock import RunBusy
from src.run.records import RESULTS
from src.sweep_validation import install as install_sweep_validation
from src.training.threads import REGISTRY as THREAD_REGISTRY

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


def train(cfg: DictConfig, group: str = "", spread: int | None = None) -> dict[str, Any]:
    """Validate, then train the job's runs (or return the results of completed ones).

    One run: its results object. Seeds trained together: {"final_test_acc": their mean,
    "runs": each seed's results object}.
    """
    validate(cfg)
    check_data(cfg)
    members = member_configs(cfg)
    done = [completed_results(m) for m in members]
    todo = [k for k, d in enumerate(done) if d is None]
    if todo:
        from src.run.lifecycle import run_job  # torch is imported only for a good config

        for k, res in zip(todo, run_job([members[k] for k in todo], group, spread)):
            done[k] = res
    return job_results(done)


def job_results(done: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's results: its one run's, or {"final_test_acc": the mean, "runs": each run's}."""
    if len(done) == 1:
        return done[0]
    accs = [r["final_test_acc"] for r in done if r.get("final_test_acc") is not None]
    return {"final_test_acc": sum(accs) / len(accs) if accs else None, "runs": done}


@dataclass
class LaunchedJob:
    """One job of a sweep, as the batched launcher composed it."""

    cfg: DictConfig  # its config, paths.run_dir the folder Hydra gives the job
    group: str  # its sweep folder name (hydra.job.override_dirname)
    hydra: DictConfig | None = None  # its Hydra config, for its .hydra record


def train_batch(jobs: list[LaunchedJob]) -> list[float | None]:
    """The batched launcher's entry: each job is validated and its completed runs skipped as
    `main` does (a bad job fails alone, recorded as a failed job of the sweep), then the runs
    still to train, of every job, train together as one batched model (src.run.lifecycle; they
    may differ only in src.config.BATCHABLE_KEYS). Each job's final test accuracy, as `main`
    returns it (None for a failed job)."""
    out: list[float | None] = [None] * len(jobs)
    ready: list[tuple[int, list[DictConfig], list[dict[str, Any] | None]]] = []
    for j, job in enumerate(jobs):
        try:
            validate(job.cfg)
            check_data(job.cfg)
            members = member_configs(job.cfg)
            ready.append((j, members, [completed_results(m) for m in members]))
        except Exception as err:
            _job_failed(Path(job.cfg.paths.run_dir), err, multirun=True)
    todo = [(j, k, m) for j, members, done in ready for k, (m, d) in enumerate(zip(members, done))
            if d is None]
    failed: set[int] = set()
    if todo:
        from src.run.lifecycle import run_job

        try:
            trained = run_job([m for _, _, m in todo], [jobs[j].group for j, _, _ in todo],
                              hydra=[jobs[j].hydra for j, _, _ in todo])
        except Exception as err:
            failed = {j for j, _, _ in todo}
            for j in sorted(failed):
                _job_failed(Path(jobs[j].cfg.paths.run_dir), err, multirun=True)
        else:
            by_job = {j: done for j, _, done in ready}
            for (j, k, _), res in zip(todo, trained):
                by_job[j][k] = res
    for j, _, done in ready:
        if j not in failed:
            out[j] = job_results(done).get("final_test_acc")
    return out


def check_data(cfg: DictConfig) -> None:
    """The archive is readable and what the config declares, and the validation split holds
    an image and leaves the training split a batch: checked before any folder or record is
    written (the dataset's size is known only once it is loaded)."""
    from src.data.arrays import load_arrays  # cached: a sweep reads each archive once

    labels = load_arrays(cfg.dataset).y_train
    frac, batch = float(cfg.dataset.val_fraction), int(cfg.trainer.batch_size)
    if frac > 0:
        check_val_split(labels, int(cfg.dataset.num_classes), frac, batch)


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
    if status == "completed" and same:
        log.info("skipping %s: results.json says completed", run_dir)
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
    results record (results.json `inputs`)."""
    from src.run.identity import input_records

    before = done.get("inputs") or {}
    return {k: v["path"] for k, v in input_records(cfg).items()
            if k in before and before[k].get("hash") != v["hash"]}


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
    try:
        results = train(cfg, group=group, spread=parallel_job_number())
    except Exception as err:
        _job_failed(Path(cfg.paths.run_dir), err, multirun)
        return None  # one failed job must not end the sweep
    return results.get("final_test_acc")


def _job_failed(run_dir: Path, err: Exception, multirun: bool) -> None:
    """Report a job that did not complete: a configuration error is one paragraph (exit 2
    outside a sweep) and leaves no empty folder; any other error has already marked its run
    failed in results.json (exit 1 outside a sweep). In a sweep the job is listed at the end."""
    if isinstance(err, ConfigError):
        if not isinstance(err, RunBusy):  # a busy folder is another job's, not ours to drop
            _drop_empty_run_dir(run_dir)
        if not multirun:
            refuse(err)
        print(refusal(err), file=sys.stderr)
        _FAILED_JOBS.append(f"{run_dir}: {err}")
        return
    log.error("run failed", exc_info=err)
    if not multirun:
        sys.exit(1)
    _FAILED_JOBS.append(f"{run_dir}: {type(err).__name__}: {err}")


def check_command_line(argv: list[str]) -> None:
    """Refuse, before Hydra composes the run (or sweep) and creates its folder, what would fail
    there or leave a stray folder: a misspelt key or a missing option, a config file that is
    not YAML (conf/local/default.yaml), a task_name that is a path, a folder that cannot be
    written. A sweep's other values are checked as it starts (src.sweep_validation); command
    line flags other than -m are Hydra's."""
    try:
        composed = compose_command_line(CONF_DIR, "config", argv)
        if composed is not None:
            check_folders(*composed)
    except REFUSED as err:
        refuse(err)


def check_folders(cfg: DictConfig, multirun: bool) -> None:
    """The folders the command writes can be created and written: the run's (or the
    sweep's), named by paths.output_dir where it lies under it, and W&B's logger.dir."""
    NAME("task_name", cfg.task_name)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(str(OmegaConf.select(cfg, key)))
    output = Path(str(cfg.paths.output_dir))
    if output.resolve() in (folder.resolve(), *folder.resolve().parents):
        key = "paths.output_dir"
    folders = {key: folder}
    if cfg.logger.get("name") == "wandb" and cfg.logger.get("dir"):
        folders["logger.dir"] = Path(str(cfg.logger.dir))
    for key, folder in folders.items():
        problem = unwritable(folder)
        if problem:
            raise ConfigError(key, str(OmegaConf.select(cfg, key)),
                              "a folder this process can create and write files in",
                              hint=problem)


def cli() -> None:
    """Run Hydra's main under the process's signal policy; a sweep with failed jobs ends with
    a non-zero exit code, a stopped one with 75 (resumable) or 130 (Ctrl-C)."""
    SIGNALS.install()
    try:
        SIGNALS.release()  # a signal that came during the imports stops the process here
        # Counted among the suite's running jobs from the start, so that runs started together
        # see each other when they choose their threads (trainer.threads=auto), not only after
        # their start-up (several seconds of imports and data loading on 2 cores).
        THREAD_REGISTRY.register()
        install_sweep_validation()
        check_command_line(sys.argv[1:])
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
