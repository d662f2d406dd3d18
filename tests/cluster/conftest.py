"""The cluster tests: the suite against a real SLURM scheduler (`make test-cluster`).

`make test-cluster` brings a one-node SLURM up on this machine (scripts/cluster/slurm.sh),
runs these tests with LSMIX_CLUSTER_TESTS=1 and takes the cluster down. Without that variable
they are not collected, so `make test` (plain pytest) never waits for a scheduler. Where SLURM
does not answer they fail, loudly, unless LSMIX_NO_CLUSTER=1 says that this machine has none:
then they are skipped with that reason.

Every run here trains at trainer.threads=1 on the bundled digits with a tiny model, so that
results compare bit for bit and the whole set takes a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.run.records import read_metrics
from tests.conftest import ROOT, module_env

if os.environ.get("LSMIX_CLUSTER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

SLURM_SCRIPT = ROOT / "scripts" / "cluster" / "slurm.sh"
PARTITION = "debug"
# Small, fast and reproducible: one CPU thread, the CPU, no bar.
BASE = ["model=cnn", "model.channels=[8,16]", "trainer.batch_size=64", "trainer.threads=1",
        "trainer.device=cpu", "trainer.progress=false"]
# What every submitit_slurm sweep here adds (the README's keys).
SUBMITIT = ["hydra/launcher=submitit_slurm", f"hydra.launcher.partition={PARTITION}",
            "hydra.launcher.cpus_per_task=1"]
# Results that must equal an uninterrupted run's, bit for bit.
SAME = ["final_test_acc", "best_test_acc", "best_epoch", "final_test_loss", "final_test_ece",
        "final_test_nll", "final_test_brier", "final_memorized", "epochs_done", "status"]
# The per-epoch metrics that say how long, not what: left out of bit-for-bit comparisons.
TIMING = {"epoch_time_s", "images_per_s"}


def slurm_conf() -> str:
    """The config the cluster script writes (SLURM_CONF, unless set already)."""
    line = subprocess.run(["bash", str(SLURM_SCRIPT), "env"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return line.split("=", 1)[1]


@pytest.fixture(scope="session", autouse=True)
def cluster() -> str:
    """SLURM's partition, answering with a usable node; fail (or skip) when it does not."""
    if os.environ.get("LSMIX_NO_CLUSTER") == "1":
        pytest.skip("LSMIX_NO_CLUSTER=1: no SLURM on this machine, the cluster tests are "
                    "skipped")
    os.environ.setdefault("SLURM_CONF", slurm_conf())
    hint = ("`make test-cluster` brings a one-node SLURM up (scripts/cluster/slurm.sh up, as "
            "root); set LSMIX_NO_CLUSTER=1 to skip the cluster tests on a machine without one")
    if shutil.which("sinfo") is None:
        pytest.fail(f"SLURM is not installed here (no sinfo): {hint}", pytrace=False)
    out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True,
                         text=True, timeout=30)
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc")
                                      for s in states):
        pytest.fail(f"SLURM does not answer with a usable node in partition {PARTITION} "
                    f"(SLURM_CONF={os.environ['SLURM_CONF']}; sinfo: "
                    f"{(out.stdout + out.stderr).strip() or 'nothing'}): {hint}", pytrace=False)
    return PARTITION


def cluster_env() -> dict[str, str]:
    """A subprocess's environment: this checkout's code, W&B off, the cluster's config, and
    the suite's Python first on the path (as an activated environment has it: sbatch passes
    the environment on to the job)."""
    env = module_env({"SLURM_CONF": os.environ["SLURM_CONF"]})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m src.train ARGS` in the background (a sweep whose jobs a test disturbs), its
    output into cwd/command.log (a file: a pipe nobody reads would stall a long sweep)."""
    log = cwd / "command.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=cwd,
                                env=cluster_env(), stdout=out, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    """What the command has printed so far (stdout and stderr)."""
    return proc.log.read_text()  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for the command; its output."""
    proc.wait(timeout=timeout)
    return output(proc)


def run(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """`python -m src.train ARGS` to its end: exit code and output."""
    proc = start(args, cwd)
    out = finish(proc, timeout)
    return proc.returncode, out


def slurm_cmd(*args: str) -> str:
    """A SLURM command's output (it must succeed)."""
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30,
                         env=cluster_env())
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    return out.stdout


def job_field(job_id: str, name: str) -> str:
    """A field of `scontrol show job` (finished jobs stay visible: MinJobAge)."""
    found = re.search(rf"\b{name}=(\S+)", slurm_cmd("scontrol", "show", "job", job_id))
    assert found, f"no {name} for job {job_id}"
    return found.group(1)


def jobs_named(name: str) -> list[str]:
    """The ids of the pending or running jobs of that name."""
    return slurm_cmd("squeue", "-h", "-n", name, "-o", "%i").split()


def job_end(job_id: str, timeout: float = 120) -> str:
    """The job's final state, once SLURM has it (a job whose result submitit already read may
    still be ending)."""
    deadline = time.time() + timeout
    while (state := job_field(job_id, "JobState")) in ("PENDING", "RUNNING", "COMPLETING",
                                                       "REQUEUED", "CONFIGURING"):
        assert time.time() < deadline, f"job {job_id} still {state} after {timeout} s"
        time.sleep(0.2)
    return state


def submitit_jobs(sweep_dir: Path) -> list[str]:
    """The SLURM jobs submitit ran for a sweep: its folders under .submitit that hold a job's
    log (an array's tasks as ARRAY_TASK; the array's own folder holds its script only)."""
    folder = sweep_dir / ".submitit"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*_log.out")))


def wait_for_epochs(metrics: Path, n: int, proc: subprocess.Popen | None = None,
                    timeout: float = 180) -> None:
    """Until a run has logged `n` epochs: `metrics` (a metrics.jsonl), or any run under it (a
    sweep folder)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = sorted(metrics.rglob("metrics.jsonl")) if metrics.is_dir() else [metrics]
        if any(f.is_file() and len(read_metrics(f)) >= n for f in files):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended first:\n{output(proc)[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{metrics} did not reach epoch {n} in {timeout} s")


def same_numbers(got: list[dict], want: list[dict]) -> None:
    """Two runs' metrics.jsonl, every epoch and figure equal (timings aside)."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert {k: v for k, v in a.items() if k not in TIMING} == \
            {k: v for k, v in b.items() if k not in TIMING}, a["epoch"]


# A run long enough to be stopped in its middle, with every random draw in play (Mixup's
# lambdas, smoothing, label noise): its resumed copies must equal it bit for bit.
LONG = ["trainer.epochs=60", "augmentation=mixup_smoothing", "noise=symmetric",
        "noise.rate=0.3"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, cluster) -> tuple[dict, list[dict]]:
    """LONG trained once, uninterrupted, here (not through SLURM): results and metrics."""
    from src.files import read_json

    folder = tmp_path_factory.mktemp("reference")
    code, out = run([*BASE, *LONG, f"hydra.run.dir={folder / 'run'}"], folder)
    assert code == 0, out[-3000:]
    return read_json(folder / "run" / "results.json"), read_metrics(folder / "run" /
                                                                    "metrics.jsonl")


# A job at a real time limit: one minute, SLURM's SIGUSR2 10 s before it, requeued after at
# most one time-out. SLURM looks at time limits every 30 s and signals a job whose end is
# closer than the delay plus those 30 s: this one at the first look after 20 s, 20-50 s into
# each start (past its start-up). Far too many epochs to end meanwhile: it is stopped twice and
# ends interrupted.
TIMEOUT_JOB = "lsmix-timeout"
TIMEOUT = ["trainer.epochs=5000", "hydra.launcher.timeout_min=1",
           "hydra.launcher.signal_delay_s=10", "hydra.launcher.max_num_timeout=1",
           f"hydra.launcher.name={TIMEOUT_JOB}"]


@pytest.fixture(scope="session")
def timeout_sweep(tmp_path_factory, cluster):
    """The time-limit sweep, started in the background: its process and sweep folder."""
    folder = tmp_path_factory.mktemp("timeout")
    sweep = folder / "sweep"
    proc = start(["-m", *BASE, *SUBMITIT, *TIMEOUT, f"hydra.sweep.dir={sweep}",
                  "hydra.sweep.subdir=run"], folder)
    yield proc, sweep
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for job in jobs_named(TIMEOUT_JOB):
        slurm_cmd("scancel", job)


@pytest.fixture(scope="session", autouse=True)
def _slow_jobs_first(request, cluster) -> None:
    """The time-limit job spends a minute or two waiting for SLURM's signals: it starts before
    the other tests, which run meanwhile (it holds one of the node's CPUs)."""
    if any("timeout_sweep" in getattr(item, "fixturenames", ())
           for item in request.session.items):
        request.getfixturevalue("timeout_sweep")
