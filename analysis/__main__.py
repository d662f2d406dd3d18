"""CLI: python -m analysis PATH... [--out DIR] [--eps-axis smoothing|uniform_mass] [--wandb]
[--quiet] [--allow-duplicates] [--correction holm|bh] [--family question|panel]
[--delta-pp PP] [--min-pairs N]."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator

from analysis.errors import AnalysisError
from src.run.signals import SIGNALS, Stopped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog="python -m analysis",
        description="ε × α tables, plots and a report from finished runs (results.json).")
    ap.add_argument("paths", nargs="+", help="study folders, run folders, or the runs.csv "
                    "of an earlier analysis (re-analysed without the run folders; training "
                    "curves then leave its runs out)")
    ap.add_argument("--out", help="output folder (default: <first PATH>/analysis; for a "
                    "runs.csv in FOLDER, FOLDER-reanalysis beside it)")
    ap.add_argument("--eps-axis", choices=("smoothing", "uniform_mass"), default="smoothing",
                    help="rows of the ε × α tables: ε as configured (default), or the uniform "
                    "mass m of the smoothed target (1 - m) y + m/K, comparable across "
                    "smoothing conventions")
    ap.add_argument("--wandb", action="store_true", help="also push the tables, figures and "
                    "report to W&B into <first PATH>/wandb (mode from WANDB_MODE)")
    ap.add_argument("--quiet", action="store_true", help="print only counts and the report path")
    ap.add_argument("--allow-duplicates", action="store_true",
                    help="keep the newest of runs with the same config and seed")
    ap.add_argument("--correction", choices=("holm", "bh"), default="holm",
                    help="multiple-comparison correction: Holm (family-wise error, default) "
                    "or Benjamini-Hochberg (false discovery rate)")
    ap.add_argument("--family", choices=("question", "panel"), default="question",
                    help="what one correction covers: each question of a panel (default), "
                    "or all questions of a panel together (stricter)")
    ap.add_argument("--delta-pp", type=float, default=1.0,
                    help="smallest effect that matters, in percentage points: 'no detectable "
                    "difference' needs the whole CI inside +-delta (default 1)")
    ap.add_argument("--metric", choices=("final_test_acc", "test_acc_last_k",
                                         "test_acc_at_best_val"),
                    default="final_test_acc",
                    help="the test metric the claims compare: the last epoch's accuracy "
                    "(default), the mean of the last trainer.last_k epochs (as Co-teaching "
                    "and JoCoR report), or the accuracy at the epoch of best noisy validation "
                    "accuracy (early stopping on the noisy validation split)")
    ap.add_argument("--min-pairs", type=int, default=5,
                    help="fewest paired runs for a verdict other than undecided (default 5)")
    ap.add_argument("--figures", choices=("png,pdf", "pdf,png", "png", "pdf", "none"),
                    default="png,pdf",
                    help="the figures' file formats (default png,pdf; none: no figures)")
    return ap.parse_args(argv)


@contextlib.contextmanager
def _signal_policy() -> Iterator[None]:
    """The suite's signal policy (src.run.signals) while the command runs, installed before the
    slow imports; given back after only if installed here (main may run inside a caller)."""
    mine = not SIGNALS.previous
    try:
        SIGNALS.install()
        yield
    finally:
        if mine:
            SIGNALS.restore()


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; bad input (paths, runs, --out) is one paragraph on stderr and exit
    status 2, as for a bad option. SIGTERM (and SIGUSR1/2) or Ctrl-C: one line on stderr
    saying what the output folder holds (the old analysis, untouched, unless the new one was
    complete), exit status 75 or 130 as for a stopped training run."""
    args = parse_args(argv)
    try:
        with _signal_policy():
            from analysis import analyse  # pandas and matplotlib: seconds
            from analysis.stats import StatsOptions

            stats = StatsOptions(correction=args.correction, family=args.family,
                                 delta=args.delta_pp / 100, min_pairs=args.min_pairs,
                                 metric=args.metric)
            analyse(args.paths, args.out, quiet=args.quiet, push_wandb=args.wandb,
                    allow_duplicates=args.allow_duplicates, eps_axis=args.eps_axis,
                    stats=stats, figure_formats=tuple(
                        f for f in args.figures.split(",") if f != "none"))
    except AnalysisError as err:
        print(f"analysis error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:  # analysis.errors.Interrupted says what the folder holds
        print(stop if type(stop) is not Stopped else
              f"analysis interrupted by {signal.Signals(stop.signum).name} before it "
              "started: nothing was written", file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
