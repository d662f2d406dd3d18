"""What a single run says when it ends or stops: its folder, a one-line summary per run, and
the command that resumes it (the default run folder has a timestamp, so the plain command
would start a new run)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


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
    return "\n".join(lines)


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
