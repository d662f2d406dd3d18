"""The GPU figures from one unattended command: throughput, the batched launcher, the GPU tests
and the projected wall time of the GPU studies, written as one JSON and a Markdown table.

    make bench-gpu                                  # scripts/bench_gpu.sh, then this module
    python -m src.tools.bench_gpu --data .carry/data/cifar10_jpeg.npz [--update-docs]
    python -m src.tools.bench_gpu --dry-run         # every step at tiny sizes on the CPU

Each step runs in its own subprocess (a crash or a hang is that step's result, the others still
run), in this order, within one time budget (`--budget-s`, 420 s, so that an H100 run with its
set-up ends within 8 minutes); a step the budget has no room left for is `skipped`:

1. `data`: the CIFAR-10 archive (the JPEG-scan copy or plain arrays) decoded once into plain
   arrays, `cifar10.npz` in the output folder: no later step decodes again.
2. `throughput_512`: PreAct ResNet-18, bf16, batch 512, `--compile` (CUDA graphs):
   `python -m src.tools.bench` on CIFAR-10, the suite's epoch in images/s. Target 85,000.
3. `throughput_128`: the Mixup paper's recipe, `trainer=cifar` (batch 128), with CUDA graphs
   (`--compile reduce-overhead`), and the evaluation forward (`--eval`). Target 30,000.
4. `batched_launcher`: 16 `cnn` runs on CIFAR-10 (seeds 0-15, `--launcher-epochs` epochs)
   as one sweep under `hydra/launcher=batched`, against the same sweep under Hydra's default
   launcher (16 runs one after another in one process): the ratio of the commands' wall
   times, and of the runs' summed training times. Target 10x.
5. `projection_NAME` for `mixup_paper_cifar10` and `answer_gpu` (`--experiments`):
   `python -m src.train +experiment=NAME plan=true` for the runs left and plan's own estimate
   (which times the model eager and in fp32), and the projection on this GPU from step 3:
   per setting, runs x (epochs x steps x the measured step time + evaluations x the images an
   evaluation predicts / the measured evaluation rate), one run at a time, for the study run
   with `trainer.compile=true` (the setting measured; both studies default to eager). The
   batched launcher, which answer_gpu uses, trains stacked members at a speed of its own,
   not measured here for PreAct ResNet-18. A study conf/experiment/ does not define is
   reported `not defined`.
6. `gpu_tests`: `pytest` over tests/test_fastpath.py, tests/test_multiseed.py and
   tests/test_gpu_readiness.py (their CUDA tests run on a GPU and skip elsewhere); last, as
   the longest step with no figure of its own.

`--dry-run` runs every step on the CPU at tiny sizes (synthetic CIFAR-shaped data, a narrow
PreAct ResNet-18 without compile, 2 launcher runs of one epoch, the tests collected but not
run, the plans of a tiny model) in about a minute: it checks the script, not the figures.

Written to `--out` (outputs/bench_gpu): `bench_gpu.json` (`schema`, `created_at`, `command`,
`dry_run`, `machine`, `card`, `budget_s`, `wall_s`, `steps`: per step `status` (ok, failed,
timeout, skipped, not defined), `seconds`, `command`, `figures`, `target`, `meets_target`,
`log`), `performance.md` (the table) and `logs/STEP.log`; `--update-docs` puts the table into
docs/performance.md (src.tools.gpu_table).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src.tools.gpu_table import DOC, TARGETS, render_table, update_doc

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("mixup_paper_cifar10", "answer_gpu")
TEST_FILES = ("tests/test_fastpath.py", "tests/test_multiseed.py", "tests/test_gpu_readiness.py")
LAUNCHER_RUNS = 16
MIN_STEP_S = 15  # a step with less of the budget left is skipped, not started


@dataclass
class Step:
    """One step's outcome (see the module docstring)."""

    status: str
    seconds: float = 0.0
    command: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    target: float | None = None
    meets_target: bool | None = None
    log: str = ""


class Budget:
    """The run's deadline: each step gets at most its cap and what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def allow(self, cap: float) -> float:
        return max(0.0, min(cap, self.deadline - time.monotonic()))


def run_command(cmd: list[str], timeout: float, log: Path) -> tuple[str, float, str]:
    """(ok | failed | timeout, seconds, output) of a command run from the checkout in its own
    process group, which a timeout ends whole; the output also goes to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = "timeout"
    seconds = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(cmd)}\n{out}\n[{status} after {seconds:.1f} s]\n")
    return status, seconds, out


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------- the steps


def prepare_data(args: argparse.Namespace, out: Path) -> Step:
    """CIFAR-10 as plain arrays in the output folder (dry run: a tiny synthetic copy)."""
    target = out / "data" / "cifar10.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.dry_run:
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8),
                  "y_train": rng.integers(0, 10, 256), "x_test": rng.integers(
                      0, 256, (64, 32, 32, 3), dtype=np.uint8), "y_test": rng.integers(0, 10, 64)}
    else:
        from src.data.arrays import load_npz
        from src.errors import ConfigError

        try:
            loaded = load_npz(args.data)
        except ConfigError as err:
            return Step("failed", command=f"load {args.data}", log=str(err))
        arrays = {k: getattr(loaded, k) for k in ("x_train", "y_train", "x_test", "y_test")}
    np.savez(target, **arrays)
    args.npz = str(target)
    return Step("ok", time.perf_counter() - start, f"decode {args.data} -> {target}",
                {"train_images": len(arrays["y_train"]), "test_images": len(arrays["y_test"])})


def bench_command(args: argparse.Namespace, out: Path, name: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "src.tools.bench", "--dataset", "cifar10", "--npz", args.npz,
           "--model", "preact_resnet18", "--no-reference", "--out", str(out / f"{name}.json")]
    if args.dry_run:
        return cmd + ["--smoke", "--device", "cpu", "--amp", "off"] + \
            [e for e in extra if not e.startswith("--compile") and e != "reduce-overhead"]
    return cmd + ["--device", "cuda", "--amp", "bf16", "--warmup", "1", "--repeats", "3"] + extra


def throughput(args: argparse.Namespace, out: Path, budget: Budget, name: str,
               extra: list[str]) -> Step:
    """The bench at one setting: the suite's epoch, its step against the bare loop, and (with
    --eval) the evaluation forward."""
    import json

    cmd = bench_command(args, out, name, extra)
    status, seconds, log = run_command(cmd, budget.allow(240), out / "logs" / f"{name}.log")
    step = Step(status, seconds, " ".join(cmd[1:]), target=TARGETS[name])
    if status != "ok":
        step.log = tail(log)
        return step
    summary = json.loads((out / f"{name}.json").read_text())["summary"]
    step.figures = {k: summary[k] for k in ("suite_images_per_s", "bare_images_per_s",
                                            "overhead_vs_bare", "eval_images_per_s")}
    step.meets_target = summary["suite_images_per_s"] >= step.target
    return step


def completed_runs(folder: Path) -> list[dict[str, Any]]:
    import json

    return [r for r in (json.loads(p.read_text()) for p in folder.rglob("results.json"))
            if r.get("status") == "completed"]


def batched_launcher(args: argparse.Namespace, out: Path, budget: Budget) -> Step:
    """The same sweep of `cnn` runs under the batched and under the default launcher."""
    runs = 2 if args.dry_run else LAUNCHER_RUNS
    common = [sys.executable, "-m", "src.train", "-m", "dataset=cifar10",
              f"dataset.npz={args.npz}", "model=cnn", f"trainer.epochs={args.launcher_epochs}",
              "trainer.progress=false", f"trainer.seed={','.join(map(str, range(runs)))}"]
    if args.dry_run:
        common += ["model.channels=[4,8]", "trainer.epochs=1", "trainer.batch_size=32"]
    figures: dict[str, Any] = {"runs": runs}
    commands = []
    for kind, launcher in (("batched", ["hydra/launcher=batched",
                                        f"hydra.launcher.max_members={runs}"]),
                           ("separate", [])):
        folder = out / f"launcher_{kind}"
        shutil.rmtree(folder, ignore_errors=True)  # completed runs would be skipped
        cmd = common + [f"paths.output_dir={folder}"] + launcher
        commands.append(" ".join(cmd[1:]))
        status, seconds, log = run_command(cmd, budget.allow(300),
                                           out / "logs" / f"launcher_{kind}.log")
        done = completed_runs(folder)
        if status != "ok" or len(done) != runs:
            return Step(status if status != "ok" else "failed", seconds, " && ".join(commands),
                        figures, TARGETS["batched_launcher"], log=tail(log))
        figures[f"{kind}_wall_s"] = seconds
        figures[f"{kind}_train_s"] = sum(r["train_time_s"] for r in done)
    figures["wall_speedup"] = figures["separate_wall_s"] / figures["batched_wall_s"]
    figures["train_speedup"] = figures["separate_train_s"] / max(figures["batched_train_s"],
                                                                 1e-9)
    step = Step("ok", figures["batched_wall_s"] + figures["separate_wall_s"],
                " && ".join(commands), figures, TARGETS["batched_launcher"])
    step.meets_target = figures["wall_speedup"] >= step.target
    return step


def gpu_tests(args: argparse.Namespace, out: Path, budget: Budget) -> Step:
    """The fast-path, stacked-member and GPU-readiness tests (collected only in a dry run)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
    if args.dry_run:
        cmd.append("--collect-only")
    status, seconds, log = run_command(cmd, budget.allow(240), out / "logs" / "gpu_tests.log")
    counts = {k: int(n) for n, k in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|tests? collected)", log)}
    return Step(status, seconds, " ".join(cmd[1:]), counts, log=tail(log, 25))


# plan=true's total, "to run: N, estimated H:MM:SS ...", and its line per setting,
# "  N x H:MM:SS  what  (E epochs x S steps of T ms)" (src.sweep.plan.describe)
PLAN_TOTAL = re.compile(r"^to run: (\d+), estimated (\d+):(\d\d):(\d\d)", re.MULTILINE)
PLAN_LINE = re.compile(r"^\s*(\d+) x \d+:\d\d:\d\d\s.*\((\d+) epochs x (\d+) steps of "
                       r"[\d.]+ ms\)\s*$", re.MULTILINE)


def parse_plan(text: str) -> tuple[dict[str, int] | None, list[dict[str, int]]]:
    """plan=true's total (runs left, its estimate in seconds), and its settings (runs,
    epochs, steps per epoch); (None, []) where it printed none."""
    total = PLAN_TOTAL.search(text)
    if total is None:
        return None, []
    n, h, m, s = (int(v) for v in total.groups())
    return ({"runs": n, "plan_estimate_s": h * 3600 + m * 60 + s},
            [{"runs": int(r), "epochs": int(e), "steps": int(k)}
             for r, e, k in PLAN_LINE.findall(text)])


def projected_seconds(settings: list[dict[str, float]], step_s: float, eval_every: int,
                      eval_images: int, eval_images_per_s: float) -> float:
    """One run at a time on this GPU: training steps at the measured step time, evaluations
    at the measured evaluation rate."""
    return sum(s["runs"] * (s["epochs"] * s["steps"] * step_s
                            + math.ceil(s["epochs"] / eval_every) * eval_images
                            / eval_images_per_s) for s in settings)


def projection(args: argparse.Namespace, out: Path, budget: Budget, name: str,
               measured: Step) -> Step:
    """plan=true of a study, and its wall time on this GPU from the batch-128 figures."""
    data_dir = out / "data"
    # The setting step 3 measured: the projection holds for the study run with it.
    cmd = [sys.executable, "-m", "src.train", f"+experiment={name}", "trainer.compile=true",
           "plan=true", f"paths.data_dir={data_dir}", f"paths.output_dir={out / 'plan'}"]
    if args.dry_run:
        cmd += ["model=cnn", "model.channels=[4,8]", "trainer.epochs=2"]
    status, seconds, log = run_command(cmd, budget.allow(150), out / "logs" / f"plan_{name}.log")
    step = Step(status, seconds, " ".join(cmd[1:]))
    total, settings = parse_plan(log)
    if status != "ok" or total is None:
        step.status, step.log = ("failed" if status == "ok" else status), tail(log)
        return step
    step.figures = dict(total)
    ips, eval_ips = (measured.figures.get(k) for k in ("suite_images_per_s", "eval_images_per_s"))
    if measured.status == "ok" and ips and eval_ips:
        eval_every = experiment_eval_every(name)
        images = sum(measured_data_sizes(args))
        step.figures["projected_gpu_s"] = projected_seconds(
            settings, args.projection_batch / ips, eval_every, images, eval_ips)
    return step


def defined(name: str) -> bool:
    """Does conf/experiment/ define the study?"""
    return (ROOT / "conf" / "experiment" / f"{name}.yaml").is_file()


def experiment_eval_every(name: str) -> int:
    """trainer.eval_every of a study, composed as a run composes it."""
    from hydra import compose, initialize_config_dir

    import src.config  # noqa: F401  (the resolvers the config uses)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return int(compose("config", overrides=[f"+experiment={name}"]).trainer.eval_every)


def measured_data_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """Training (with validation) and test images of the archive the steps use."""
    with np.load(args.npz) as z:
        return len(z["y_train"]), len(z["y_test"])


# ---------------------------------------------------------------- entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m src.tools.bench_gpu",
                                description=__doc__.split("\n")[0])
    p.add_argument("--data", default=".carry/data/cifar10_jpeg.npz",
                   help="the CIFAR-10 archive (JPEG scans or plain arrays)")
    p.add_argument("--out", default="outputs/bench_gpu", help="folder for the JSON, table, logs")
    p.add_argument("--budget-s", type=float, default=420.0, help="time for all the steps")
    p.add_argument("--launcher-epochs", type=int, default=2)
    p.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS))
    p.add_argument("--update-docs", action="store_true",
                   help=f"write the table into {DOC.relative_to(ROOT)}")
    p.add_argument("--dry-run", action="store_true",
                   help="every step at tiny sizes on the CPU (checks the script, not the GPU)")
    args = p.parse_args(argv)
    if args.dry_run and args.update_docs:
        p.error("--update-docs with --dry-run: a dry run's numbers are not figures")
    if args.budget_s <= 0 or args.launcher_epochs < 1:
        p.error("--budget-s and --launcher-epochs: expected positive numbers")
    if not args.dry_run and not Path(args.data).is_file():
        p.error(f"--data={args.data!r}: expected the CIFAR-10 archive (copy cifar10_jpeg.npz "
                "to .carry/data/, see docs/performance.md)")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.projection_batch = 128  # both studies train with trainer=cifar (batch 128)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every step, write the JSON and the table; exit 1 if a step failed."""
    import torch

    from src.files import write_json_atomic
    from src.run.records import now_iso
    from src.tools.report import machine

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, budget = time.perf_counter(), Budget(args.budget_s)
    steps: dict[str, Step] = {}

    def do(name: str, fn: Callable[[], Step]) -> None:
        steps[name] = fn() if budget.allow(MIN_STEP_S) >= MIN_STEP_S else Step("skipped")
        print(f"{name}: {steps[name].status} {steps[name].figures}", flush=True)

    do("data", lambda: prepare_data(args, out))
    if steps["data"].status == "ok":
        do("throughput_512", lambda: throughput(args, out, budget, "throughput_512",
                                                ["--batch-size", "512", "--compile"]))
        do("throughput_128", lambda: throughput(
            args, out, budget, "throughput_128",
            ["--trainer", "cifar", "--batch-size", "128", "--compile", "reduce-overhead",
             "--eval"]))
        do("batched_launcher", lambda: batched_launcher(args, out, budget))
    measured = steps.get("throughput_128", Step("skipped"))
    for name in args.experiments:
        if defined(name):
            do(f"projection_{name}", lambda n=name: projection(args, out, budget, n, measured))
        else:  # a study not written yet: said so, not failed
            steps[f"projection_{name}"] = Step("not defined", command=f"+experiment={name}")
            print(f"projection_{name}: not defined (no conf/experiment/{name}.yaml)")
    do("gpu_tests", lambda: gpu_tests(args, out, budget))  # last: the longest, no figure
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    report = {"schema": 1, "created_at": now_iso(),
              "command": " ".join(["python -m src.tools.bench_gpu", *args.argv]),
              "dry_run": args.dry_run, "machine": machine(device),
              "card": machine(device)["device_name"] or "CPU", "budget_s": args.budget_s,
              "wall_s": time.perf_counter() - start,
              "steps": {k: asdict(v) for k, v in steps.items()}}
    table = render_table(report)
    write_json_atomic(out / "bench_gpu.json", report)
    (out / "performance.md").write_text(table)
    print(table)
    if args.update_docs:
        update_doc(table)
        print(f"updated: {DOC}")
    failed = [k for k, v in steps.items() if v.status in ("failed", "timeout")]
    if failed:
        print(f"steps that did not complete: {', '.join(failed)} (logs in {out / 'logs'})",
              file=sys.stderr)
    return report


def cli() -> None:
    report = main()
    bad = any(s["status"] in ("failed", "timeout") for s in report["steps"].values())
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    cli()
