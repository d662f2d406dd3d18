"""Collect run directories (or the runs table of an earlier analysis, runs.csv) into one tidy
table, one row per run, and list the problem runs."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.errors import AnalysisError
from analysis.outcomes import intention_to_treat, is_diverged, num_classes
from analysis.schema import (
    ANALYSED,
    CONFIG,
    CONFIG_MIRRORS,
    CONFIG_NOT_SETTINGS,
    CONFIG_PREFIX,
    INPUT_PREFIX,
    INPUTS,
    LEGACY_SMOOTHING_TO,
    METRICS,
    METRICS_LOG,
    REPLICATE_KEYS,
    REQUIRED,
    REQUIRED_COMPLETED,
    RESULTS,
    TEXT_COLUMNS,
    config_columns,
)
from src.noise import has_random_draw
from src.run.records import read_metrics

PROBLEM_COLUMNS = ["run_dir", "status", "error", "experiment", "group", "seed"]
SKIP_DIRS = {"wandb", "__pycache__"}
# The CSV files (by stem) an analysis writes of what it read: every run with a result, one row
# each, every column the analysis reads (a runs table, which `load_runs` reads back), and the
# problem runs.
RUNS_TABLE = "runs"
PROBLEMS_TABLE = "problems"


@dataclass
class Runs:
    """Every run found: the table of parsed results (all statuses) and the problem runs."""

    table: pd.DataFrame
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))
    corrupt: int = 0
    tabled: frozenset[str] = frozenset()  # run folders read from a runs table, not from disk

    def _usable(self, statuses: tuple[str, ...]) -> pd.DataFrame:
        """The runs of `statuses` that are not problems, with their recorded values."""
        if self.table.empty:
            return self.table
        usable = self.table["status"].isin(statuses) & \
            ~self.table["run_dir"].isin(set(self.problems["run_dir"]))
        return self.table[usable].reset_index(drop=True)

    @property
    def completed(self) -> pd.DataFrame:
        """The completed runs that are not problems (a completed run without a finite final
        test accuracy is one)."""
        return self._usable(("completed",))

    @property
    def analysed(self) -> pd.DataFrame:
        """The runs that enter tables, means and comparisons: the completed ones and those that
        diverged, each diverged run at the values analysis.outcomes gives it."""
        return intention_to_treat(self._usable(ANALYSED))


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
    _check_nested(obj)
    return obj


def _check_nested(obj: dict[str, Any]) -> None:
    """`config` must be an object and `inputs` an object of {path, size, hash} objects: a run
    whose settings or input files cannot be read could be pooled with runs of others."""
    if CONFIG in obj and not isinstance(obj[CONFIG], dict):
        raise ValueError(f"`{CONFIG}` is {type(obj[CONFIG]).__name__}, not an object")
    inputs = obj.get(INPUTS, {})
    if not isinstance(inputs, dict):
        raise ValueError(f"`{INPUTS}` is {type(inputs).__name__}, not an object")
    bad = [k for k, v in inputs.items()
           if not (isinstance(v, dict) and isinstance(v.get("hash"), str) and v["hash"])]
    if bad:
        raise ValueError(f"`{INPUTS}` entries without a content hash: {', '.join(bad)}")


def _finite(value: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _mtime(path: Path) -> str:
    """The file's modification time as ISO 8601 (UTC), a fallback for `finished_at`."""
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat()


def read_run(run_dir: Path) -> tuple[dict | None, dict | None]:
    """(results row, problem row) of one run folder: the row, or without a readable result the
    problem (what the row says is judged in `status_problems`)."""
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
    if "final_val_acc" not in res:
        # Written before results.json recorded it: its own log's last validation accuracy,
        # what src.run.records.summarise writes now (questions.validation_metric).
        res["final_val_acc"] = _last_val_acc(run_dir / METRICS_LOG)
    # Where the run is now, not where it was written (studies get moved between machines).
    return {**res, "run_dir": str(run_dir), "results_mtime": _mtime(path)}, None


def _last_val_acc(path: Path) -> float | None:
    """The last epoch's `val_acc` in a metrics log; None without a log or a validation split."""
    try:
        rows = read_metrics(path)
    except (OSError, ValueError):
        return None
    last = rows[-1] if rows else None
    return last.get("val_acc") if isinstance(last, dict) else None


def _status_problem(run: dict[str, Any], k: float) -> dict[str, Any] | None:
    """Why a run with a result enters no mean, if it does not: it ended without a training
    outcome (failed, interrupted), completed without a finite final test accuracy, or
    diverged without a recorded class count `k` (its chance accuracy is unknown)."""
    status, run_dir = str(run["status"]), Path(run["run_dir"])
    error = "" if pd.isna(run.get("error")) else str(run.get("error"))
    if status not in ANALYSED:
        return _problem(run_dir, status, error, run)
    if status == "completed" and not _finite(run["final_test_acc"]):
        return _problem(run_dir, "invalid", "completed without a finite final_test_acc "
                        f"({run['final_test_acc']!r})", run)
    if status == "diverged" and not _finite(k):
        return _problem(run_dir, status, f"{error} (no dataset.num_classes recorded: its "
                        "chance accuracy is unknown, so it cannot be counted)", run)
    return None


def status_problems(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The problem rows of the runs in `table` (see `_status_problem`)."""
    if table.empty:
        return []
    ks = num_classes(table).where(is_diverged(table))
    found = (_status_problem(r, k) for r, k in zip(table.to_dict("records"), ks))
    return [p for p in found if p is not None]


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


def _flatten(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Nested keys as dotted ones under `prefix` (dotted keys stay as they are)."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _settings(res: dict[str, Any]) -> dict[str, Any]:
    """`config` and `inputs` of one result as columns: `config.<key>` per setting, and
    `input.<key>` = the content hash of each file read (its path is where, not what)."""
    row = {k: v for k, v in res.items() if k not in (CONFIG, INPUTS)}
    inputs = res.get(INPUTS) or {}
    for key, value in _flatten(res.get(CONFIG) or {}, "").items():
        if key not in CONFIG_NOT_SETTINGS and key not in inputs:
            row[CONFIG_PREFIX + key] = value
    # A parent run (trainer.init_from) is recorded by the hash of its settings without its
    # seeds: the children of one seed's parent and of another's are replicates of one cell.
    row |= {INPUT_PREFIX + key: entry.get("setting") or entry["hash"]
            for key, entry in inputs.items()}
    return row


def _determined(table: pd.DataFrame, by: str, col: str) -> bool:
    """Whether `col` takes one value within each value of `by` (rows without it left out)."""
    known = table[[by, col]].dropna(subset=[col])
    return bool(known.groupby(by, dropna=False)[col].nunique().le(1).all())


def _drop_mirrors(table: pd.DataFrame) -> pd.DataFrame:
    """Config copies of top-level keys: a copy that adds no distinction is dropped (else ε's
    copy, say, would split panels by ε); one the top level lacks becomes that key."""
    for key, top in CONFIG_MIRRORS.items():
        col = CONFIG_PREFIX + key
        if col not in table:
            continue
        if top not in table:
            table = table.rename(columns={col: top})
        elif _determined(table, top, col):
            table = table.drop(columns=col)
    return table


def _legacy_smoothing(table: pd.DataFrame) -> pd.DataFrame:
    """Results from before the smoothing convention was recorded: the convention then, under
    which the uniform mass is ε itself."""
    table = table.copy()
    for col, missing in (("smoothing_to", None), ("smoothing_uniform_mass", math.nan)):
        if col not in table:
            table[col] = missing
    old = table["smoothing_to"].isna()
    mass = pd.to_numeric(table["smoothing_uniform_mass"], errors="coerce").astype(float)
    table["smoothing_to"] = table["smoothing_to"].where(~old, LEGACY_SMOOTHING_TO)
    table["smoothing_uniform_mass"] = mass.where(~(old & mass.isna()),
                                                 table["smoothing"].astype(float))
    return table


def _warn_without_config(rows: list[dict]) -> None:
    """One warning for every result written before `config` was recorded."""
    old = sum(CONFIG not in r for r in rows)
    if old:
        print(f"warning: {old} of {len(rows)} runs have a {RESULTS} without `{CONFIG}` (written "
              "before every setting was recorded): their settings are incomplete. They are "
              "never pooled with runs that record theirs, but among themselves they are told "
              "apart only by dataset, model, noise, α, ε, epochs and the study, so runs that "
              "differ in another setting (learning rate, width, ...) would be averaged "
              "together; their smoothing convention is taken as "
              f"'{LEGACY_SMOOTHING_TO}'.", file=sys.stderr)


def _tidy(table: pd.DataFrame) -> pd.DataFrame:
    """Metrics as floats (null becomes NaN), config copies of top-level keys dropped, the
    smoothing convention of old results filled in."""
    for m in METRICS:
        if m in table:
            table[m] = pd.to_numeric(table[m], errors="coerce").astype(float)
    return _legacy_smoothing(_drop_mirrors(table))


def _table(rows: list[dict]) -> pd.DataFrame:
    """The tidy table of results rows: one row per run, settings from `config` and `inputs`
    as columns."""
    _warn_without_config(rows)
    table = pd.DataFrame([_settings(r) for r in rows])
    if table.empty:
        return table
    for col in table.columns:
        # Lists and objects (tags, channels) as JSON text, so rows can be compared and grouped.
        if table[col].map(lambda v: isinstance(v, (list, dict))).any():
            table[col] = table[col].map(lambda v: json.dumps(v, sort_keys=True)
                                        if isinstance(v, (list, dict)) else v)
    return _tidy(table)


def is_runs_table(path: Path) -> bool:
    """Whether a given path is a runs table (an analysis' runs.csv) rather than a folder of
    runs or a results.json (which stands for its folder)."""
    return path.suffix == ".csv" and path.is_file()


def _is_text(column: str) -> bool:
    """A column of a runs table that holds text, whatever it looks like: a text field of the
    results contract, or an input file's content hash."""
    return column in TEXT_COLUMNS or str(column).startswith(INPUT_PREFIX)


def _read_csv(path: Path, is_text: Callable[[str], bool]) -> pd.DataFrame:
    """A CSV file, the columns `is_text` names read as text (the others as pandas infers);
    AnalysisError if it cannot be read."""
    try:
        header = pd.read_csv(path, nrows=0).columns
        return pd.read_csv(path, dtype={c: str for c in header if is_text(c)})
    except (OSError, UnicodeDecodeError, ValueError) as err:  # pandas' parser errors too
        raise AnalysisError(f"{path}: cannot read it as a runs table ({type(err).__name__}: "
                            f"{err})") from None


def read_runs_table(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The runs of a runs table (the runs.csv an analysis writes: every run's results as the
    loader flattened them), and the problem runs it has no row for (never read, or dropped as
    duplicates) from the problems.csv beside it, if there is one."""
    table = _read_csv(path, _is_text)
    missing = [k for k in ("run_dir", *REQUIRED, *REQUIRED_COMPLETED) if k not in table]
    if missing:
        raise AnalysisError(f"{path}: not a runs table (the {RUNS_TABLE}.csv of an analysis): "
                            f"no column {', '.join(missing)}")
    beside = path.with_name(f"{PROBLEMS_TABLE}.csv")
    if path.name != f"{RUNS_TABLE}.csv" or not beside.is_file():
        return _tidy(table), []
    problems = _read_csv(beside, lambda _: True)  # as written: text, for the report to show
    return _tidy(table), problems[~problems["run_dir"].isin(set(table["run_dir"]))].to_dict(
        "records")


def _read_path(path: Path) -> tuple[list[dict], pd.DataFrame | None, list[dict]]:
    """(results rows, runs table, problem rows) of one given path: a runs table, or a
    folder (or results.json) with runs under it."""
    if is_runs_table(path):
        table, problems = read_runs_table(path)
        return [], table, problems
    rows, problems = _collect(path)
    return rows, None, problems


def _gather(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, list[dict], frozenset[str]]:
    """Every run of `paths` once: the table, the problem rows, and the run folders read from
    runs tables."""
    rows, tables, problems, seen = [], [], [], set()
    for p in paths:
        r, t, pr = _read_path(Path(p))
        # A run folder reached through two of the given paths is still one run.
        if t is not None:
            t = t[~t["run_dir"].isin(seen)]
            tables.append(t)
        rows += [x for x in r if x["run_dir"] not in seen]
        problems += [x for x in pr if x["run_dir"] not in seen]
        seen |= {x["run_dir"] for x in r + pr} | (set() if t is None else set(t["run_dir"]))
    tabled = frozenset(x for t in tables for x in t["run_dir"])
    frames = [f for f in (_table(rows), *tables) if not f.empty]
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else \
        (frames[0] if frames else pd.DataFrame())
    return table, problems, tabled


def load_runs(paths: Sequence[str | Path], *, allow_duplicates: bool = False) -> Runs:
    """Read every run under `paths` (folders of runs, or runs tables: see `is_runs_table`);
    raise AnalysisError for bad paths and duplicate runs. Problem runs are listed by run
    folder, so the same runs give the same list however they were read."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise AnalysisError("no paths given")
    table, problems, tabled = _gather(paths)
    probs = pd.DataFrame(problems + status_problems(table), columns=PROBLEM_COLUMNS)
    table, dropped = resolve_duplicates(table, allow_duplicates,
                                        frozenset(probs["run_dir"]))
    probs = pd.concat([probs, dropped], ignore_index=True) if len(dropped) else probs
    table, copies = drop_copies(table, frozenset(probs["run_dir"]))
    probs = pd.concat([probs, copies], ignore_index=True) if len(copies) else probs
    probs = probs.sort_values("run_dir", kind="stable").reset_index(drop=True)
    return Runs(table=table, problems=probs, corrupt=int((probs["status"] == "corrupt").sum()),
                tabled=tabled)


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


SUBSET, SUBSET_SEED = CONFIG_PREFIX + "dataset.train_subset", CONFIG_PREFIX + \
    "dataset.train_subset_seed"


def _drawn(table: pd.DataFrame) -> pd.Series:
    """Which runs' noise seed changes what they train on: labels drawn at random, or a
    training subset drawn from the noise seed (dataset.train_subset_seed null)."""
    labels = [has_random_draw(str(n), 0.0 if pd.isna(r) else float(r))
              for n, r in zip(table.get("noise", pd.Series("none", index=table.index)),
                              table.get("noise_rate", pd.Series(0.0, index=table.index)))]
    subset = table[SUBSET].notna() if SUBSET in table else pd.Series(False, index=table.index)
    follows = table[SUBSET_SEED].isna() if SUBSET_SEED in table else \
        pd.Series(True, index=table.index)
    return pd.Series(labels, index=table.index) | (subset & follows)


def drop_copies(table: pd.DataFrame, unusable: frozenset[str] = frozenset()
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs whose noise seed changes nothing (clean labels, a rate of 0, human labels: no
    random draw) are copies of each other across noise seeds, not independent replicates:
    keep the one of the smallest noise seed of each setting and training seed, list the rest
    as problems (status `copy`), so that no cell counts a run twice."""
    empty = pd.DataFrame(columns=PROBLEM_COLUMNS)
    if table.empty or "noise_seed" not in table:
        return table, empty
    done = table[table["status"].isin(ANALYSED) & ~table["run_dir"].isin(unusable)]
    fixed = done[~_drawn(done)]
    if fixed.empty:
        return table, empty
    keys = config_columns(fixed.columns) + ["seed"]
    ordered = fixed.sort_values("noise_seed", kind="stable")
    extra = ordered[ordered.duplicated(subset=keys, keep="first")]
    rows = [_problem(Path(r["run_dir"]), "copy", f"noise_seed {r['noise_seed']} draws nothing "
                     f"for {r.get('noise')} labels at rate {r.get('noise_rate')}: the same run "
                     "as its smallest noise seed, not an independent replicate; not used", r)
            for r in extra.to_dict("records")]
    return table.drop(index=extra.index).reset_index(drop=True), pd.DataFrame(rows)


def resolve_duplicates(table: pd.DataFrame, allow: bool, unusable: frozenset[str] = frozenset()
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs that enter means (completed or diverged; but the `unusable` run folders) with the
    same config and seeds: raise, or keep the newest of each."""
    empty = pd.DataFrame(columns=PROBLEM_COLUMNS)
    if table.empty:
        return table, empty
    done = table[table["status"].isin(ANALYSED) & ~table["run_dir"].isin(unusable)]
    keys = config_columns(done.columns) + [k for k in REPLICATE_KEYS if k in done]
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
