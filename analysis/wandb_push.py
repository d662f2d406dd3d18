"""Optional: push the analysis to W&B as one run (job_type "analysis") in the study's group:
the tables as wandb.Tables, the figures (PNG) as images and report.md as a file of the run.
Its local files go under the study folder, so syncing that folder (`wandb sync
<study>/wandb/offline-run-*`) uploads them with the study. Any failure is a warning: the files
on disk are the result."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

PROJECT = "label-smoothing-mixup"  # the training logger's default project


def _group(done: pd.DataFrame) -> str:
    """The study (experiment) the runs belong to; several studies joined with '+'."""
    names = sorted({str(v) for v in done.get("experiment", pd.Series(dtype=str)).dropna()})
    return "+".join(names) or "analysis"


def _table(wandb, df: pd.DataFrame):
    """A wandb.Table of a frame, every value JSON-safe (NaN and None as None)."""
    clean = df.astype(object).where(df.notna(), None)
    return wandb.Table(columns=[str(c) for c in clean.columns], data=clean.values.tolist())


def _attach_report(run, report: Path) -> None:
    """report.md copied into the run's files (a copy, not a link: later analyses into the same
    folder must not change what this run holds)."""
    copy = Path(run.dir) / report.name
    shutil.copyfile(report, copy)
    run.save(str(copy), base_path=run.dir, policy="now")


def push(tables: dict[str, pd.DataFrame], done: pd.DataFrame, out_dir: Path, *,
         figures: Sequence[Path] = (), report: Path | None = None,
         study: Path | None = None) -> bool:
    """Log each frame as a wandb.Table and each figure as a wandb.Image (key figures/<name>),
    attach report.md; W&B's files go to `study` (default `out_dir`); mode and project from the
    environment (WANDB_MODE, WANDB_PROJECT)."""
    try:
        import wandb

        group = _group(done)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), group=group,
                         job_type="analysis", name=f"analysis-{group}",
                         dir=str(study or out_dir), reinit="finish_previous")
        try:
            logged = {name: _table(wandb, df) for name, df in tables.items()}
            logged |= {f"figures/{Path(p).stem}": wandb.Image(str(p)) for p in figures}
            run.log(logged)
            if report is not None:
                _attach_report(run, Path(report))
        finally:
            run.finish()
        return True
    except Exception as err:  # offline, no credentials, no package: the analysis still stands
        print(f"warning: W&B push failed ({type(err).__name__}: {err}); the files in "
              f"{out_dir} are complete", file=sys.stderr)
        return False
