"""The README's plain-sbatch recipe (scripts/cluster/train.sbatch): a run stopped by a signal
exits 75, the script requeues its job, and the job resumes to the same bits."""

from __future__ import annotations

from src.files import read_json
from src.run.records import read_metrics
from tests.cluster.conftest import (
    BASE,
    LONG,
    PARTITION,
    SAME,
    job_end,
    job_field,
    same_numbers,
    slurm_cmd,
    wait_for_epochs,
)
from tests.conftest import ROOT

SBATCH = ROOT / "scripts" / "cluster" / "train.sbatch"


def test_sbatch_script_requeues_on_exit_75_and_resumes_to_the_same_bits(tmp_path, reference):
    run_dir = tmp_path / "run"
    job = slurm_cmd("sbatch", "--parsable", f"--partition={PARTITION}", "--cpus-per-task=1",
                    f"--output={tmp_path}/slurm-%j.out", f"--chdir={tmp_path}", str(SBATCH),
                    *BASE, *LONG, f"hydra.run.dir={run_dir}").strip()
    wait_for_epochs(run_dir / "metrics.jsonl", 5)
    # As `#SBATCH --signal=B:USR1@120` does before the time limit: the script's shell gets it
    # and passes it on to the run.
    slurm_cmd("scancel", "--batch", "--signal=USR1", job)
    assert job_end(job, timeout=240) == "COMPLETED"
    assert job_field(job, "Restarts") == "1"
    log = (tmp_path / f"slurm-{job}.out").read_text()  # --open-mode=append: both starts
    assert "stopped by SIGUSR1" in log and "exit code 75: requeueing" in log, log[-3000:]
    assert "resuming" in log
    res = read_json(run_dir / "results.json")
    want, want_rows = reference
    assert {k: res[k] for k in SAME} == {k: want[k] for k in SAME}
    same_numbers(read_metrics(run_dir / "metrics.jsonl"), want_rows)
