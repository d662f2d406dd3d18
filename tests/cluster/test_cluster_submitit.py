"""Hydra's submitit_slurm launcher against a real SLURM: a sweep with a failing job, a
pre-empted job resumed to the same bits, and a time limit with its requeues."""

from __future__ import annotations

import re

from src.files import read_json
from src.run.records import read_metrics
from tests.cluster.conftest import (
    BASE,
    LONG,
    SAME,
    SUBMITIT,
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


def test_sweep_completes_a_failing_job_is_reported_failed_and_a_rerun_finishes_it(tmp_path):
    sweep = tmp_path / "sweep"
    # One run cannot write its metrics (a folder stands where the file goes): it fails in its
    # first epoch, inside its SLURM job.
    (sweep / "seed1" / "metrics.jsonl").mkdir(parents=True)
    args = ["-m", *BASE, *SUBMITIT, "trainer.epochs=2", "trainer.seed=0,1",
            "hydra.launcher.account=lsmix", "hydra.launcher.qos=normal",
            "hydra.launcher.array_parallelism=2", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=seed${trainer.seed}"]
    code, out = run(args, tmp_path)
    assert "Sweep finished: 2 runs (1 completed, 1 failed)" in out, out[-3000:]
    # The failure stayed in its job's process; the sweep reads it from the run's records.
    assert code == 1 and "1 job(s) did not complete" in out, out[-3000:]
    results = {p.parent.name: read_json(p) for p in sweep.rglob("results.json")}
    assert sorted(results) == ["seed0", "seed1"]
    assert results["seed1"]["status"] == "failed"
    assert results["seed1"]["error"].startswith("IsADirectoryError")
    assert results["seed0"]["status"] == "completed" and results["seed0"]["threads"] == 1
    rows = read_metrics(sweep / "seed0" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and {r["threads"] for r in rows} == {1}
    # One job array, at most two at once, on the account asked for. The scheduler and
    # submitit saw both jobs end well: the run's own record is what tells.
    jobs = submitit_jobs(sweep)
    assert len(jobs) == 2
    assert {job_end(j) for j in jobs} == {"COMPLETED"}
    assert {(job_field(j, "ArrayTaskThrottle"), job_field(j, "Account")) for j in jobs} == \
        {("2", "lsmix")}
    # After the failure (or an outage) is mended, the same command trains only what did not
    # complete.
    (sweep / "seed1" / "metrics.jsonl").rmdir()
    code, out = run(args, tmp_path)
    assert "Sweep finished: 2 runs (2 completed)" in out, out[-3000:]
    again = {p.parent.name: read_json(p) for p in sweep.rglob("results.json")}
    assert again["seed0"]["finished_at"] == results["seed0"]["finished_at"]
    assert "skipping" in (sweep / "seed0" / "train.log").read_text()
    assert len(read_metrics(sweep / "seed1" / "metrics.jsonl")) == 2


def test_preempted_job_is_requeued_and_resumes_to_the_same_bits(tmp_path, reference):
    sweep, name = tmp_path / "sweep", "lsmix-preempt"
    proc = start(["-m", *BASE, *LONG, *SUBMITIT, f"hydra.launcher.name={name}",
                  f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=run"], tmp_path)
    run_dir = sweep / "run"
    wait_for_epochs(run_dir / "metrics.jsonl", 5, proc)
    (job,) = jobs_named(name)
    slurm_cmd("scancel", "--signal=USR2", job)  # what SLURM sends before it pre-empts
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert job_field(job, "Restarts") == "1" and job_end(job) == "COMPLETED"
    log = (run_dir / "train.log").read_text()
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log, log[-3000:]
    resumed = re.findall(r"resuming .* after epoch (\d+)", log)
    assert len(resumed) == 1 and 5 <= int(resumed[0]) < 60, log[-3000:]
    res = read_json(run_dir / "results.json")
    want, want_rows = reference
    assert {k: res[k] for k in SAME} == {k: want[k] for k in SAME}
    same_numbers(read_metrics(run_dir / "metrics.jsonl"), want_rows)


def test_time_limit_requeues_and_resumes_up_to_max_num_timeout(timeout_sweep):
    proc, sweep = timeout_sweep
    out = finish(proc, timeout=400)
    # The run stopped short of its epochs: the sweep says so and exits 1.
    assert proc.returncode == 1 and "1 job(s) did not complete" in out, out[-3000:]
    (job,) = submitit_jobs(sweep)
    assert job_field(job, "Restarts") == "1"  # max_num_timeout=1: one requeue, not two
    log = (sweep / "run" / "train.log").read_text()
    resumed = re.findall(r"resuming .* after epoch (\d+)", log)
    assert len(resumed) == 1, log[-3000:]
    assert len(re.findall(r"Caught signal SIGUSR2 on \S+: this job is timed-out", log)) == 2
    assert "timed-out too many times" in log
    res = read_json(sweep / "run" / "results.json")
    # Stopped the second time with a checkpoint: the same command resumes it again.
    assert res["status"] == "interrupted" and res["epochs_done"] >= int(resumed[0])
    assert (sweep / "run" / "checkpoint.pt").is_file()
    assert "Sweep finished: 1 runs (1 interrupted)" in out
