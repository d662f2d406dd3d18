"""hydra/launcher=batched_slurm against a real SLURM: a sweep's batch is one SLURM job with the
local batched launcher's results, completed runs are skipped, and a pre-empted batch job is
requeued and resumes every member."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.files import read_json
from src.run.records import read_metrics
from tests.cluster.conftest import (
    BASE,
    PARTITION,
    SAME,
    finish,
    job_end,
    job_field,
    jobs_named,
    run,
    same_numbers,
    slurm_cmd,
    start,
    submitit_jobs,
    wait_for_epochs,
)

# 8 runs that differ only in batchable keys: one batch of 8.
GRID = ["-m", *BASE, "trainer.epochs=6", "augmentation=mixup_smoothing",
        "augmentation.mixup_alpha=0,0.4", "augmentation.smoothing=0,0.1", "trainer.seed=0,1"]
BATCHED_SLURM = ["hydra/launcher=batched_slurm", f"hydra.launcher.partition={PARTITION}",
                 "hydra.launcher.cpus_per_task=1", "hydra.launcher.max_members=8",
                 "hydra.launcher.stack=always"]


def runs_of(sweep: Path) -> dict[str, tuple[dict, list[dict]]]:
    """Each run folder (relative to the sweep) with its results and metrics."""
    return {str(p.parent.relative_to(sweep)): (read_json(p),
                                               read_metrics(p.parent / "metrics.jsonl"))
            for p in sorted(sweep.rglob("results.json"))}


def assert_same_runs(got: dict, want: dict) -> None:
    assert len(want) == 8 and sorted(got) == sorted(want)
    for name, (res, rows) in got.items():
        assert res["status"] == "completed" and res["trained_with"].startswith("8 runs")
        assert {k: res[k] for k in SAME} == {k: want[name][0][k] for k in SAME}, name
        same_numbers(rows, want[name][1])


@pytest.fixture(scope="module")
def local_batched(tmp_path_factory) -> dict[str, tuple[dict, list[dict]]]:
    """The same sweep through the local batched launcher (hydra/launcher=batched)."""
    folder = tmp_path_factory.mktemp("local_batched")
    code, out = run([*GRID, "hydra/launcher=batched", "hydra.launcher.max_members=8",
                     "hydra.launcher.stack=always", f"hydra.sweep.dir={folder / 'sweep'}"], folder)
    assert code == 0, out[-3000:]
    return runs_of(folder / "sweep")


def test_eight_runs_are_one_slurm_job_equal_to_the_local_batched_launcher(tmp_path,
                                                                          local_batched):
    sweep = tmp_path / "sweep"
    args = [*GRID, *BATCHED_SLURM, f"hydra.sweep.dir={sweep}"]
    code, out = run(args, tmp_path)
    assert code == 0, out[-3000:]
    assert "Launching 8 jobs as 1 batches of at most 8 runs" in out
    (job,) = submitit_jobs(sweep)
    assert job_end(job) == "COMPLETED"
    got = runs_of(sweep)
    assert_same_runs(got, local_batched)
    # Again: every run is complete, so no job is submitted and no record is rewritten.
    code, again = run(args, tmp_path)
    assert code == 0, again[-3000:]
    assert "skipping" in again and "Submitting" not in again
    assert submitit_jobs(sweep) == [job]
    assert {n: r["finished_at"] for n, (r, _) in runs_of(sweep).items()} == \
        {n: r["finished_at"] for n, (r, _) in got.items()}


def test_preempted_batch_job_is_requeued_and_resumes_every_member(tmp_path, local_batched):
    sweep, name = tmp_path / "sweep", "lsmix-batch-preempt"
    proc = start([*GRID, *BATCHED_SLURM, f"hydra.launcher.name={name}",
                  f"hydra.sweep.dir={sweep}"], tmp_path)
    wait_for_epochs(sweep, 2, proc)
    (job,) = jobs_named(name)
    slurm_cmd("scancel", "--signal=USR2", job)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert job_field(job, "Restarts") == "1"
    got = runs_of(sweep)
    for folder in got:  # the batch's log line, in every member's log
        assert "resuming" in (sweep / folder / "train.log").read_text(), folder
    assert_same_runs(got, local_batched)


def test_a_failed_batch_is_listed_and_the_sweep_exits_non_zero(tmp_path):
    sweep = tmp_path / "sweep"
    # One member cannot write its metrics: the batch it trains in fails, inside its SLURM job.
    (sweep / "seed1" / "metrics.jsonl").mkdir(parents=True)
    code, out = run(["-m", *BASE, "trainer.epochs=1", "trainer.seed=0,1", *BATCHED_SLURM,
                     f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=seed${trainer.seed}"],
                    tmp_path)
    assert code == 1, out[-3000:]
    assert "2 job(s) did not complete" in out and "IsADirectoryError" in out
    assert {read_json(p)["status"] for p in sweep.rglob("results.json")} == {"failed"}
    (job,) = submitit_jobs(sweep)
    assert job_end(job) == "COMPLETED"  # what the scheduler says
