"""Real human label noise: the CIFAR-10N annotations of Wei et al., "Learning with Noisy Labels
Revisited: A Study Using Real-World Human Annotations", ICLR 2022.

The authors publish CIFAR-10_human.pt, a torch.save of a dict of numpy label arrays in
torchvision's training order; an .npz with the same keys is read too. Every way such a file
can be unusable (missing, empty, truncated, not a label dict, wrong keys, float or
out-of-range labels, another length or order than the training split) is a ConfigError on
`noise.file`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from src.errors import ConfigError

# CIFAR-10N label sets (`noise.label_set`) -> keys of the authors' file.
LABEL_SETS: dict[str, str] = {
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "worse": "worse_label",
}
CLEAN_KEY = "clean_label"
# The authors' torch.save file, or the same arrays in a numpy archive.
FILE_SUFFIXES: tuple[str, ...] = (".pt", ".npz")
_FILE_ALLOWED = "a CIFAR-10N label file: the authors' CIFAR-10_human.pt or an .npz of its arrays"


def check_label_path(file: Any, problem: str = "") -> Path:
    """The path of `noise.file` after checking it names a non-empty .pt or .npz file.
    `problem`: what is wrong besides (another dataset than CIFAR-10), said first."""
    def bad(value: Any, hint: str = "") -> ConfigError:
        return ConfigError("noise.file", value, _FILE_ALLOWED,
                           hint="; ".join(h for h in (problem, hint) if h))

    if not isinstance(file, (str, Path)) or not str(file):
        raise bad(file)
    path = Path(file)
    if path.suffix not in FILE_SUFFIXES:
        raise bad(str(path), f"the name ends in {path.suffix or 'no suffix'}, "
                             f"not one of {list(FILE_SUFFIXES)}")
    if not path.is_file():
        raise bad(str(path), f"no file at {path}")
    if path.stat().st_size == 0:
        raise bad(str(path), "the file is empty")
    return path


def check_label_set(label_set: Any) -> str:
    """`noise.label_set`, one of the five CIFAR-10N label sets."""
    if not isinstance(label_set, str) or label_set not in LABEL_SETS:
        raise ConfigError("noise.label_set", label_set, f"one of {list(LABEL_SETS)}")
    return label_set


def human_labels(true: np.ndarray, k: int, file: Any, label_set: str) -> np.ndarray:
    """The label set `label_set` of the CIFAR-10N file, checked against the true labels."""
    label_set = check_label_set(label_set)
    path = check_label_path(file)
    arrays = read_label_file(path)
    given = _file_labels(arrays, LABEL_SETS[label_set], path)
    clean = _file_labels(arrays, CLEAN_KEY, path)
    _check_against_split(true, given, clean, k, path)
    return given


def read_label_file(path: str | Path) -> dict[str, Any]:
    """The arrays of a CIFAR-10N file: the authors' .pt (torch.save of a dict) or an .npz."""
    path = check_label_path(path)
    return _load_npz(path) if path.suffix == ".npz" else _load_pt(path)


def _load_npz(path: Path) -> dict[str, Any]:
    """The named arrays of an .npz archive; no pickled objects are ever loaded."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:  # not a zip, truncated, pickled data: all a bad file
        raise ConfigError("noise.file", str(path), "a readable .npz archive",
                          hint=f"{type(err).__name__}: {_first_sentence(str(err))}") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ConfigError("noise.file", str(path), "an .npz archive of named label arrays",
                          hint="it holds a single .npy array")
    with loaded as z:
        try:
            return {key: z[key] for key in z.files}
        except Exception as err:  # a damaged member shows only when it is read
            raise ConfigError("noise.file", str(path), "a readable .npz archive",
                              hint=f"{type(err).__name__}: {_first_sentence(str(err))}") from err


def _load_pt(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: plain data only, never pickled code."""
    import torch  # only here: the rest of the noise package is numpy

    try:
        # The authors' file holds numpy arrays: allow exactly the globals that rebuild them.
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip, truncation and version errors alike
        raise ConfigError("noise.file", str(path), "a dict of label arrays readable by "
                          "torch.load(weights_only=True), or an .npz", hint=_why(err)) from err
    if not isinstance(obj, Mapping):
        raise ConfigError("noise.file", str(path), "a dict of label arrays",
                          hint=f"it holds a {type(obj).__name__}")
    return {str(key): value for key, value in obj.items()}


def _why(err: Exception) -> str:
    """The informative sentence of a torch.load error (its first lines are generic advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "Unsupported global" in line or "but got" in line]
    line = (useful or lines or [type(err).__name__])[0].removeprefix("WeightsUnpickler error: ")
    return _first_sentence(re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", line))


def _first_sentence(text: str) -> str:
    """The first sentence of an error message, for a one-paragraph hint."""
    return text.strip().split(". ")[0].rstrip(".")


def _numpy_globals() -> list[Any]:
    """ndarray, numeric dtypes and _reconstruct (numpy 1.x and 2.x names): data, no code."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    names = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
    # An unpickled dtype is rebuilt as its class (e.g. numpy.dtypes.Int64DType).
    dtypes = {type(np.dtype(code)) for code in "?bhilqBHILQefdg"}
    return [np.ndarray, np.dtype, *dtypes, *[(_reconstruct, name) for name in names]]


def _file_labels(arrays: Mapping[str, Any], key: str, path: Path) -> np.ndarray:
    """One label vector of the file as int64 (numpy arrays, tensors and int lists alike)."""
    if key not in arrays:
        raise ConfigError("noise.file", str(path), f"a file with the key {key!r}",
                          hint=f"keys: {sorted(arrays)}")
    value = arrays[key]
    try:
        value = value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
    except Exception as err:  # ragged lists and other objects numpy cannot hold
        raise ConfigError("noise.file", str(path), f"{key} as a 1-D integer array",
                          hint=f"{type(err).__name__}: {err}") from err
    if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
        raise ConfigError("noise.file", str(path), f"{key} as a 1-D integer array",
                          hint=f"got {value.dtype}{list(value.shape)}")
    return value.astype(np.int64)


def _check_against_split(
    true: np.ndarray, given: np.ndarray, clean: np.ndarray, k: int, path: Path
) -> None:
    """The file must hold one label in [0, K) per training sample, with our clean labels."""
    if given.size != true.size or clean.size != true.size:
        raise ConfigError("noise.file", str(path), f"{true.size} labels (the training split)",
                          hint=f"the file holds {given.size} ({clean.size} clean labels)")
    if given.size and (given.min() < 0 or given.max() >= k):
        raise ConfigError("noise.file", str(path), f"labels in [0, {k})",
                          hint=f"found [{given.min()}, {given.max()}]")
    differ = int((clean != true).sum())
    if differ:
        raise ConfigError("noise.file", str(path), "clean_label equal to the training labels",
                          hint=f"{differ} of {true.size} differ: not this dataset or order")
