"""Label-noise injection for the training split: synthetic noise models and real human noise.

Models (the `noise` config group, `noise.name`):
- `none`: labels unchanged.
- `symmetric`: a fixed count round(rate * N) of samples gets a uniformly drawn label, either
  from the other K-1 classes (exact realised rate) or, with `include_true_class`, from all K
  classes: the "uniform corruption" of Zhang et al., "mixup: Beyond Empirical Risk
  Minimization", ICLR 2018 (realised rate about rate * (K-1)/K).
- `asymmetric`: class-dependent flips to a partner class, the maps of Patrini et al., "Making
  Deep Neural Networks Robust to Label Noise: a Loss Correction Approach", CVPR 2017.
- `pairflip`: class i -> (i+1) mod K (Han et al., "Co-teaching", NeurIPS 2018).
- `instance`: instance-dependent noise of Xia et al., "Part-dependent Label Noise: Towards
  Instance-dependent Label Noise", NeurIPS 2020.
- `human`: CIFAR-10N real human annotations of Wei et al., "Learning with Noisy Labels
  Revisited: A Study Using Real-World Human Annotations", ICLR 2022.

`asymmetric` and `pairflip` flip a fixed count, round(rate * n_c) samples of every mapped
class c (chosen uniformly without replacement), not a per-sample Bernoulli draw: like
`symmetric` the realised per-class rate is then exact and identical across studies.
Rounding is half-up: floor(rate * n + 0.5).

Every draw comes from `np.random.default_rng(noise.seed)`: the corrupted labels depend on
the seed, the labels (and for `instance` the images) only, never on the training seed or on
global RNG state, so every augmentation, model and training seed sees the same labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.errors import ConfigError
from src.results import atomic_write, write_json_atomic

NOISE_MODELS: tuple[str, ...] = ("none", "symmetric", "asymmetric", "pairflip", "instance", "human")

# Keys each model accepts besides name, rate and seed (defaults where optional).
_MODEL_KEYS: dict[str, dict[str, Any]] = {
    "none": {},
    "symmetric": {"include_true_class": False},
    "asymmetric": {},
    "pairflip": {},
    "instance": {"norm_std": 0.1},
    "human": {"file": None, "label_set": None},
}
_COMMON_KEYS = ("name", "rate", "seed")

# CIFAR-10N label sets -> keys of the authors' CIFAR-10_human.pt.
LABEL_SETS: dict[str, str] = {
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "worse": "worse_label",
}

# Patrini et al. 2017: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# Patrini et al. 2017 (MNIST): 2->7, 3->8, 5<->6, 7->1.
MNIST_MAP: dict[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}

# CIFAR-100 fine label (torchvision order, alphabetical) -> coarse label (superclass).
CIFAR100_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


@dataclass(frozen=True)
class NoiseResult:
    """Training labels after noise injection, with the true labels and summary counts."""

    given_labels: np.ndarray  # int64, what the model trains on
    true_labels: np.ndarray  # int64, the dataset's labels
    corrupted: np.ndarray  # bool, given != true
    realized_rate: float  # corrupted.mean()
    transition_matrix: np.ndarray  # (K, K) int64 counts, row = true class, column = given


def inject_noise(
    labels: np.ndarray,
    num_classes: int,
    cfg: Mapping[str, Any],
    *,
    dataset: str,
    images: np.ndarray | None = None,
) -> NoiseResult:
    """Corrupt the TRAINING labels as the `noise` config says; test labels never come here.

    `images` (uint8, (N, H, W) or (N, H, W, C)) is needed by `instance` only. For `human` the
    labels must be the full training split in torchvision order: inject before carving off a
    validation subset. `noise.rate` is ignored by `none` and `human` (the file sets the rate).
    """
    true = _check_labels(labels, num_classes)
    name, rate, seed = _check_cfg(cfg)
    opts = _options(cfg, name)
    rng = np.random.default_rng(seed)
    if name == "none":
        given = true.copy()
    elif name == "symmetric":
        given = _symmetric(true, num_classes, rate, opts["include_true_class"], rng)
    elif name == "asymmetric":
        given = _flip_fixed(true, asymmetric_map(dataset, num_classes), rate, rng)
    elif name == "pairflip":
        given = _flip_fixed(true, _pair_map(num_classes), rate, rng)
    elif name == "instance":
        given = _instance(true, num_classes, images, rate, opts["norm_std"], rng)
    else:
        given = _human(true, num_classes, opts)
    return _result(true, given, num_classes)


# --------------------------------------------------------------------------- validation


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the labels as a fresh int64 vector after checking they lie in [0, K)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ConfigError("dataset.num_classes", num_classes, "an integer >= 2")
    if num_classes < 2:
        raise ConfigError("dataset.num_classes", num_classes, "an integer >= 2")
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError("labels", f"{arr.dtype}{list(arr.shape)}", "a 1-D integer array")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ConfigError("dataset.num_classes", num_classes, "greater than every label",
                          hint=f"labels span [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=True)


def _check_cfg(cfg: Mapping[str, Any]) -> tuple[str, float, int]:
    """Validate name, rate and seed, and reject keys the named model does not know."""
    name = cfg.get("name")
    if name not in NOISE_MODELS:
        raise ConfigError("noise.name", name, f"one of {list(NOISE_MODELS)}")
    rate = cfg.get("rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)):
        raise ConfigError("noise.rate", rate, "a number in [0, 1]")
    if not 0.0 <= float(rate) <= 1.0:  # also rejects NaN
        raise ConfigError("noise.rate", rate, "a number in [0, 1]")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("noise.seed", seed, "a non-negative integer")
    allowed = (*_COMMON_KEYS, *_MODEL_KEYS[name])
    for key in cfg:
        if key not in allowed:
            raise ConfigError(f"noise.{key}", cfg[key], f"a key of noise={name}: {allowed}")
    return str(name), float(rate), int(seed)


def _options(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The model-specific keys with defaults filled in, type-checked."""
    opts = {key: cfg.get(key, default) for key, default in _MODEL_KEYS[name].items()}
    if name == "symmetric" and not isinstance(opts["include_true_class"], bool):
        raise ConfigError("noise.include_true_class", opts["include_true_class"], "true or false")
    if name == "instance":
        std = opts["norm_std"]
        ok = isinstance(std, (int, float, np.number)) and not isinstance(std, bool)
        if not ok or not math.isfinite(std) or std < 0:
            raise ConfigError("noise.norm_std", std, "a finite number >= 0")
        opts["norm_std"] = float(std)
    return opts


def _count(rate: float, n: int) -> int:
    """round(rate * n), half-up, so the count does not depend on banker's rounding."""
    return int(math.floor(rate * n + 0.5))


# --------------------------------------------------------------------------- synthetic models


def _symmetric(
    true: np.ndarray, k: int, rate: float, include_true: bool, rng: np.random.Generator
) -> np.ndarray:
    """Relabel round(rate * N) random samples uniformly (other classes, or all K classes)."""
    given = true.copy()
    idx = rng.choice(true.size, size=_count(rate, true.size), replace=False)
    if include_true:
        given[idx] = rng.integers(0, k, size=idx.size)
    else:
        # A uniform offset in 1..K-1 is a uniform draw from the other K-1 classes.
        given[idx] = (true[idx] + rng.integers(1, k, size=idx.size)) % k
    return given


def _flip_fixed(
    true: np.ndarray, mapping: Mapping[int, int], rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Flip exactly round(rate * n_c) random samples of each mapped class c to mapping[c]."""
    given = true.copy()
    for src in sorted(mapping):  # sorted: the draw order, hence the result, is fixed
        members = np.flatnonzero(true == src)
        chosen = rng.choice(members, size=_count(rate, members.size), replace=False)
        given[chosen] = mapping[src]
    return given


def _pair_map(k: int) -> dict[int, int]:
    """Pair flip: i -> (i+1) mod K for every class."""
    return {i: (i + 1) % k for i in range(k)}


def asymmetric_map(dataset: str, num_classes: int) -> dict[int, int]:
    """The class -> partner map of asymmetric noise for a dataset (classes not in it stay)."""
    key = dataset.lower().replace("-", "").replace("_", "")
    fixed = {"cifar10": (CIFAR10_MAP, 10), "mnist": (MNIST_MAP, 10), "digits": (MNIST_MAP, 10)}
    if key in fixed:
        mapping, k = fixed[key]
        if num_classes != k:
            raise ConfigError("dataset.num_classes", num_classes, f"{k} for {dataset}")
        return dict(mapping)
    if key == "cifar100":
        if num_classes != 100:
            raise ConfigError("dataset.num_classes", num_classes, f"100 for {dataset}")
        return cifar100_superclass_map()
    return _pair_map(num_classes)


def cifar100_superclass_map() -> dict[int, int]:
    """Each CIFAR-100 fine class -> the next fine class (cyclic) of its own superclass."""
    # Common code uses blocks of 5 consecutive fine labels as "superclasses", which is wrong
    # for torchvision's alphabetical order; here the real coarse labels define the groups.
    coarse = np.asarray(CIFAR100_COARSE)
    mapping: dict[int, int] = {}
    for group in range(20):
        members = np.flatnonzero(coarse == group).tolist()
        for i, fine in enumerate(members):
            mapping[fine] = members[(i + 1) % len(members)]
    return mapping


# --------------------------------------------------------------------------- instance noise


def _instance(
    true: np.ndarray,
    k: int,
    images: np.ndarray | None,
    rate: float,
    norm_std: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Xia et al. 2020: flip rate q_i ~ TN(rate, std; [0,1]), target from x . W[y]."""
    feats = _check_images(images, true.size)
    q = _truncated_normal(rate, norm_std, true.size, rng)
    logits = np.empty((true.size, k), dtype=np.float64)
    for c in range(k):
        # W[c] ~ N(0, 1) of shape (D, K), drawn for every class (present or not), so the
        # projection depends on the seed and shapes only.
        w = rng.standard_normal((feats.shape[1], k), dtype=np.float32)
        rows = np.flatnonzero(true == c)
        logits[rows] = _unit_rows(feats[rows]) @ w
    probs = _flip_probs(logits, true, q)
    return _sample_rows(probs, rng)


def _check_images(images: np.ndarray | None, n: int) -> np.ndarray:
    """Images as an (N, D) array, one row per training sample."""
    if images is None:
        raise ConfigError("noise.name", "instance", "a model without images",
                          hint="instance noise needs the training images")
    arr = np.asarray(images)
    if arr.ndim < 2 or arr.shape[0] != n:
        raise ConfigError("noise.name", "instance", f"images with {n} samples",
                          hint=f"got images of shape {arr.shape}")
    return arr.reshape(n, -1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Flatten to float32 and scale each row to unit L2 norm (all-zero rows stay zero)."""
    # Unit norm keeps x . W[y] ~ N(0, 1) for any image size: the softmax over targets is
    # neither one-hot nor flat. (Xia et al. used the transform-normalised tensor.)
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _truncated_normal(mean: float, std: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of normal(mean, std) truncated to [0, 1], by rejection (acceptance >= ~1/2)."""
    if std == 0:
        return np.full(n, mean)
    out = rng.normal(mean, std, size=n)
    bad = (out < 0) | (out > 1)
    while bad.any():
        out[bad] = rng.normal(mean, std, size=int(bad.sum()))
        bad = (out < 0) | (out > 1)
    return out


def _flip_probs(logits: np.ndarray, true: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row i: q_i * softmax over the other classes, and 1 - q_i on the true class."""
    rows = np.arange(true.size)
    logits[rows, true] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)  # finite: K >= 2 leaves one class
    probs = np.exp(logits)
    probs *= (q / probs.sum(axis=1))[:, None]
    probs[rows, true] = 1.0 - q
    return probs


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class per row from row-wise probabilities (inverse CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0])[:, None] * cdf[:, -1:]
    # '<=' never picks a zero-probability class, even for u == 0.
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


# --------------------------------------------------------------------------- human noise


def _human(true: np.ndarray, k: int, opts: Mapping[str, Any]) -> np.ndarray:
    """The CIFAR-10N label set `noise.label_set` from the file `noise.file`."""
    label_set = opts["label_set"]
    if label_set not in LABEL_SETS:
        raise ConfigError("noise.label_set", label_set, f"one of {list(LABEL_SETS)}")
    if not opts["file"]:
        raise ConfigError("noise.file", opts["file"], "the path of CIFAR-10_human.pt or an .npz")
    path = Path(str(opts["file"]))
    arrays = read_label_file(path)
    given = _file_labels(arrays, LABEL_SETS[label_set], path)
    clean = _file_labels(arrays, "clean_label", path)
    _check_human(true, given, clean, k, path)
    return given


def read_label_file(path: Path) -> dict[str, Any]:
    """The arrays of a CIFAR-10N file: the authors' .pt (torch.save of a dict) or an .npz."""
    if not path.is_file():
        raise ConfigError("noise.file", str(path), "an existing CIFAR-10N label file",
                          hint=f"no file at {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {key: z[key] for key in z.files}
        except (OSError, ValueError) as err:
            raise ConfigError("noise.file", str(path), "a readable .npz", hint=str(err)) from err
    return _load_pt(path)


def _load_pt(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: plain data only, never pickled code."""
    import torch  # only here: the rest of this module is numpy

    try:
        # The authors' file holds numpy arrays: allow exactly the globals that rebuild them.
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and version errors alike: a bad file
        raise ConfigError("noise.file", str(path), "a dict of label arrays readable by "
                          "torch.load(weights_only=True), or an .npz", hint=_why(err)) from err
    if not isinstance(obj, Mapping):
        raise ConfigError("noise.file", str(path), "a dict of label arrays",
                          hint=f"it holds a {type(obj).__name__}")
    return {str(key): value for key, value in obj.items()}


def _why(err: Exception) -> str:
    """The informative line of a torch.load error (its first lines are generic advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "got" in line or "Unsupported global" in line]
    return (useful or lines or [type(err).__name__])[0]


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
    """One label vector of the file as int64 (numpy arrays and torch tensors alike)."""
    if key not in arrays:
        raise ConfigError("noise.file", str(path), f"a file with the key {key!r}",
                          hint=f"keys: {sorted(arrays)}")
    value = arrays[key]
    value = value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
    if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
        raise ConfigError("noise.file", str(path), f"{key} as a 1-D integer array",
                          hint=f"got {value.dtype}{list(value.shape)}")
    return value.astype(np.int64)


def _check_human(
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


# --------------------------------------------------------------------------- records


def transition_matrix(true_labels: np.ndarray, given_labels: np.ndarray,
                      num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = given label."""
    true = np.asarray(true_labels, dtype=np.int64)
    given = np.asarray(given_labels, dtype=np.int64)
    if true.shape != given.shape or true.ndim != 1:
        raise ConfigError("labels", f"{true.shape} vs {given.shape}", "two 1-D arrays, same size")
    for arr in (true, given):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ConfigError("dataset.num_classes", num_classes, "greater than every label")
    flat = np.bincount(true * num_classes + given, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _result(true: np.ndarray, given: np.ndarray, k: int) -> NoiseResult:
    """Package labels with their corruption mask, rate and transition counts."""
    given = given.astype(np.int64)
    corrupted = given != true
    rate = float(corrupted.mean()) if corrupted.size else 0.0
    return NoiseResult(given, true, corrupted, rate, transition_matrix(true, given, k))


def save_noise(result: NoiseResult, run_dir: str | Path, cfg: Mapping[str, Any]) -> None:
    """Write run_dir/noise.json (rate, matrix, config) and run_dir/noise_labels.npz, atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "realized_rate": result.realized_rate,
        "transition_matrix": result.transition_matrix.tolist(),
        "noise": _plain(cfg),
        "num_samples": int(result.given_labels.size),
        "num_corrupted": int(result.corrupted.sum()),
    }
    write_json_atomic(run_dir / "noise.json", record)
    atomic_write(run_dir / "noise_labels.npz", lambda f: np.savez(
        f, given_labels=result.given_labels, true_labels=result.true_labels,
        corrupted=result.corrupted), binary=True)


def _plain(value: Any) -> Any:
    """A config (DictConfig, dict, lists, numpy scalars, paths) as JSON-ready builtins."""
    if isinstance(value, Mapping):
        return {str(key): _plain(value[key]) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # ListConfig too
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- metrics


def noise_metrics(
    pred: np.ndarray, given_labels: np.ndarray, true_labels: np.ndarray
) -> dict[str, float | None]:
    """Fit on intact labels, and memorisation vs recovery of corrupted labels."""
    pred, given, true = (np.asarray(a).ravel() for a in (pred, given_labels, true_labels))
    if not pred.shape == given.shape == true.shape:
        raise ConfigError("labels", f"{pred.shape}, {given.shape}, {true.shape}",
                          "pred, given and true labels of one size")
    clean = given == true
    noisy = ~clean
    return {
        "train_acc_clean_subset": _mean_or_none(pred[clean] == given[clean]),
        "memorized": _mean_or_none(pred[noisy] == given[noisy]),
        "recovered": _mean_or_none(pred[noisy] == true[noisy]),
    }


def _mean_or_none(hits: np.ndarray) -> float | None:
    """Mean of a boolean array, None when it is empty."""
    return float(hits.mean()) if hits.size else None
