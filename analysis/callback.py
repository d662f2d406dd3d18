"""Hydra callbacks at the end of a sweep: the studies' analysis (AnalyseSweep), and for every
multirun where its runs are and how to analyse them (SweepEnd)."""

from __future__ import annotations

import json
import logging
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AnalyseSweep(Callback):
    """After a multirun, run the analysis over its sweep folder and print the tables. Written
    beside the sweep's analysis folder and put in its place when complete: a signal meanwhile
    (analysis.errors.Interrupted, a Stopped) leaves an earlier analysis as it was and stops
    the sweep like any other stop (src.train: exit 75, or 130 for Ctrl-C)."""

    def __init__(self, enabled: bool = True, quiet: bool = False,
                 figures: list[str] | tuple[str, ...] = ("png", "pdf")) -> None:
        self.enabled, self.quiet, self.figures = enabled, quiet, tuple(figures)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from analysis import AnalysisError, analyse

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            out = analyse([sweep_dir], quiet=self.quiet, figure_formats=self.figures)
        except AnalysisError as err:  # e.g. every job was skipped for bad input
            log.warning("no analysis of %s: %s", sweep_dir, err)
            return
        print(f"\nAnalysis written to {out} (report: {out / 'report.md'})")
        if "pdf" not in self.figures:
            print(f"Figures as PNG; for PDF too: python -m analysis {sweep_dir}")


def run_statuses(sweep_dir: Path) -> Counter[str]:
    """How many runs under the sweep folder end in each status (results.json's `status`)."""
    counts: Counter[str] = Counter()
    for path in sweep_dir.rglob("results.json"):
        try:
            counts[str(json.loads(path.read_text()).get("status", "unknown"))] += 1
        except (OSError, ValueError, AttributeError):  # half-written or not a results object
            counts["unreadable"] += 1
    return counts


def failed_in_this_sweep(sweep_dir: Path) -> list[str]:
    """The runs of the sweep folder that did not end completed or diverged during this sweep
    (failed, or left interrupted or running; their results.json written after the sweep's
    multirun.yaml, which Hydra writes as a sweep starts), as FAILED_JOBS lines: a launcher
    that runs the jobs in other processes (submitit_slurm) reports them all as COMPLETED, so
    the records are what tell. (A second sweep into the same folder at the same time would
    count the first one's too.)"""
    start = sweep_dir / "multirun.yaml"
    since = start.stat().st_mtime if start.is_file() else 0.0
    lines = []
    for path in sorted(sweep_dir.rglob("results.json")):
        try:
            if path.stat().st_mtime < since:
                continue
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        status = res.get("status") if isinstance(res, dict) else None
        if status not in ("completed", "diverged"):  # failed, or left interrupted / running
            error = res.get("error") if isinstance(res, dict) else None
            lines.append(": ".join(str(p) for p in (path.parent, status, error) if p))
    return lines


def sweep_end_message(sweep_dir: Path, analysed: bool) -> str:
    """Where a finished sweep's runs are and the command that analyses them. `analysed`: the
    study's own analysis callback has just run (its report is named instead of advised)."""
    counts = run_statuses(sweep_dir)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    runs = f"{sum(counts.values())} runs ({tally})" if counts else "no runs"
    command = f"python -m analysis {shlex.quote(str(sweep_dir))}"
    lines = [f"Sweep finished: {runs} in {sweep_dir}"]
    if analysed:
        lines.append(f"Report: {sweep_dir / 'analysis' / 'report.md'}; analyse again with: "
                     f"{command}")
        lines.append("(hydra.callbacks.analysis.quiet=true writes a study's report without "
                     "printing its tables)")
    else:
        lines.append(f"Analyse them with: {command}")
        lines.append("(a study, +experiment=NAME, does this when its sweep ends; "
                     "hydra.callbacks.analysis.quiet=true writes its report without printing "
                     "the tables)")
    return "\n".join(lines)


class SweepEnd(Callback):
    """After any multirun: where its runs are, how many ended how, and how to analyse them.

    Registered for every run in conf/hydra/default.yaml; Hydra calls end callbacks in reverse
    order, so a study's AnalyseSweep (registered later) prints first and this comes last."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        study = (config.hydra.get("callbacks") or {}).get("analysis")
        analysed = (study is not None and bool(study.get("enabled", True))
                    and (sweep_dir / "analysis" / "report.md").is_file())
        print("\n" + sweep_end_message(sweep_dir, analysed))
        from src.run import preflight

        if not preflight.FAILED_JOBS:  # failed in other processes: the sweep exits 1 too
            preflight.FAILED_JOBS.extend(failed_in_this_sweep(sweep_dir))
