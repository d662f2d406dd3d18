"""Is one run still at its limit? The suite's step against its bare loop, as a pass or a fail.

    python -m src.tools.bench_check                                  # runs the bench, then checks
    python -m src.tools.bench_check -- --dataset digits --model mlp  # bench options after --
    python -m src.tools.bench_check --report outputs/bench/bench.json  # a report already written
    python -m src.tools.bench_check --tolerance 0.03

The bench (src.tools.bench) times, in one process, the suite's training step inside an epoch
(`suite_step`: gathering, crop and flip, Mixup, the smoothed loss, on-device metrics) and the
same step on batches made beforehand (`bare_step`: the model's forward, loss and update
alone, the floor of a step). Its `overhead_vs_bare` is their ratio minus one. This check
exits 0 when that overhead is at most `--tolerance` (5 %), 1 when the suite has fallen further
behind its bare loop, and 2 when the report holds no such figures. It is a benchmark script:
run it on a quiet machine, alone, as the bench is; a unit test checks only its decision on
given numbers (tests/test_bench_check.py), never a timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOLERANCE = 0.05  # the suite's step may be at most 5 % slower than its bare loop


@dataclass(frozen=True)
class Verdict:
    """Whether the suite's step is within the tolerance of its bare loop (None: not measured),
    and the one line that says so."""

    ok: bool | None
    line: str

    @property
    def exit_code(self) -> int:
        return {True: 0, False: 1, None: 2}[self.ok]


def judge(summary: Mapping[str, Any], tolerance: float = TOLERANCE) -> Verdict:
    """The verdict on a bench report's `summary` (its `overhead_vs_bare`)."""
    overhead = summary.get("overhead_vs_bare")
    if overhead is None:
        return Verdict(None, "no overhead_vs_bare in the report: the bench measured no "
                             "suite step and bare step to compare")
    ok = overhead <= tolerance
    side = "behind" if overhead >= 0 else "ahead of"
    return Verdict(ok, f"{'PASS' if ok else 'FAIL'}: the suite's step is "
                       f"{abs(overhead):.1%} {side} its bare loop (at most {tolerance:.0%} "
                       f"behind allowed)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m src.tools.bench_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("--report", default=None,
                   help="a bench JSON already written (default: run the bench now)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="largest allowed overhead over the bare loop, a fraction (0.05 = 5 %%)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="options of python -m src.tools.bench, after --")
    args = p.parse_args(argv)
    if not 0 <= args.tolerance < 1:
        p.error(f"--tolerance={args.tolerance!r}: expected a fraction in [0, 1), e.g. 0.05")
    if args.report is not None and args.bench_args:
        p.error("--report reads a report already written: bench options have nothing to run")
    args.bench_args = [a for a in args.bench_args if a != "--"]
    return args


def main(argv: list[str] | None = None) -> Verdict:
    """Run the bench (or read its report), print the verdict, exit with its code."""
    args = parse_args(argv)
    if args.report is not None:
        try:
            summary = json.loads(Path(args.report).read_text())["summary"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"python -m src.tools.bench_check: error: --report={args.report!r}: expected "
                  f"a bench JSON with a summary ({err})", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        from src.tools import bench

        summary = bench.main(args.bench_args)["summary"]
    verdict = judge(summary, args.tolerance)
    print(verdict.line)
    raise SystemExit(verdict.exit_code)


if __name__ == "__main__":
    main()
