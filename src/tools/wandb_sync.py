"""Upload every offline W&B run under some folders: `python -m src.tools.wandb_sync FOLDER...`.

A run logged offline (logger.mode=offline, or W&B unreachable) lies in
`<run dir>/wandb/offline-run-*`, so a study's folder holds all of its runs; this finds them
at any depth and hands them to `wandb sync` in one call. Runs W&B has marked as synced
(`*.wandb.synced`) are left out unless --include-synced; --dry-run only lists them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

OFFLINE_RUN = "offline-run-*"


def find_offline_runs(folders: list[Path]) -> list[Path]:
    """Every offline W&B run folder (one holding a .wandb file) under the folders, sorted."""
    found: set[Path] = set()
    for folder in folders:
        for run in folder.rglob(OFFLINE_RUN):
            if run.is_dir() and any(run.glob("*.wandb")):
                found.add(run.resolve())
    return sorted(found)


def is_synced(run: Path) -> bool:
    """W&B marks each uploaded .wandb file with a `.wandb.synced` file beside it."""
    return all(f.with_suffix(".wandb.synced").exists() for f in run.glob("*.wandb"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a folder that does not exist is refused before anything runs."""
    ap = argparse.ArgumentParser(prog="python -m src.tools.wandb_sync",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="study, sweep or run folders")
    ap.add_argument("--dry-run", action="store_true", help="list the runs, upload nothing")
    ap.add_argument("--include-synced", action="store_true",
                    help="upload runs already uploaded once, too")
    args = ap.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            ap.error(f"folders={str(folder)!r}: expected an existing folder (a study's, e.g. "
                     "outputs/quickstart)")
    return args


def main(argv: list[str] | None = None) -> int:
    """List or upload; the exit status is wandb sync's (0 when there is nothing to do)."""
    args = parse_args(argv)
    runs = find_offline_runs(args.folders)
    todo = [r for r in runs if args.include_synced or not is_synced(r)]
    where = ", ".join(str(f) for f in args.folders)
    if not todo:
        print(f"No offline W&B runs to upload under {where} ({len(runs)} already uploaded).")
        return 0
    print(f"{len(todo)} offline W&B run(s) under {where}"
          + (f" ({len(runs) - len(todo)} already uploaded, left out)" if len(runs) > len(todo)
             else "") + ":")
    for run in todo:
        print(f"  {run}" + ("  (uploaded before)" if is_synced(run) else ""))
    if args.dry_run:
        return 0
    cmd = [sys.executable, "-m", "wandb", "sync", *(str(r) for r in todo)]
    if args.include_synced:
        cmd.append("--include-synced")
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
