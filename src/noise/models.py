"""Synthetic label-noise models: symmetric, asymmetric (published class maps), pair flip and
instance-dependent noise, with the class maps they use.

Each function takes the true labels and returns the given (noisy) labels; the arguments have
been checked by `src.noise.check_noise_config`. The random draws come from the generator the
caller passes (see `src.noise.inject_noise` for which one each model gets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from src.errors import ConfigError

# Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss Correction
# Approach", CVPR 2017 (their noise.py). CIFAR-10: truck->automobile, bird->airplane,
# deer->horse, cat<->dog.
CIFAR10_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# Patrini et al. 2017, MNIST: 2->7, 3->8, 5<->6, 7->1 (used for the 8x8 digits as well).
MNIST_MAP: dict[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}

# Datasets with a published asymmetric map. Fashion-MNIST, SVHN and npz archives have none:
# no class-confusion map for them is shared by the label-noise literature.
ASYMMETRIC_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "digits")

# How CIFAR-100 classes are grouped for asymmetric noise (`noise.groups`).
CIFAR100_GROUPS: tuple[str, ...] = ("consecutive", "superclass")

# Inputs of the instance-noise projection (`noise.feature_scaling`).
FEATURE_SCALINGS: tuple[str, ...] = ("none", "unit")

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


def flip_count(rate: float, n: int) -> int:
    """round(rate * n), half-up (floor(rate * n + 0.5)), independent of banker's rounding."""
    return int(math.floor(rate * n + 0.5))


# --------------------------------------------------------------------------- symmetric


def symmetric(
    true: np.ndarray, k: int, rate: float, include_true_class: bool, rng: np.random.Generator,
    per_sample: bool = False,
) -> np.ndarray:
    """Relabel round(rate * N) random samples uniformly: other classes, or all K classes.
    `per_sample`: each sample independently with probability `rate`, its new label drawn as
    above (so its transition-matrix row has 1 - rate on the diagonal and rate / (K - 1)
    elsewhere for the other classes; 1 - rate + rate / K with include_true_class)."""
    given = true.copy()
    idx = (np.flatnonzero(rng.random(true.size) < rate) if per_sample else
           rng.choice(true.size, size=flip_count(rate, true.size), replace=False))
    if include_true_class:
        given[idx] = rng.integers(0, k, size=idx.size)
    else:
        # A uniform offset in 1..K-1 is a uniform draw from the other K-1 classes.
        given[idx] = (true[idx] + rng.integers(1, k, size=idx.size)) % k
    return given


# --------------------------------------------------------------------------- class maps


def flip_to_partner(
    true: np.ndarray, mapping: Mapping[int, int], rate: float, rng: np.random.Generator,
    per_sample: bool = False,
) -> np.ndarray:
    """Flip exactly round(rate * n_c) random samples of each mapped class c to mapping[c];
    `per_sample`: each sample of a mapped class independently with probability `rate`."""
    given = true.copy()
    if per_sample:
        flips = rng.random(true.size) < rate
        for src in sorted(mapping):
            given[(true == src) & flips] = mapping[src]
        return given
    for src in sorted(mapping):  # sorted: the draw order, hence the result, is fixed
        members = np.flatnonzero(true == src)
        chosen = rng.choice(members, size=flip_count(rate, members.size), replace=False)
        given[chosen] = mapping[src]
    return given


def pair_map(k: int) -> dict[int, int]:
    """Pair flip (Han et al., "Co-teaching", NeurIPS 2018): i -> (i+1) mod K."""
    return {i: (i + 1) % k for i in range(k)}


def dataset_key(dataset: str) -> str:
    """A dataset name in the suite's spelling: 'CIFAR-10' and 'cifar10' are one dataset."""
    return str(dataset).lower().replace("-", "")


def asymmetric_map(dataset: str, num_classes: int, groups: str = "consecutive") -> dict[int, int]:
    """The class -> partner map of asymmetric noise (classes not in it keep their labels)."""
    key = dataset_key(dataset)
    if key not in ASYMMETRIC_DATASETS:
        raise ConfigError(
            "noise.name", "asymmetric",
            f"a dataset with a published asymmetric map ({', '.join(ASYMMETRIC_DATASETS)})",
            hint=f"dataset {dataset} has none; noise=pairflip flips class i to i+1 mod K "
                 "on any dataset")
    if groups not in CIFAR100_GROUPS:
        raise ConfigError("noise.groups", groups, f"one of {list(CIFAR100_GROUPS)}")
    if key != "cifar100" and groups != "consecutive":
        raise ConfigError("noise.groups", groups, "consecutive (the default) on " + dataset,
                          hint="the choice of groups applies to cifar100 only")
    expected = 100 if key == "cifar100" else 10
    if num_classes != expected:
        raise ConfigError("dataset.num_classes", num_classes, f"{expected} for {dataset}",
                          hint="asymmetric noise uses the dataset's published class map")
    if key == "cifar10":
        return dict(CIFAR10_MAP)
    if key in ("mnist", "digits"):
        return dict(MNIST_MAP)
    return cifar100_superclass_map() if groups == "superclass" else cifar100_consecutive_map()


def cifar100_consecutive_map() -> dict[int, int]:
    """Each CIFAR-100 class -> the next class (cyclic) of its block of five consecutive ones.

    Patrini et al. 2017's code flips "to the next class within super-class" by taking blocks
    of five consecutive labels (0-4, 5-9, ...) as super-classes; most published CIFAR-100
    asymmetric results use this map. In torchvision's alphabetical label order those blocks
    are not the real superclasses (see `cifar100_superclass_map`).
    """
    return {fine: 5 * (fine // 5) + (fine + 1) % 5 for fine in range(100)}


def cifar100_superclass_map() -> dict[int, int]:
    """Each CIFAR-100 fine class -> the next fine class (cyclic) of its real superclass."""
    coarse = np.asarray(CIFAR100_COARSE)
    mapping: dict[int, int] = {}
    for group in range(20):
        members = np.flatnonzero(coarse == group).tolist()
        for i, fine in enumerate(members):
            mapping[fine] = members[(i + 1) % len(members)]
    return mapping


# --------------------------------------------------------------------------- instance noise


def instance(
    true: np.ndarray,
    k: int,
    images: np.ndarray | None,
    rate: float,
    norm_std: float,
    feature_scaling: str,
    rs: np.random.RandomState,
) -> np.ndarray:
    """Instance-dependent noise of Xia et al., "Part-dependent Label Noise: Towards
    Instance-dependent Label Noise", NeurIPS 2020, as their `get_instance_noisy_label` does it.

    Per sample i: a flip rate q_i ~ N(rate, norm_std^2) truncated to [0, 1]; per class c a
    projection W[c] ~ N(0, 1) of shape (D, K), drawn for every class in turn; the sample
    keeps its label with probability 1 - q_i and otherwise moves to class j != y_i with
    probability q_i * softmax_j(x_i . W[y_i]) (the true class masked out). The draws come
    from `rs` in the authors' order: the N flip rates, the K projections, then one uniform
    per sample inverted through its cumulative probabilities (numpy's `choice(p=...)`).

    x_i is the image flattened channels first, as the authors' arrays hold CIFAR-10 and
    SVHN, with raw pixel values: their data.py hands the generator the untransformed float
    tensor of the stored uint8 images, and the Normalize transform applies only later when
    a sample is read for training. Raw pixels make x_i . W[y_i] large and the softmax near
    one-hot: a sample's flips go to one class (>= 99.9% of its flip probability on MNIST and
    CIFAR-10). With `feature_scaling="unit"` each x_i is scaled to unit length first, this
    suite's earlier variant: the softmax is flat and the flips spread over the wrong classes
    (about a third of the flip probability on the most likely one).
    """
    feats = _check_images(images, true.size)
    q = truncated_normal(rate, norm_std, true.size, rs)
    logits = np.empty((true.size, k), dtype=np.float64)
    for c in range(k):
        w = rs.standard_normal((feats.shape[1], k))  # W[c]: the c-th slice of randn(K, D, K)
        rows = np.flatnonzero(true == c)
        x = feats[rows].astype(np.float64)  # per class: float64 copies of one class at a time
        logits[rows] = (_unit_rows(x) if feature_scaling == "unit" else x) @ w
    probs = _flip_probs(logits, true, q)
    return _inverse_cdf(probs, rs.random_sample(true.size))


def _check_images(images: np.ndarray | None, n: int) -> np.ndarray:
    """Images as an (N, D) array in channels-first order, one row per training sample.

    Accepts (N, D) features, (N, H, W) grayscale and (N, H, W, C) channels-last images (the
    suite's layout), which are reordered to (N, C, H, W) before flattening.
    """
    if images is None:
        raise ConfigError("noise.name", "instance", "a model without images",
                          hint="instance noise needs the training images")
    arr = np.asarray(images)
    if not 2 <= arr.ndim <= 4 or arr.shape[0] != n:
        raise ConfigError("noise.name", "instance", f"images (N, D), (N, H, W) or (N, H, W, C) "
                          f"with N = {n} samples", hint=f"got images of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ConfigError("noise.name", "instance", "images of integer or float pixels",
                          hint=f"got dtype {arr.dtype}")
    if arr.ndim == 4:
        arr = arr.transpose(0, 3, 1, 2)
    return arr.reshape(n, -1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def truncated_normal(
    mean: float, std: float, n: int, rs: np.random.RandomState
) -> np.ndarray:
    """n draws of N(mean, std^2) truncated to [0, 1], by inverse CDF of one uniform each.

    This is scipy.stats.truncnorm's sampler (the one the authors call) written out: the
    same uniforms from `rs` give the same rates to rounding, whatever the scipy version.
    std = 0 means every rate is `mean` exactly, and no draw is taken.
    """
    if std == 0:
        return np.full(n, float(mean))
    from scipy.special import ndtr, ndtri  # only instance noise needs scipy

    lo, hi = ndtr((0.0 - mean) / std), ndtr((1.0 - mean) / std)
    u = rs.random_sample(n)
    return np.clip(mean + std * ndtri(lo + u * (hi - lo)), 0.0, 1.0)


def _flip_probs(logits: np.ndarray, true: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row i: q_i * softmax over the other classes, and 1 - q_i on the true class."""
    rows = np.arange(true.size)
    logits[rows, true] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)  # finite: K >= 2 leaves one class
    probs = np.exp(logits)
    probs *= (q / probs.sum(axis=1))[:, None]
    probs[rows, true] = 1.0 - q
    return probs


def _inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One class per row: the first whose normalised cumulative probability exceeds u.

    numpy's choice(K, p=row) with its uniform u, vectorised: the count of cumulative
    probabilities <= u, which never lands on a zero-probability class.
    """
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    picked = (cdf <= u[:, None]).sum(axis=1)
    return np.minimum(picked, probs.shape[1] - 1).astype(np.int64)
