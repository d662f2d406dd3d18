"""`hydra/launcher=batched`: a sweep's jobs that differ only in the batchable keys train together.

    python -m src.train -m augmentation.mixup_alpha=0,0.2 augmentation.smoothing=0,0.1 \
        trainer.seed=0,1 hydra/launcher=batched [hydra.launcher.max_members=16]

The launcher composes every job's config as Hydra's basic launcher does (the sweep config
with the job's overrides, its number, and its folder `hydra.sweep.dir/hydra.sweep.subdir`),
groups the jobs whose configs are equal but for src.config.BATCHABLE_KEYS (seed, Mixup alpha,
smoothing eps and start, the augmentation's name), cuts each group into batches of at most
`max_members` runs, and hands each batch to the app's `train_batch` (src/train.py), which
trains the batch's runs as one vmapped model (src.training.trainer.StackedTrainer) and writes
each run's ordinary folder, records and W&B run, as the default launcher would. Completed runs
are skipped; runs that cannot be stacked (src.config.validate.cannot_stack: lstm and gru,
fp16 loss scaling, dropout) run one job at a time. Every job still gets Hydra's job
callbacks and a JobReturn, so the sweep's end callbacks (the analysis) run.

The jobs of a batch share one process and one working directory (`hydra.job.chdir` is not
applied), and the first job's environment (`hydra.job.env_set`). `hydra/launcher=batched_slurm`
(slurm_launcher.py) runs the same plan, each batch as one SLURM job.

Hydra's plugin scan executes this module before it is in sys.modules: its dataclass must not
have string annotations (no `from __future__ import annotations`), and the suite's modules are
imported only when a sweep is launched.
"""

import copy
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

# What the app's module offers the launcher (src/train.py): a function that trains a batch of
# jobs and returns each one's value, and the record of one job it takes.
ENTRY, JOB = "train_batch", "LaunchedJob"


@dataclass
class ComposedJob:
    """One job of the sweep, composed as Hydra's basic launcher composes it."""

    idx: int
    overrides: list[str]
    config: DictConfig  # with its `hydra` node (job number, runtime.output_dir)
    task: DictConfig  # what the task function would get; paths.run_dir resolved
    output_dir: str

    @property
    def group(self) -> str:
        return str(self.config.hydra.job.override_dirname)


class BatchedLauncher(Launcher):
    def __init__(self, max_members: int = 16, stack: str = "auto") -> None:
        super().__init__()
        self.max_members = max_members
        self.stack = stack
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self._composer: Any = None  # src.sweep.compose.JobComposer, made on first use

    def __getstate__(self) -> dict:
        """Pickled (into a SLURM job) without the composer's templates: the job makes its own."""
        return {**self.__dict__, "_composer": None}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Refuse a bad launcher setting or another app here: the sweeper sets its launcher
        up before it writes the sweep folder, so a refused sweep leaves nothing."""
        _app_module(task_function)
        from src.config.entry import refuse
        from src.errors import ConfigError
        from src.run.batches import check_max_members, check_stack

        try:
            check_max_members(self.max_members)
            check_stack(self.stack)
        except ConfigError as err:
            refuse(err)
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        app = _app_module(self.task_function)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        saved = HydraConfig.instance().cfg
        try:
            jobs, plan = self._composed_plan(job_overrides, initial_job_idx)
            returns: list[JobReturn | None] = [None] * len(jobs)
            for batch in plan:
                for i, ret in zip(batch, self._run_batch(app, [jobs[i] for i in batch])):
                    returns[i] = ret
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        finally:
            HydraConfig.instance().cfg = saved
        return [r for r in returns if r is not None]

    def _composed_plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                       ) -> tuple[list[ComposedJob], list[list[int]]]:
        """Every job composed, and the batches they train in (as indices into the jobs)."""
        jobs = [self._compose(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        plan, unstacked = _plan([j.task for j in jobs], self.max_members, self._job_device(),
                                self.stack)
        log.info("Launching %d jobs as %d batches of at most %d runs", len(jobs), len(plan),
                 self.max_members)
        if unstacked:
            log.info("One run at a time for %s (hydra.launcher.stack=%s%s)", ", ".join(unstacked),
                     self.stack, ": stacked, they would train slower on this device"
                     if self.stack == "auto" else "")
        return jobs, plan

    def _job_device(self) -> str | None:
        """The device type the jobs train on, where it is not this process's (None: each
        job's `trainer.device`, resolved here)."""
        return None

    def _compose(self, idx: int, overrides: list[str], job_id: str | None = None) -> ComposedJob:
        """The job's config with its number and folder, as Hydra's run_job sets them (its id:
        the scheduler's job id where there is one, else its number)."""
        assert self.config is not None and self.hydra_context is not None
        if self._composer is None:  # once per setting, not per job (src/sweep/compose.py)
            from src.sweep.compose import JobComposer

            self._composer = JobComposer(self.hydra_context.config_loader, self.config)
        config = self._composer(overrides)
        with open_dict(config):
            config.hydra.job.id = idx if job_id is None else job_id
            config.hydra.job.num = idx
        HydraConfig.instance().set_config(config)  # the subdir reads this job's hydra node
        output_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        subdir = OmegaConf.select(config, "hydra.sweep.subdir")
        if subdir is not None:
            output_dir = os.path.join(output_dir, str(subdir))
        output_dir = os.path.abspath(output_dir)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        HydraConfig.instance().set_config(config)
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
            # `${hydra:runtime.output_dir}` reads the current job's Hydra config: resolved
            # now, while it is this job's, since the batch trains under one.
            if OmegaConf.select(task, "paths.run_dir") is not None:
                task.paths.run_dir = str(task.paths.run_dir)
        return ComposedJob(idx, overrides, config, task, output_dir)

    def _run_batch(self, app: Any, jobs: list[ComposedJob]) -> list[JobReturn]:
        """Train one batch through the app's entry (a module or object offering ENTRY and JOB),
        with each job's callbacks around it."""
        assert self.hydra_context is not None and self.task_function is not None
        callbacks = self.hydra_context.callbacks
        first = jobs[0]
        for job in jobs:
            Path(job.output_dir).mkdir(parents=True, exist_ok=True)  # as Hydra's run_job
            log.info("\t#%d : %s", job.idx, " ".join(filter_overrides(job.overrides)))
        for job in jobs:
            HydraConfig.instance().set_config(job.config)
            callbacks.on_job_start(config=job.config, task_function=self.task_function)
        HydraConfig.instance().set_config(first.config)
        configure_log(first.config.hydra.job_logging, first.config.hydra.verbose)
        folder_logs = _log_to_folders(jobs[1:])
        try:
            with env_override(OmegaConf.to_container(first.config.hydra.job.env_set)):
                launched = [getattr(app, JOB)(j.task, j.group, j.config.hydra) for j in jobs]
                values = getattr(app, ENTRY)(launched)
        finally:
            root = logging.getLogger()
            for handler in folder_logs:
                root.removeHandler(handler)
                handler.close()
        returns = []
        for job, value in zip(jobs, values):
            HydraConfig.instance().set_config(job.config)
            ret = JobReturn(overrides=list(OmegaConf.to_container(job.config.hydra.overrides.task)),
                            cfg=job.task, hydra_cfg=copy.deepcopy(job.config),
                            working_dir=os.getcwd(), task_name=JobRuntime.instance().get("name"),
                            status=JobStatus.COMPLETED)
            ret.return_value = value  # a failed job is recorded by the app, as main does
            callbacks.on_job_end(config=job.config, job_return=ret)
            returns.append(ret)
        return returns


def _plan(tasks: list[DictConfig], max_members: int, device: str | None = None,
          stack: str = "auto") -> tuple[list[list[int]], list[str]]:
    """The batches, as job indices (src.run.batches.plan_batches), and the models that could
    stack but train one at a time: under `stack=never` all, under `auto` those that train
    slower stacked on `device` (a device type; None: each job's own, resolved here), timed
    once per setting with two or more jobs still to train (src.run.batches.stacking_pays). A
    config the key cannot be read from (it fails validation in its job) is a batch of its
    own."""
    from src.config.validate import cannot_stack
    from src.run.batches import batch_key, plan_batches
    from src.training.device import resolve_execution

    keys: list[str | None] = []
    sizes: list[int] = []
    stackable: list[bool] = []
    devices: list[str] = []
    for task in tasks:
        try:
            key, size = batch_key(task), len(task.trainer.get("parallel_seeds") or []) or 1
            # The precision a run resolves to here (amp=auto: fp16 on a GPU without bf16).
            execution = resolve_execution(task.trainer)
            can = cannot_stack(task.model, execution.amp) is None
            where = device or execution.device.type
        except Exception:  # reported by the job itself, alone
            key, size, can, where = None, 1, False, "cpu"
        keys.append(key)
        sizes.append(size)
        stackable.append(can)
        devices.append(where)
    jobs_of: dict[str, list[int]] = {}  # each setting's stackable jobs, in order
    for i, (k, c) in enumerate(zip(keys, stackable)):
        if c and k is not None:
            jobs_of.setdefault(k, []).append(i)
    if stack == "always":
        slower: set[str | None] = set()
    elif stack == "never":
        slower = set(jobs_of)
    else:
        slower = {k for k, mine in jobs_of.items() if not _stacking_pays(tasks, mine, devices)}
    batchable = [c and k not in slower for k, c in zip(keys, stackable)]
    unstacked = sorted({str(t.model.name) for t, k in zip(tasks, keys) if k in slower})
    return plan_batches(keys, sizes, max_members, batchable), unstacked


def _stacking_pays(tasks: list[DictConfig], mine: list[int], devices: list[str]) -> bool:
    """Whether the jobs `mine` of one setting (batch key) train faster stacked: nothing to
    time (and nothing lost) when fewer than two of them are left to train; a timing that
    fails stacks, as every launcher before `stack` did, and says so."""
    from src.run.batches import stacking_pays

    left = (i for i in mine if not _completed(tasks[i]))  # read until two are found
    if next(left, None) is None or next(left, None) is None:
        return True
    try:
        return stacking_pays(tasks[mine[0]], devices[mine[0]])
    except Exception as err:  # noqa: BLE001  (a timing is advice, never a reason to stop)
        log.warning("could not time a step of %s (%s: %s); its runs are stacked",
                    tasks[mine[0]].model.name, type(err).__name__, err)
        return True


def _completed(task: DictConfig) -> bool:
    """Whether every run of the job already ended completed (or diverged) with this config:
    then it trains nothing (a batch of such jobs needs no SLURM job). Anything unclear (a bad
    config, a folder of another run) is left to the job, which reports it."""
    from src.config.validate import validate
    from src.run.preflight import completed_results, member_configs

    if not task.skip_completed:
        return False
    try:
        validate(task)
        return all(completed_results(m) is not None for m in member_configs(task))
    except Exception:
        return False


def _log_to_folders(jobs: list[ComposedJob]) -> list[logging.Handler]:
    """Copies of the job log in the other jobs' folders (the log file of Hydra's job logging,
    e.g. train.log, which the batch's first job writes): every run folder keeps its log."""
    root = logging.getLogger()
    fmt = next((h.formatter for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    handlers: list[logging.Handler] = []
    for job in jobs:
        conf: Any = OmegaConf.to_container(job.config.hydra.job_logging, resolve=True) or {}
        for spec in (conf.get("handlers") or {}).values():
            if isinstance(spec, dict) and spec.get("filename"):
                handler = logging.FileHandler(spec["filename"])
                if fmt is not None:
                    handler.setFormatter(fmt)
                root.addHandler(handler)
                handlers.append(handler)
    return handlers


def _app_module(task_function: TaskFunction) -> ModuleType:
    """The module of the app's task function, which must offer the batch entry."""
    module = sys.modules.get(getattr(task_function, "__module__", "") or "")
    if module is None or not callable(getattr(module, ENTRY, None)) \
            or getattr(module, JOB, None) is None:
        from src.config.entry import refuse
        from src.errors import ConfigError

        refuse(ConfigError("hydra/launcher", "batched", "the suite's training entry only "
                           "(python -m src.train, lsmix-train)",
                           hint="use the default launcher for this command"))
    assert module is not None
    return module
