"""What a single run says when it ends or stops: its folder, a one-line summary per run (and
debug=overfit's verdict), and the command that resumes it (the default run folder has a
timestamp, so the plain command would start a new run); and what a job hands back to a sweeper
that optimises it."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.run.records import METRICS, read_metrics


def shown_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_summary(run_dir: Path, results: dict[str, Any] | None, cfg: DictConfig) -> str:
    """A single run's last lines: its folder, then its status, final test accuracy and epochs
    (one line per seed of seeds trained together)."""
    epochs = int(cfg.trainer.epochs)
    lines = [f"run folder: {shown_path(run_dir)}"]
    runs = (results or {}).get("runs") or [results or {}]
    for r in runs:
        acc = r.get("final_test_acc")
        seed = f" (seed {r['seed']})" if len(runs) > 1 and "seed" in r else ""
        lines.append(f"{r.get('status', 'unknown')}{seed}: final test accuracy "
                     f"{'n/a' if acc is None else f'{acc:.4f}'}, "
                     f"{r.get('epochs_done', 0)}/{epochs} epochs")
        if int(cfg.trainer.overfit_batches) > 0:
            lines.append(overfit_verdict(Path(r.get("run_dir") or run_dir), r, cfg))
    return "\n".join(lines)


def overfit_verdict(run_dir: Path, results: dict[str, Any], cfg: DictConfig) -> str:
    """debug=overfit's answer: PASS when the last epoch's training accuracy on the
    `trainer.overfit_batches` batches reaches `trainer.overfit_pass_acc`, FAIL with the
    numbers otherwise (a model, loss or optimiser that cannot fit a batch is broken)."""
    n, need = int(cfg.trainer.overfit_batches), float(cfg.trainer.overfit_pass_acc)
    what = f"{n} batch{'es' if n > 1 else ''} of {int(cfg.trainer.batch_size)}"
    status = results.get("status", "unknown")
    if status == "diverged":
        return f"overfit check: FAIL: the run diverged on {what}"
    history = read_metrics(run_dir / METRICS)
    if status != "completed" or not history:
        return f"overfit check: no verdict: the run is {status}, not completed"
    last = history[-1]
    acc, loss = float(last["train_acc"]), float(last["train_loss"])
    numbers = (f"train accuracy {acc:.4f} (loss {loss:.4g}) on {what} after "
               f"{last['epoch']} epochs")
    if acc >= need:
        return f"overfit check: PASS: {numbers}, at least trainer.overfit_pass_acc = {need:g}"
    return (f"overfit check: FAIL: {numbers}, below trainer.overfit_pass_acc = {need:g}: the "
            f"model, loss or optimiser cannot fit a few images")


def sweep_objective(results: dict[str, Any]) -> float | None:
    """What a job returns to a sweeper that optimises it (hydra/sweeper=optuna): the best
    noisy-validation accuracy, never a test metric (choosing on test would make every test
    number optimistic). Seeds trained together: their mean. None for a run that did not
    complete (a diverged run's last good number would flatter it) or has no validation split
    (dataset.val_fraction = 0): a sweeper counts it as a failed trial."""
    runs = results.get("runs") or [results]
    values = [r.get("best_val_acc") for r in runs]
    if any(r.get("status", "completed") != "completed" for r in runs) or None in values:
        return None
    return sum(values) / len(values)


# What Hydra's override grammar reads in an unquoted value as plain characters.
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_\-+./:@]+")


def resume_command(run_dir: Path) -> str:
    """This process's command line, for the shell, with `hydra.run.dir=<run_dir>` in place of
    any given: the command that resumes the single run in its folder (the default folder has
    a timestamp, so the plain command would start a new run)."""
    args = sys.argv[1:]
    orig = list(getattr(sys, "orig_argv", []))
    head = orig[:len(orig) - len(args)] if args and orig[len(orig) - len(args):] == args \
        else orig if not args and orig else []
    if len(head) < 2:  # not run from a command line (a test calling cli()): the module form
        head = ["python", "-m", "src.train"]
    path = shown_path(run_dir)
    if not _HYDRA_PLAIN.fullmatch(path):  # `=`, `,`, spaces...: a quoted Hydra string
        path = "'" + path.replace("'", "\\'") + "'"
    kept = [a for a in args if not a.lstrip("+").startswith("hydra.run.dir=")]
    return shlex.join([*head, *kept, f"hydra.run.dir={path}"])
