"""`hydra/launcher=batched_slurm`: the batched launcher's batches as SLURM jobs, via submitit.

    python -m src.train +experiment=quickstart hydra/launcher=batched_slurm \\
        hydra.launcher.partition=debug hydra.launcher.max_members=32

The sweep is grouped exactly as `hydra/launcher=batched` groups it (BatchedLauncher's plan),
and each batch becomes one SLURM job, submitted as one job array (`array_parallelism` of them
at a time). A job trains its batch's runs as one batched model and writes each run's ordinary
folder, records, log and Hydra callbacks, as the local launcher's batch does
(BatchedLauncher._run_batch). The keys are submitit_slurm's (partition, account, qos,
cpus_per_task, gpus_per_node, mem_gb, timeout_min, max_num_timeout, array_parallelism,
additional_parameters, setup, ...) plus `max_members`.

Completed runs are skipped: a batch whose runs are all completed is not submitted (its records
are read in the sweep's own process), and a job skips the completed runs of its batch. A job
that is pre-empted or reaches its time limit checkpoints under the suite's signal policy
(src.run.submitit_job) and submitit requeues it (time-outs at most `max_num_timeout` times);
the requeued job trains the same batch again, so every member resumes from the batch's
checkpoint. The jobs' failed runs are listed when the sweep ends, as the local launchers list
theirs, and make its exit code non-zero.

Hydra's plugin scan executes this module before it is in sys.modules: imports are absolute,
and the suite's modules and submitit are imported only when a sweep is launched.
"""

import logging
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from omegaconf import OmegaConf

from hydra_plugins.lsmix_batched_launcher.batched_launcher import (
    ENTRY,
    JOB,
    BatchedLauncher,
    ComposedJob,
    _app_module,
    _completed,
)

log = logging.getLogger(__name__)

# submitit's executor takes these when it is made; every other key is a job parameter.
_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")


class BatchedSlurmLauncher(BatchedLauncher):
    def __init__(self, max_members: int = 16, stack: str = "auto", **params: Any) -> None:
        super().__init__(max_members, stack)
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v)
                       else v for k, v in params.items()}

    def _job_device(self) -> str:
        """The jobs train where SLURM puts them: on a GPU when they ask for one (submitit's
        gpus_per_node / gpus_per_task, or a gres or gpus in additional_parameters)."""
        extra = self.params.get("additional_parameters") or {}
        gres = f"{self.params.get('gres') or ''} {extra.get('gres') or ''}"
        asked = (self.params.get("gpus_per_node"), self.params.get("gpus_per_task"),
                 extra.get("gpus"), extra.get("gpus_per_node"), extra.get("gpus_per_task"))
        return "cuda" if any(asked) or "gpu" in gres else "cpu"

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        app = _app_module(self.task_function)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        saved = HydraConfig.instance().cfg
        try:
            jobs, plan = self._composed_plan(job_overrides, initial_job_idx)
            returns: list[JobReturn | None] = [None] * len(jobs)
            remote = []
            for batch in plan:
                if all(_completed(jobs[i].task) for i in batch):  # read here, nothing trains
                    for i, ret in zip(batch, self._run_batch(app, [jobs[i] for i in batch])):
                        returns[i] = ret
                else:
                    remote.append(batch)
        finally:
            HydraConfig.instance().cfg = saved
        if remote:
            log.info("Submitting %d of the %d batches as SLURM jobs (%d skipped: completed)",
                     len(remote), len(plan), len(plan) - len(remote))
            for batch, rets in zip(remote, self._submit(app, jobs, remote)):
                for i, ret in zip(batch, rets):
                    returns[i] = ret
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [r for r in returns if r is not None]

    def _submit(self, app: Any, jobs: list[ComposedJob],
                batches: list[list[int]]) -> list[list[JobReturn]]:
        """One SLURM job per batch; each batch's JobReturns, once its job has ended."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        from src.run import preflight

        executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="slurm",
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v
                                      for k, v in self.params.items() if k not in _EXECUTOR_KEYS})
        # The app's entry by value: in the job, __main__ is submitit's, not the app's module.
        entry = types.SimpleNamespace(**{ENTRY: getattr(app, ENTRY), JOB: getattr(app, JOB)})
        work = [[(jobs[i].idx, jobs[i].overrides) for i in batch] for batch in batches]
        submitted = executor.map_array(self, work, [entry] * len(work),
                                       [Singleton.get_state()] * len(work))
        out = []
        for batch, job in zip(batches, submitted):
            log.info("\tSLURM job %s: jobs %s", job.job_id,
                     ", ".join(f"#{jobs[i].idx}" for i in batch))
        for batch, job in zip(batches, submitted):
            try:
                rets, failed = job.results()[0]
            except Exception as err:  # ended without a result: killed, or out of time-outs
                rets, failed = [self._lost(jobs[i]) for i in batch], [
                    f"{jobs[i].output_dir}: SLURM job {job.job_id} ended without finishing: "
                    f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
                    for i in batch]
            preflight.FAILED_JOBS.extend(failed)
            out.append(rets)
        return out

    def _lost(self, job: ComposedJob) -> JobReturn:
        """The return of a job whose SLURM job ended without one (its run folder tells)."""
        ret = JobReturn(overrides=list(job.overrides), cfg=job.task, hydra_cfg=job.config,
                        working_dir=job.output_dir, task_name=str(job.config.hydra.job.name),
                        status=JobStatus.COMPLETED)
        ret.return_value = None
        return ret

    def __call__(self, batch: list[tuple[int, list[str]]], entry: Any,
                 singleton_state: dict[type, Singleton]) -> tuple[list[JobReturn], list[str]]:
        """In the SLURM job: compose the batch's jobs and train them, under the suite's signal
        policy; their returns and the runs that failed."""
        import submitit

        from src.run import preflight
        from src.run.submitit_job import signal_policy

        Singleton.set_state(singleton_state)
        setup_globals()
        job_id = str(submitit.JobEnvironment().job_id)
        jobs = [self._compose(idx, list(overrides), job_id) for idx, overrides in batch]
        with signal_policy():
            returns = self._run_batch(entry, jobs)
        return returns, list(preflight.FAILED_JOBS)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues: the same batch, which resumes from its checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

