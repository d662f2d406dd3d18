"""The output folder: refused before anything is written when the analysis could not be
written there, so a study is never left with half an analysis."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from analysis.errors import AnalysisError

# The folders the analysis writes into, below the output folder.
SUBFOLDERS = ("tables", "plots")


def _nearest_existing(path: Path) -> Path:
    """`path` or the closest ancestor of it that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _refuse(out: Path, why: str) -> AnalysisError:
    """The one-paragraph error for an unusable output folder."""
    return AnalysisError(f"--out {out}: cannot write the analysis there: {why}. Pass --out a "
                         "folder you can write to (it is created if missing; the default is "
                         "<first PATH>/analysis)")


def check_writable(out: Path) -> Path:
    """Raise AnalysisError if `out` (or its tables/ and plots/) cannot be created and written;
    return it. Nothing is left behind."""
    for path in (out, *(out / sub for sub in SUBFOLDERS)):
        if os.path.lexists(path) and not path.is_dir():
            raise _refuse(out, f"{path} exists and is not a folder")
    base = _nearest_existing(out.absolute())
    if not base.is_dir():
        raise _refuse(out, f"{base} is a file, not a folder, so no folder can be made in it")
    # The folder written into (or the one the new folders are made in) must take new entries.
    for path in [base, *(p for p in (out / s for s in SUBFOLDERS) if p.is_dir())]:
        _probe(out, path)
    return out


def _probe(out: Path, folder: Path) -> None:
    """Make and remove an empty folder in `folder`: permissions alone do not tell (root may
    write anywhere but on read-only or virtual file systems such as /proc)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _refuse(out, f"{folder} is not writable")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".analysis-probe-", dir=folder))
    except OSError as err:
        raise _refuse(out, f"{folder} does not take new files ({err.strerror})") from None
