"""The output folder: refused before anything is written when the analysis could not be
written there, and replaced only once the new analysis is complete, so a study is never left
with half an analysis, nor with an old report beside new figures."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from analysis.errors import AnalysisError
from src.run.signals import SIGNALS

# The folders the analysis writes into, below the output folder.
SUBFOLDERS = ("tables", "plots")
# Its files there: what an earlier analysis may hold, and so what replacing it may remove.
FILES = ("report.md", "*.csv")


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


def _foreign(out: Path) -> str | None:
    """An entry of the existing folder `out` that no analysis writes, if any: replacing the
    folder would delete it."""
    for entry in sorted(out.iterdir()):
        ours = (entry.is_dir() and entry.name in SUBFOLDERS) or (
            entry.is_file() and any(fnmatch.fnmatch(entry.name, f) for f in FILES))
        if not ours:
            return entry.name
    return None


def check_writable(out: Path) -> Path:
    """Raise AnalysisError if `out` cannot be created or replaced; return it. `out` must be
    missing, empty or an earlier analysis (it is replaced as a whole), and its parent must take
    new folders. Nothing is left behind."""
    for path in (out, *(out / sub for sub in SUBFOLDERS)):
        if os.path.lexists(path) and not path.is_dir():
            raise _refuse(out, f"{path} exists and is not a folder")
    if out.is_dir() and (entry := _foreign(out)):
        raise _refuse(out, f"it holds {entry}, which no analysis writes, and a new analysis "
                      "replaces the whole folder")
    base = _nearest_existing(out.absolute().parent)
    if not base.is_dir():
        raise _refuse(out, f"{base} is a file, not a folder, so no folder can be made in it")
    _probe(out, base)
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


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A new hidden sibling of `out` (.NAME.partial-*) to write the analysis into, put in
    `out`'s place when the block completes. On any exception, a signal's Stopped included, it
    is removed and `out` is as it was. Removing and replacing run with signals deferred
    (src.run.signals): a second Ctrl-C cannot leave them half done. Only SIGKILL can leave a
    .partial folder behind; it is safe to delete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = None
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        yield work
        with SIGNALS.deferred():
            _replace(work, out)
    except BaseException:
        with SIGNALS.deferred():
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        raise


def _replace(work: Path, out: Path) -> None:
    """Rename `work` to `out`; an earlier `out` is moved aside first and removed after, so
    `out` is the old analysis or the new one, never a mix."""
    if not os.path.lexists(out):
        os.rename(work, out)
        return
    old = tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)
    os.rename(out, old)  # onto the empty folder just made: a name nothing else takes
    try:
        os.rename(work, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
