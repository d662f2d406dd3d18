"""Optional: push the analysis tables to W&B as one run (job_type "analysis") in the study's
group. Any failure is a warning: the files on disk are the result."""

from __future__ import annotations

import os
import sys
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


def push(tables: dict[str, pd.DataFrame], done: pd.DataFrame, out_dir: Path) -> bool:
    """Log each frame as a wandb.Table; mode and project from the environment (WANDB_*)."""
    try:
        import wandb

        group = _group(done)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), group=group,
                         job_type="analysis", name=f"analysis-{group}",
                         dir=os.environ.get("WANDB_DIR", str(out_dir)), reinit="finish_previous")
        try:
            run.log({name: _table(wandb, df) for name, df in tables.items()})
        finally:
            run.finish()
        return True
    except Exception as err:  # offline, no credentials, no package: the analysis still stands
        print(f"warning: W&B push failed ({type(err).__name__}: {err}); the files in "
              f"{out_dir} are complete", file=sys.stderr)
        return False
