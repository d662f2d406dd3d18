"""Where a sweep's wall time goes: training and evaluation against everything else.

    python -m src.tools.sweep_time                          # 24 one-epoch digits runs
    python -m src.tools.sweep_time trainer.epochs=15  # any override; a grid axis replaces ours
    python -m src.tools.sweep_time "trainer.parallel_seeds=[0,1,2]" trainer.seed=0
    python -m src.tools.sweep_time +experiment=quickstart model=mlp hydra/launcher=basic

It runs `python -m src.train -m GRID OVERRIDES` in a new process, with Hydra's default launcher
(one process, jobs one after another) unless the overrides or a study name another, writing
into a temporary folder (or `--dir`), and times that process from the outside, so the wall
time holds everything a researcher waits for: interpreter start-up, imports, Hydra's
composition of every job, a study's plan, data loading, validation, noise injection, logging,
writing and a study's analysis. It then reads every run's results.json and sums
`train_time_s` and `eval_time_s` (seeds trained together share theirs: counted once per job).

The grid, unless an override names the same key: `augmentation=none,mixup,smoothing,
mixup_smoothing noise=none,symmetric trainer.seed=0,1,2 trainer.epochs=1` on the default
dataset (digits) and model (cnn): 4 x 2 x 3 = 24 runs. A study (`+experiment=NAME`) runs its
own grid and launcher (`hydra/launcher=basic` or `batched` replaces the launcher), so the
same study under two launchers is two commands, side by side.

Printed, and written as JSON to `--out` (default outputs/bench/sweep_time.json): `command`
(the sweep's), `runs` (results found), `completed`, `wall_s`, `train_s`, `eval_s`,
`outside_s` (wall - train - eval), `outside_fraction` (outside_s / wall_s), `per_run_outside_s`,
`created_at` and `machine` (as src.tools.bench writes it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from src.files import read_json
from src.run.records import RESULTS, now_iso

ROOT = Path(__file__).resolve().parents[1]
GRID = ["augmentation=none,mixup,smoothing,mixup_smoothing", "noise=none,symmetric",
        "trainer.seed=0,1,2", "trainer.epochs=1"]


def sweep_args(overrides: list[str]) -> list[str]:
    """The grid with each axis an override names replaced by that override; a study
    (`+experiment=NAME`) brings its own grid, and takes none of ours."""
    named = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if "experiment" in named:
        return list(overrides)
    return [g for g in GRID if g.split("=", 1)[0] not in named] + list(overrides)


def account(sweep_dir: Path) -> dict[str, Any]:
    """Runs, completed runs, and training and evaluation seconds found under sweep_dir."""
    runs = [r for p in sorted(sweep_dir.rglob(RESULTS)) if (r := read_json(p)) is not None]
    train = evaluate = 0.0
    shared: set[tuple] = set()
    for r in runs:
        # One batched job: its seconds appear in each of its members' results. `trained_with`
        # names the batch (the same string in every member); older runs had only the seeds.
        together = r.get("trained_with")
        key = ("batch", together) if together else (r.get("group"), r.get("trained_with_seeds"))
        if together or r.get("trained_with_seeds"):
            if key in shared:
                continue
            shared.add(key)
        train += float(r.get("train_time_s") or 0.0)
        evaluate += float(r.get("eval_time_s") or 0.0)
    return {"runs": len(runs), "completed": sum(r.get("status") == "completed" for r in runs),
            "train_s": train, "eval_s": evaluate}


def measure(overrides: list[str], sweep_dir: Path) -> dict[str, Any]:
    """Run the sweep in a new process, timed from outside; account for its runs."""
    args = [sys.executable, "-m", "src.train", "-m", *sweep_args(overrides),
            f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = account(sweep_dir)
    outside = wall - out["train_s"] - out["eval_s"]
    return {"command": " ".join(["python -m src.train -m", *args[4:]]), **out, "wall_s": wall,
            "outside_s": outside, "outside_fraction": outside / wall,
            "per_run_outside_s": outside / max(out["runs"], 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, run the sweep, print and write the accounting."""
    p = argparse.ArgumentParser(prog="python -m src.tools.sweep_time",
                                description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the sweep")
    p.add_argument("--dir", default=None, help="sweep folder (default: a temporary one)")
    p.add_argument("--out", default="outputs/bench/sweep_time.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sweep_time_") as tmp:
        report = measure(args.overrides, Path(args.dir or tmp).resolve())
    import torch

    from src.tools.report import machine, print_fields, write_report

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # trainer.device=auto
    report = {"created_at": now_iso(),
              "machine": machine(device), **report}
    print_fields(report, ("runs", "completed", "wall_s", "train_s", "eval_s", "outside_s",
                          "outside_fraction", "per_run_outside_s"))
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
