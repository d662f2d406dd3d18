"""Entry point: `python -m src.train [overrides]`, or `-m` / `+experiment=NAME` for a sweep.

Thin by design: the command line is checked before Hydra writes anything (src.config.entry),
then every job, a single run or a batch of a sweep's jobs, takes the one path of
src.run.preflight: validate, skip the completed runs, train the rest (src.run.lifecycle). A
failing job of a multirun is recorded as failed and the sweep goes on; a signal stops the whole
process (src.run.signals). Under `hydra/launcher=batched` (hydra_plugins/lsmix_batched_launcher)
the launcher hands a batch of a sweep's jobs to `train_batch`.
"""

from __future__ import annotations

import sys
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
from omegaconf import DictConfig

import src.config  # noqa: F401  (registers the resolver conf/hydra/default.yaml uses)
from src.config.entry import check_command_line
from src.errors import ConfigError
from src.files import read_json
from src.run import preflight
from src.run.closing import resume_command, run_summary, shown_path, sweep_objective
from src.run.preflight import LaunchedJob, job_failed, parallel_job_number, run_jobs
from src.run.records import RESULTS
from src.run.submitit_job import signal_policy as submitit_signal_policy
from src.sweep.validation import install as install_sweep_validation
from src.training.threads import REGISTRY as THREAD_REGISTRY

__all__ = ["LaunchedJob", "cli", "main", "train", "train_batch"]

# An absolute path, so the entry works however it is imported (module, test, launcher).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# The folder of this process's single run (not a sweep's jobs), once Hydra has made it: a
# stopped run names the command that resumes it there.
SINGLE_RUN: list[Path] = []


def train(cfg: DictConfig, group: str = "", spread: int | None = None) -> dict[str, Any]:
    """Validate, then train the job's runs (or return the results of completed ones); errors
    propagate. One run: its results object. Seeds trained together: {"final_test_acc": their
    mean, "runs": each seed's results object}."""
    return run_jobs([LaunchedJob(cfg, group)], spread)[0]


def train_batch(jobs: list[LaunchedJob]) -> list[float | None]:
    """The batched launcher's entry: the jobs' runs trained together, a bad job failing alone
    (recorded as a failed job of the sweep). Each job's sweep objective, as `main` returns it
    (None for a failed job)."""
    def failed(job: LaunchedJob, err: Exception) -> None:
        job_failed(Path(job.cfg.paths.run_dir), err, multirun=True)

    return [None if r is None else sweep_objective(r) for r in run_jobs(jobs, on_error=failed)]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra's entry: returns the run's best noisy-validation accuracy, never a test metric,
    for sweepers that optimise it (src.run.closing.sweep_objective; None without one)."""
    hydra_cfg = HydraConfig.get()
    group, multirun = hydra_cfg.job.override_dirname, hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(cfg.paths.run_dir)
    if not multirun:
        if cfg.plan is not False and cfg.plan != "before":  # a sweep's: before its jobs
            from src.sweep.plan import plan_run

            plan_run(cfg, run_dir)
            return None
        SINGLE_RUN[:] = [run_dir]
    try:
        with submitit_signal_policy():  # a submitit job: checkpoint, then submitit requeues
            results = train(cfg, group=group, spread=parallel_job_number())
    except Exception as err:
        if not multirun and not isinstance(err, ConfigError):  # a refusal writes no run
            print(run_summary(run_dir, read_json(run_dir / RESULTS), cfg), flush=True)
        job_failed(run_dir, err, multirun)  # outside a sweep: exits
        return None  # one failed job must not end the sweep
    if not multirun:  # a sweep's jobs end with the sweep's summary instead
        print(run_summary(run_dir, results, cfg), flush=True)
    return sweep_objective(results)


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
        check_command_line(CONF_DIR, sys.argv[1:])
        main()
    except Stopped as stop:
        print(f"{stop}: what could be saved was saved.", file=sys.stderr)
        if SINGLE_RUN:  # its folder has a timestamp: the same command would start anew
            print(f"run folder: {shown_path(SINGLE_RUN[0])}\nresume it with:\n  "
                  f"{resume_command(SINGLE_RUN[0])}", file=sys.stderr, flush=True)
        stop.hand_on()  # submitit requeues the job from its own handler
        sys.exit(stop.exit_code)
    if preflight.FAILED_JOBS:
        print(f"{len(preflight.FAILED_JOBS)} job(s) did not complete:", file=sys.stderr)
        for line in preflight.FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
