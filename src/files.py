"""Files written so that a reader never sees half of one: atomic writes and JSON reads."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def clean_json(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def atomic_write(path: str | Path, write: Callable[[IO], Any], binary: bool = False,
                 fsync: bool = False) -> None:
    """Call write(file) on a temporary file in the same folder, then rename it over `path`.

    A reader never sees half a file, and a failed write (disk full) leaves the old file intact;
    `fsync` also makes the new content durable before it replaces the old.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON atomically and durably (fsync): results survive a crash or a full disk."""
    atomic_write(path, lambda f: f.write(json.dumps(clean_json(obj), indent=2) + "\n"), fsync=True)


def user_cache_dir() -> Path:
    """The suite's folder in the user's cache: `$XDG_CACHE_HOME/lsmix`, else `~/.cache/lsmix`
    (the environment, the digits' split, the registries of running jobs and GPU claims)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsmix"


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
