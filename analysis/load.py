"""Collect run directories into one tidy table, one row per run, and list the problem runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.errors import AnalysisError
from analysis.schema import (
    METRICS,
    METRICS_LOG,
    REQUIRED,
    REQUIRED_COMPLETED,
    RESULTS,
    config_columns,
)

PROBLEM_COLUMNS = ["run_dir", "status", "error", "experiment", "group", "seed"]
SKIP_DIRS = {"wandb", "__pycache__"}


@dataclass
class Runs:
    """Every run found: the table of parsed results (all statuses) and the problem runs."""

    table: pd.DataFrame
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))
    corrupt: int = 0

    @property
    def completed(self) -> pd.DataFrame:
        """The runs that enter tables and means: status == "completed" only."""
        if self.table.empty:
            return self.table
        return self.table[self.table["status"] == "completed"].reset_index(drop=True)


def _is_run_dir(dirnames: list[str], filenames: list[str]) -> bool:
    """A Hydra job folder: it has a result, a metrics log or Hydra's record of the config."""
    return RESULTS in filenames or METRICS_LOG in filenames or ".hydra" in dirnames


def find_run_dirs(root: Path) -> Iterator[Path]:
    """Run folders under `root` (itself included), in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        if _is_run_dir(dirnames, filenames):
            yield Path(dirpath)
        # Hidden folders (.hydra, caches) and W&B's files never hold runs.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)


def _problem(run_dir: Path, status: str, error: str, res: dict | None = None) -> dict[str, Any]:
    """One row of problems.csv."""
    res = res or {}
    return {"run_dir": str(run_dir), "status": status, "error": error,
            "experiment": res.get("experiment"), "group": res.get("group"),
            "seed": res.get("seed")}


def _parse(path: Path) -> dict[str, Any]:
    """The results object in `path`; ValueError says why it cannot be used."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"unparseable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    required = REQUIRED + (REQUIRED_COMPLETED if obj.get("status") == "completed" else ())
    missing = [k for k in required if k not in obj]
    if missing:
        raise ValueError(f"missing required keys: {', '.join(missing)}")
    return obj


def _mtime(path: Path) -> str:
    """The file's modification time as ISO 8601 (UTC), a fallback for `finished_at`."""
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat()


def read_run(run_dir: Path) -> tuple[dict | None, dict | None]:
    """(results row, problem row) of one run folder; either may be None."""
    path = run_dir / RESULTS
    if not path.exists():
        n = len(path.with_name(METRICS_LOG).read_text().splitlines()) \
            if (run_dir / METRICS_LOG).exists() else 0
        return None, _problem(run_dir, "unfinished", f"no {RESULTS} ({n} epochs logged)")
    try:
        res = _parse(path)
    except ValueError as err:
        print(f"warning: skipped corrupt {path}: {err}", file=sys.stderr)
        return None, _problem(run_dir, "corrupt", f"corrupt {RESULTS}: {err}")
    # Where the run is now, not where it was written (studies get moved between machines).
    row = {**res, "run_dir": str(run_dir), "results_mtime": _mtime(path)}
    if res["status"] != "completed":
        return row, _problem(run_dir, str(res["status"]), str(res.get("error") or ""), res)
    return row, None


def _collect(root: Path) -> tuple[list[dict], list[dict]]:
    """Rows and problems of every run under one path; the path must exist and hold runs."""
    if not root.exists():
        raise AnalysisError(f"{root}: no such file or directory")
    if root.is_file():
        root = root.parent
    rows, problems = [], []
    for run_dir in find_run_dirs(root.resolve()):
        row, problem = read_run(run_dir)
        rows += [row] if row else []
        problems += [problem] if problem else []
    if not rows and not problems:
        raise AnalysisError(f"{root}: holds no runs (no {RESULTS}, {METRICS_LOG} or .hydra/)")
    return rows, problems


def _table(rows: list[dict]) -> pd.DataFrame:
    """The tidy table: one row per run, metrics as floats (null becomes NaN)."""
    table = pd.DataFrame(rows)
    for col in table.columns:
        # Lists and objects (tags, say) as JSON text, so that rows can be compared and grouped.
        if table[col].map(lambda v: isinstance(v, (list, dict))).any():
            table[col] = table[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict))
                                        else v)
    for m in METRICS:
        if m in table:
            table[m] = pd.to_numeric(table[m], errors="coerce").astype(float)
    return table


def load_runs(paths: Sequence[str | Path], *, allow_duplicates: bool = False) -> Runs:
    """Read every run under `paths`; raise AnalysisError for bad paths and duplicate runs."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise AnalysisError("no paths given")
    rows, problems, seen = [], [], set()
    for p in paths:
        r, pr = _collect(Path(p))
        # A run folder reached through two of the given paths is still one run.
        rows += [x for x in r if x["run_dir"] not in seen]
        problems += [x for x in pr if x["run_dir"] not in seen]
        seen |= {x["run_dir"] for x in r + pr}
    table = _table(rows)
    probs = pd.DataFrame(problems, columns=PROBLEM_COLUMNS)
    corrupt = int((probs["status"] == "corrupt").sum())
    table, dropped = resolve_duplicates(table, allow_duplicates)
    probs = pd.concat([probs, dropped], ignore_index=True) if len(dropped) else probs
    return Runs(table=table, problems=probs, corrupt=corrupt)


def _newest_first(table: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted newest first: by `finished_at`, else by the file's time."""
    when = table["finished_at"] if "finished_at" in table else pd.Series(None, index=table.index)
    when = pd.to_datetime(when.fillna(table["results_mtime"]), utc=True, errors="coerce",
                          format="ISO8601")
    return table.assign(_when=when).sort_values("_when", ascending=False, kind="stable")


def _duplicate_message(dups: pd.DataFrame, keys: list[str]) -> str:
    """One line per set of completed runs that share a configuration and seed."""
    lines = []
    for _, grp in dups.groupby(keys, dropna=False, sort=True):
        line = " and ".join(grp["run_dir"])
        if "config_fingerprint" in grp and grp["config_fingerprint"].notna().all():
            same = grp["config_fingerprint"].nunique() == 1
            line += " (identical configs)" if same else \
                " (their configs differ in settings results.json does not record)"
        lines.append(line)
    return "; ".join(lines)


def resolve_duplicates(table: pd.DataFrame, allow: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Completed runs with the same config and seed: raise, or keep the newest of each."""
    empty = pd.DataFrame(columns=PROBLEM_COLUMNS)
    if table.empty:
        return table, empty
    done = table[table["status"] == "completed"]
    keys = config_columns(done.columns)
    is_dup = done.duplicated(subset=keys, keep=False)
    if not is_dup.any():
        return table, empty
    if not allow:
        raise AnalysisError(
            "duplicate runs (same configuration and seed, e.g. from two studies): "
            f"{_duplicate_message(done[is_dup], keys)}; remove one, or pass "
            "--allow-duplicates to keep the newest")
    ordered = _newest_first(done)
    dropped = ordered[ordered.duplicated(subset=keys, keep="first")]
    rows = [_problem(Path(r["run_dir"]), "duplicate", "same config and seed as a newer run; "
                     "not used", r) for r in dropped.to_dict("records")]
    return table.drop(index=dropped.index).reset_index(drop=True), pd.DataFrame(rows)
