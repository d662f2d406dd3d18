"""How long N runs take when started at once on this machine (cores shared or fought over).

    python -m src.tools.concurrent_runs --runs 3 trainer.epochs=10            # threads=auto
    python -m src.tools.concurrent_runs --runs 3 trainer.epochs=10 trainer.threads=2

Starts N `python -m src.train` processes together (each into its own temporary folder), times
them from the outside until the last ends, and prints and writes (`--out`, default
outputs/bench/concurrent_runs.json) `wall_s`, each run's `train_time_s` and its recorded
`threads`, with `machine` as src.tools.bench writes it.
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

ROOT = Path(__file__).resolve().parents[2]


def measure(runs: int, overrides: list[str]) -> dict[str, Any]:
    """Start `runs` runs at once; their wall time and records."""
    with tempfile.TemporaryDirectory(prefix="concurrent_") as tmp:
        dirs = [Path(tmp) / f"run{i}" for i in range(runs)]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "src.train", *overrides,
                                   f"hydra.run.dir={d}", "trainer.progress=false"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for d in dirs]
        errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            raise SystemExit("a run failed:\n" + "\n".join(e[-2000:] for e in errors if e))
        records = [read_json(d / RESULTS) for d in dirs]
    return {"runs": runs, "overrides": overrides, "wall_s": wall,
            "train_time_s": [r["train_time_s"] for r in records],
            "threads": [r["threads"] for r in records]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m src.tools.concurrent_runs",
                                description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides of every run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="outputs/bench/concurrent_runs.json")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs={args.runs!r}: expected an integer >= 1")
    import torch

    from src.tools.report import machine, print_fields, write_report

    report = {"created_at": now_iso(), "machine": machine(torch.device("cpu")),
              **measure(args.runs, args.overrides)}
    print_fields(report, ("runs", "wall_s", "train_time_s", "threads"))
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
