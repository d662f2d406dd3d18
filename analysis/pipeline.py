"""analyse(): load, aggregate, write tables, plots and report, print, optionally push to W&B."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots, questions
from analysis.aggregate import (
    Panel,
    add_panel_ids,
    distinguishing,
    fmt_value,
    group_keys,
    make_panels,
    panel_keys,
    slug,
    summarise,
)
from analysis.errors import Interrupted
from analysis.load import PROBLEMS_TABLE, RUNS_TABLE, Runs, is_runs_table, load_runs
from analysis.outcomes import is_diverged
from analysis.output import check_writable, staged
from analysis.report import Findings, write_report
from analysis.schema import is_recorded_setting
from analysis.stats import StatsOptions
from analysis.tables import (
    TABLE_METRICS,
    Grid,
    check_eps_axis,
    file_stem,
    grid,
    grid_frame,
    to_markdown,
    write_grid,
)
from src.run.signals import HANDLED, SIGNALS, Stopped


def default_out(paths: Sequence[str | Path]) -> Path:
    """<first path>/analysis (the folder, when a results.json file was given); for a runs
    table, a sibling of the folder it is in, <folder>-reanalysis (that folder is the analysis
    it came from, which a new one would replace)."""
    first = Path(paths[0])
    if is_runs_table(first):
        return first.parent.with_name(f"{first.parent.name}-reanalysis")
    return (first.parent if first.is_file() else first) / "analysis"


def make_grids(panels: list[Panel], eps_axis: str) -> dict[str, list[Grid]]:
    """Every non-empty ε × α table of every panel, by panel label (nothing written yet, so
    a table that cannot be made leaves no files)."""
    return {p.label: [g for g in (grid(p, m, eps_axis) for m in TABLE_METRICS) if not g.empty]
            for p in panels}


def write_grids(panels: list[Panel], grids: dict[str, list[Grid]], out: Path) -> None:
    """Every table as .md and .tex in tables/."""
    for p in panels:
        for g in grids[p.label]:
            write_grid(g, p, out / "tables")


def _families(panels: list[Panel], keys: list[str]) -> dict[str, list[Panel]]:
    """Panels that differ only in noise rate (and CIFAR-10N label set), by a readable name."""
    along = [k for k in panel_keys(keys) if k not in ("noise_rate", "noise_label_set")]
    head = ("dataset", "model", "noise")
    values = pd.DataFrame([{k: fmt_value(p.values[k]) for k in along} for p in panels],
                          columns=along)
    extra = distinguishing(values, along, head)
    families: dict[str, list[Panel]] = {}
    for p in panels:
        name = " / ".join([fmt_value(p.values[k]) for k in ("dataset", "model", "noise")]
                          + [f"{k}={fmt_value(p.values[k])}" for k in extra])
        families.setdefault(name, []).append(p)
    return families


def write_figures(panels: list[Panel], grids: dict[str, list[Grid]], keys: list[str],
                  out: Path, formats: tuple[str, ...] = plots.FORMATS,
                  tabled: frozenset[str] = frozenset()) -> list[Path]:
    """Per family of panels (differing only in noise rate): one heatmap figure per metric on a
    shared colour scale and, where rates vary, accuracy against noise rate; per panel,
    training curves (without the `tabled` runs, read from a runs table: no per-epoch
    metrics). Each as PNG and PDF; returns the paths written, PNG first."""
    folder, figures = out / "plots", []
    for name, members in _families(panels, keys).items():
        for metric in TABLE_METRICS:
            items = [(p, g) for p in members for g in grids.get(p.label, [])
                     if g.metric == metric]
            if items:
                figures.append(FigureJob(plots.heatmap, (items, name),
                                         folder / file_stem(slug(name), metric, "heatmap")))
        if len({p.values["noise_rate"] for p in members}) > 1:
            figures.append(FigureJob(plots.noise_plot, (name, plots.choose_per_rate(members)),
                                     folder / file_stem(slug(name), "acc_vs_noise_rate")))
    for p in panels:
        figures.append(FigureJob(plots.training_curves, (p, tabled),
                                 folder / file_stem(p.slug, "curves")))
    return [path for paths in draw_all(figures, formats) for path in paths]


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: the plot function, its arguments, the file name without suffix."""

    plot: Callable[..., Any]
    args: tuple
    stem: Path

    def draw(self, formats: tuple[str, ...]) -> list[Path]:
        fig = self.plot(*self.args)
        return plots.save(fig, self.stem, formats) if fig is not None else []


def draw_all(figures: list[FigureJob], formats: tuple[str, ...]) -> list[list[Path]]:
    """Each figure's files, in order. Drawing and PNG encoding are CPU-bound Python (about
    0.3 s a figure at 200 dpi), so they are shared among the cores this process may use,
    each figure drawn whole in a forked worker. The workers ignore the stop signals; this
    process notes one (src.run.signals), cancels the figures not started, waits for those
    being drawn (a fraction of a second) and stops the analysis as it would have after a
    figure of its own. Where forking is not available, or the pool fails (a worker dies, an
    argument cannot be sent), the figures are drawn here one after another: an error of a
    figure itself then shows as it would have."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1, len(figures) // 2, MAX_FIGURE_WORKERS)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        try:
            return _draw_in_workers(figures, formats, workers)
        except (OSError, BrokenProcessPool, pickle.PicklingError, AttributeError,
                TypeError) as err:
            SIGNALS.raise_if_requested()  # a stop noted before the pool failed
            print(f"figures drawn one after another ({type(err).__name__}: {err})")
    return [f.draw(formats) for f in figures]


def _draw_in_workers(figures: list[FigureJob], formats: tuple[str, ...],
                     workers: int) -> list[list[Path]]:
    # A signal while the pool works, or shuts down, is noted and polled, never raised inside
    # the pool's machinery: an interrupted shutdown would leave its workers waiting forever.
    with SIGNALS.deferred():
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_worker_setup)
        try:
            futures = [pool.submit(f.draw, formats) for f in figures]
            pending = set(futures)
            while pending and not SIGNALS():
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        finally:  # stopped, or failed: the figures not started are not drawn
            pool.shutdown(wait=True, cancel_futures=True)
    SIGNALS.raise_if_requested()
    return [f.result() for f in futures]


def _worker_setup() -> None:
    """A figure worker leaves the stop signals to the analysing process, and ends with it
    whatever ends it (Linux's parent-death signal)."""
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown ends it
        pass


PR_SET_PDEATHSIG = 1
MAX_FIGURE_WORKERS = 4


def _print_problems(runs: Runs, quiet: bool) -> None:
    """Say how many runs diverged (in the means, at chance accuracy), which runs are left out
    of every mean, and why (only the counts with --quiet)."""
    analysed = runs.analysed
    diverged = int(is_diverged(analysed).sum()) if len(analysed) else 0
    if diverged:
        print(f"{diverged} diverged runs counted at chance accuracy; see report.md")
    p = runs.problems
    if p.empty:
        return
    counts = ", ".join(f"{n} {s}" for s, n in p["status"].value_counts().items())
    print(f"{len(p)} runs not in any mean ({counts}); listed in problems.csv"
          + ("" if quiet else ":"))
    for r in ([] if quiet else p.itertuples()):
        print(f"  {r.status}: {r.run_dir}" + (f" ({r.error})" if r.error else ""))


def _print_tables(grids: dict[str, list[Grid]]) -> None:
    """The ε × α tables on stdout."""
    for label, gs in grids.items():
        for g in gs:
            print(f"\n{label}: {g.title}, mean ± std (n)\n{to_markdown(g)}")


def _findings(runs: Runs, paths: Sequence[str | Path], panels: list[Panel],
              grids: dict[str, list[Grid]], figures: list[Path],
              options: StatsOptions | None = None) -> Findings:
    """Answer the report's questions."""
    tables = {label: to_markdown(gs[0]) for label, gs in grids.items() if gs}
    return Findings(paths=[str(p) for p in paths], n_runs=len(runs.table),
                    n_completed=len(runs.completed), panels=panels, tables=tables,
                    answers=questions.answer(panels, options), problems=runs.problems,
                    corrupt=runs.corrupt, figures=figures, tabled=len(runs.tabled))


def _write_csvs(out: Path, frames: dict[str, pd.DataFrame]) -> None:
    """Each frame as <name>.csv."""
    for name, df in frames.items():
        df.to_csv(out / f"{name}.csv", index=False)


def _wandb_tables(frames: dict[str, pd.DataFrame], panels: list[Panel],
                  grids: dict[str, list[Grid]]) -> dict[str, pd.DataFrame]:
    """The frames to push: the CSVs but the per-run table, and every ε × α table as text."""
    tables = {k: v for k, v in frames.items() if k != RUNS_TABLE}
    for p in panels:
        for g in grids.get(p.label, []):
            tables[f"eps_x_alpha/{p.slug}/{g.metric}"] = grid_frame(g)
    return tables


def aggregate_runs(runs: Runs) -> tuple[pd.DataFrame, list[Panel], list[str]]:
    """Summary over seeds of the runs that enter means (completed and diverged: see
    Runs.analysed), and its panels."""
    done = runs.analysed
    if done.empty:
        return pd.DataFrame(), [], []
    keys = group_keys(done)
    unknown = [k for k in keys if not is_recorded_setting(k) and k != "experiment"]
    if unknown:
        print(f"note: results.json keys outside the contract taken as settings (they split "
              f"groups): {', '.join(unknown)}")
    done = add_panel_ids(done, keys)
    summary = summarise(done, ["_panel", *keys])
    return summary, make_panels(done, summary, keys), keys


def _write(work: Path, runs: Runs, paths: list, summary: pd.DataFrame, panels: list[Panel],
           keys: list[str], grids: dict[str, list[Grid]], stats: StatsOptions | None,
           figure_formats: tuple[str, ...]) -> tuple[Findings, dict[str, pd.DataFrame]]:
    """Every file of the analysis, into the folder `work`: the findings and the CSV frames."""
    (work / "plots").mkdir(parents=True, exist_ok=True)
    write_grids(panels, grids, work)
    written = write_figures(panels, grids, keys, work, figure_formats, runs.tabled) \
        if figure_formats else []
    findings = _findings(runs, paths, panels, grids, [p for p in written if p.suffix == ".png"],
                         stats)
    frames = {RUNS_TABLE: runs.table, PROBLEMS_TABLE: runs.problems,
              "summary": summary.drop(columns="_panel", errors="ignore"),
              **findings.answers.frames()}
    _write_csvs(work, frames)
    write_report(findings, work / "report.md")
    return findings, frames


def analyse(paths: Sequence[str | Path] | str | Path, out_dir: str | Path | None = None, *,
            quiet: bool = False, push_wandb: bool = False, allow_duplicates: bool = False,
            eps_axis: str = "smoothing", stats: StatsOptions | None = None,
            figure_formats: tuple[str, ...] = plots.FORMATS) -> Path:
    """Write runs/summary/problems CSVs, ε × α tables, plots and report.md; return the folder.
    `paths`: folders of runs, or runs tables (the runs.csv of an earlier analysis, re-analysed
    without its run folders: see analysis.load.is_runs_table).
    `eps_axis`: the tables' rows, "smoothing" (ε as configured) or "uniform_mass". `stats`:
    how claims are tested (correction, δ, minimum pairs); findings.csv holds every claim.
    Written beside the folder and put in its place when complete (analysis.output.staged); a
    signal (src.run.signals) raises Interrupted, saying what the folder then holds."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    check_eps_axis(eps_axis)
    out = check_writable(Path(out_dir) if out_dir is not None else default_out(paths))
    try:
        runs = load_runs(paths, allow_duplicates=allow_duplicates)
        summary, panels, keys = aggregate_runs(runs)
        grids = make_grids(panels, eps_axis)
        with staged(out) as work:
            findings, frames = _write(work, runs, paths, summary, panels, keys, grids, stats,
                                      figure_formats)
    except Stopped as stop:
        raise Interrupted(stop, f"nothing in {out} was changed; rerun the same command") \
            from None
    try:
        SIGNALS.raise_if_requested()  # one that came while the folder was put in place
        if not quiet:
            _print_tables(grids)
        _print_problems(runs, quiet)
        print(f"Report: {out / 'report.md'}")
        if push_wandb:
            from analysis.wandb_push import push

            push(_wandb_tables(frames, panels, grids), runs.analysed, out,
                 figures=[out / p.parent.name / p.name for p in findings.figures],
                 report=out / "report.md", study=default_out(paths).parent)
    except Stopped as stop:
        raise Interrupted(stop, f"{out} holds the complete analysis") from None
    return out
