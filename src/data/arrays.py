"""Datasets as in-memory uint8 arrays: the bundled digits, torchvision sets and npz archives.

Every loader returns channels-last uint8 images (N, H, W, C) and int64 labels. Arrays are
cached per process, so the runs of a sweep that share a dataset load it once.

Where a dataset comes from: `dataset.npz` when set; else the first of `dataset.archives` (the
name map in conf/dataset/NAME.yaml, e.g. cifar10: cifar10.npz, cifar10_jpeg.npz) found in
`dataset.root` (`paths.data_dir`); else torchvision's files there. When none is found, the
error names every file it tried.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from src.config import with_defaults
from src.errors import ConfigError

log = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "npz")
_TORCHVISION = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
}
# What torchvision reads under its root (and what dataset.download=true would fetch there).
_TORCHVISION_FILES = {
    "mnist": "MNIST/raw/",
    "fashion_mnist": "FashionMNIST/raw/",
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "svhn": "train_32x32.mat, test_32x32.mat",
}


@dataclass(frozen=True)
class Arrays:
    """A dataset's train and test splits, images uint8 (N, H, W, C), labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


_CACHE: dict[tuple, Arrays] = {}
SPLITS = ("x_train", "y_train", "x_test", "y_test")


def _file_state(path: Any) -> tuple:
    """Size and modification time of a file (a changed archive is loaded again)."""
    try:
        st = Path(str(path)).expanduser().stat()
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


def load_arrays(cfg: Mapping[str, Any]) -> Arrays:
    """Load (or fetch from the process cache) the dataset the `dataset` config names, checked
    against what the config declares (shape, classes) before anything trains."""
    name = cfg["name"]
    if name not in DATASETS:
        raise ConfigError("dataset.name", name, f"one of {list(DATASETS)}")
    npz = cfg.get("npz") or local_archive(cfg)
    key = (name, npz, cfg.get("root"), _file_state(npz) if npz else ())
    if key not in _CACHE:
        _CACHE[key] = load_npz(npz) if npz else _load_uncached(cfg)
    arrays = _CACHE[key]
    check_arrays(arrays, cfg)
    if arrays.y_train.dtype != np.int64 or arrays.y_test.dtype != np.int64:
        arrays = _CACHE[key] = replace(arrays, y_train=arrays.y_train.astype(np.int64),
                                       y_test=arrays.y_test.astype(np.int64))
    return arrays


def archive_candidates(cfg: Mapping[str, Any]) -> list[Path]:
    """The offline archives a dataset is looked for as, in order: each of `dataset.archives`
    (its name map, conf/dataset/NAME.yaml) in `dataset.root`; none without a root."""
    root, name = cfg.get("root"), cfg["name"]
    if not root or name in ("digits", "npz"):
        return []
    names = with_defaults("dataset", name, cfg)["archives"]
    return [Path(str(root)).expanduser() / str(n) for n in names]


def local_archive(cfg: Mapping[str, Any]) -> str | None:
    """The first of `archive_candidates` that exists: with `paths.data_dir` set once (e.g. in
    conf/local/), `dataset=cifar10` finds `cifar10_jpeg.npz` there without `dataset.npz=...`."""
    found = next((p for p in archive_candidates(cfg) if p.is_file()), None)
    return None if found is None else str(found)


def _load_uncached(cfg: Mapping[str, Any]) -> Arrays:
    name = cfg["name"]
    if name == "npz":
        raise ConfigError("dataset.npz", cfg.get("npz"), "a path to an .npz archive with "
                          "x_train, y_train, x_test, y_test")
    if name == "digits":
        return _load_digits()
    return _load_torchvision(name, cfg.get("root"), bool(cfg.get("download", False)),
                             archive_candidates(cfg))


def _digits_key() -> str | None:
    """What the digits' split depends on, without importing scikit-learn (about 1.1 s of a
    process's start on 2 cores): its version, numpy's (the split's random draws), the
    content of the bundled file and the source of the split. None when the file cannot be
    found (no cache then)."""
    import hashlib
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [p for p in (Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders)
             if p.is_file()]
    if not found:
        return None
    import inspect

    # The file and the code that splits it (test size, seed, pixel scaling) are both content.
    content = found[0].read_bytes() + inspect.getsource(_split_digits).encode()
    digest = hashlib.sha256(content).hexdigest()[:16]
    return f"{importlib.metadata.version('scikit-learn')}-{np.__version__}-{digest}"


def digits_cache_file() -> Path | None:
    """The digits' split as last computed with this scikit-learn, numpy and file, kept in
    the user's cache (`$XDG_CACHE_HOME/lsmix`, else `~/.cache/lsmix`); None without a key."""
    from src.files import user_cache_dir

    key = _digits_key()
    return None if key is None else user_cache_dir() / f"digits-{key}.npz"


def _load_digits() -> Arrays:
    """scikit-learn's 8x8 digits with a fixed stratified 80/20 split (no download), from the
    user's cache when scikit-learn, numpy and the bundled file are the ones it was made
    with (a changed one makes the split again): the same arrays, without importing
    scikit-learn."""
    from src.files import atomic_write

    cached = digits_cache_file()
    if cached is not None and cached.is_file():
        try:
            with np.load(cached) as z:
                return Arrays(*(z[k] for k in SPLITS), source=DIGITS_SOURCE)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # unreadable: made again below, and replaced
    arrays = _split_digits()
    if cached is not None:
        try:
            atomic_write(cached, lambda f: np.savez(f, **{k: getattr(arrays, k)
                                                          for k in SPLITS}), binary=True)
        except OSError as err:  # a read-only home: the split is made each time
            log.debug("digits not cached in %s: %s", cached, err)
    return arrays


DIGITS_SOURCE = "sklearn.datasets.load_digits"


def _split_digits() -> Arrays:
    """The split itself, with scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Pixel values are counts 0..16; scale them to the uint8 range every loader uses.
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return Arrays(x_tr, y_tr, x_te, y_te, source=DIGITS_SOURCE)


def load_npz(path: str | Path) -> Arrays:
    """Read an archive with x_train, y_train, x_test, y_test (or CIFAR JPEG scans).

    Anything that is not such an archive (a missing, empty, truncated or text file, a .npy,
    pickled object arrays) is a ConfigError naming the file and what it should hold.
    """
    path = Path(path).expanduser()
    allowed = "an .npz archive (numpy.savez) with uint8 images x_train, x_test and integer " \
              "labels y_train, y_test"
    if not path.is_file():
        raise ConfigError("dataset.npz", str(path), allowed, hint=f"no file at {path.resolve()}")
    kind = not_numpy(path)
    if kind:
        raise ConfigError("dataset.npz", str(path), allowed, hint=kind)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):  # a .npy holds one array, not the four splits
                raise ConfigError("dataset.npz", str(path), allowed,
                                  hint="it holds a single array (.npy), not named splits")
            if "jpeg_header" in z.files:
                splits = _decode_jpeg_scans(z)
            else:
                missing = set(SPLITS) - set(z.files)
                if missing:
                    raise ConfigError("dataset.npz", str(path), allowed,
                                      hint=f"missing {sorted(missing)}; it has {z.files}")
                splits = {k: z[k] for k in SPLITS}
    except ConfigError:
        raise
    except Exception as err:  # zip, pickle and format errors alike: not a usable archive
        raise ConfigError("dataset.npz", str(path), allowed,
                          hint=f"it cannot be read ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'no detail'})"
                          ) from None
    for k in ("x_train", "x_test"):
        if splits[k].ndim == 3:  # (N, H, W) grey images
            splits[k] = splits[k][..., None]
    return Arrays(np.ascontiguousarray(splits["x_train"]), splits["y_train"],
                  np.ascontiguousarray(splits["x_test"]), splits["y_test"], source=str(path))


# How numpy's files begin: an .npz is a zip archive (an empty one too), an .npy its own magic.
NUMPY_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")


def not_numpy(path: Path) -> str | None:
    """What the file is when it is not one of numpy's (a text file, say), else None: numpy's
    own error for it speaks of pickled data, which is not the problem."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head or head.startswith(NUMPY_MAGIC):
        return None  # an empty file: numpy's error says it
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not a numpy file: no zip (.npz) or .npy header at its start"
    first = text.splitlines()[0][:60] if text.strip() else ""
    return f"it is a text file, not a numpy archive (it begins {first!r})"


def _decode_jpeg_scans(z: Any) -> dict[str, np.ndarray]:
    """Decode the compact archive that stores each image as JPEG scans after one shared header."""
    from PIL import Image

    header = z["jpeg_header"].tobytes()
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        scans, offsets = z[f"{split}_scans"].tobytes(), z[f"{split}_offsets"]
        images = [
            np.asarray(Image.open(io.BytesIO(header + scans[a:b] + b"\xff\xd9")).convert("RGB"))
            for a, b in zip(offsets[:-1], offsets[1:])
        ]
        out[f"x_{split}"] = np.stack(images)
        out[f"y_{split}"] = z[f"y_{split}"]
    return out


def _load_torchvision(name: str, root: str | None, download: bool,
                      archives: list[Path]) -> Arrays:
    """Load a torchvision dataset from `root`, downloading only when asked; `archives` are
    the offline archives looked for before (none was there), named when this fails too."""
    import torchvision.datasets as tvd

    if not root:
        raise ConfigError("dataset.root", root, "a folder for the torchvision files",
                          hint="or set dataset.npz to an offline archive")
    cls: Callable = getattr(tvd, _TORCHVISION[name])
    try:
        if name == "svhn":
            tr, te = (cls(root, split=s, download=download) for s in ("train", "test"))
        else:
            tr, te = (cls(root, train=t, download=download) for t in (True, False))
    except RuntimeError as err:
        folder = Path(root).expanduser().resolve()
        tried = [str(p.resolve()) for p in archives] + [
            f"torchvision's {_TORCHVISION_FILES[name]} in {folder}"]
        raise ConfigError(
            "dataset.root", root, f"a folder holding an offline {name} archive "
            f"({', '.join(p.name for p in archives) or 'none named'}) or torchvision's files",
            hint=f"tried {'; '.join(tried)}: none is there. Point paths.data_dir (or "
                 f"dataset.root) at the folder that holds one, give an archive elsewhere with "
                 f"dataset.npz=PATH, or fetch torchvision's with dataset.download=true; "
                 f"torchvision said: {str(err).strip()}",
        ) from None
    return Arrays(*_tv_split(name, tr), *_tv_split(name, te), source=f"torchvision:{root}")


def _tv_split(name: str, ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and int64 labels of one torchvision split."""
    if name == "svhn":
        return np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1)), np.asarray(ds.labels, np.int64)
    x = np.asarray(ds.data)
    if x.ndim == 3:
        x = x[..., None]
    return np.ascontiguousarray(x), np.asarray(ds.targets, np.int64)


def check_arrays(a: Arrays, cfg: Mapping[str, Any]) -> None:
    """Fail before training when the arrays are not what the dataset config declares: uint8
    images (N, H, W, C) of `image_shape`, one integer label in [0, num_classes) per image,
    no empty split."""
    c, h, w = (int(v) for v in cfg["image_shape"])
    k = int(cfg["num_classes"])
    key = "dataset.npz" if a.source.endswith(".npz") else "dataset.name"
    for split in ("train", "test"):
        x, y = getattr(a, f"x_{split}"), getattr(a, f"y_{split}")
        if x.dtype != np.uint8:
            raise ConfigError(key, a.source, "uint8 images (0-255)",
                              hint=f"x_{split} has dtype {x.dtype}")
        if x.ndim != 4:
            raise ConfigError(key, a.source, "images of shape (N, H, W) or (N, H, W, C)",
                              hint=f"x_{split} has shape {list(x.shape)}")
        if tuple(x.shape[1:]) != (h, w, c):
            raise ConfigError("dataset.image_shape", list(cfg["image_shape"]),
                              f"the shape of the data, [{x.shape[3]}, {x.shape[1]}, {x.shape[2]}]"
                              f" (C, H, W) for {a.source}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(key, a.source, "integer class labels, one per image",
                              hint=f"y_{split} is {y.dtype} of shape {list(y.shape)}")
        if len(y) != len(x):
            raise ConfigError(key, a.source, "one label per image",
                              hint=f"x_{split} has {len(x)} images, y_{split} {len(y)} labels")
        if len(y) == 0:
            raise ConfigError(key, a.source, "non-empty train and test splits",
                              hint=f"the {split} split is empty")
        if y.min() < 0:
            raise ConfigError(key, a.source, "class labels in [0, dataset.num_classes)",
                              hint=f"y_{split} holds the negative label {int(y.min())}")
        if y.max() >= k:
            raise ConfigError("dataset.num_classes", k, f"more than the largest label: "
                              f"y_{split} of {a.source} spans [{int(y.min())}, {int(y.max())}]")


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) holding out `fraction` of every class, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
