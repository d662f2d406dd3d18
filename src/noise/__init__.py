"""Label noise for the training split: the models, their config keys and checks, injection.

Models (the `noise` config group, `noise.name`):
- `none`: labels unchanged.
- `symmetric`: a fixed count round(rate * N) of samples gets a uniformly drawn label, either
  from the other K-1 classes (realised rate exactly `rate`) or, with `include_true_class`,
  from all K classes: the "uniform corruption" of Zhang et al., "mixup: Beyond Empirical
  Risk Minimization", ICLR 2018 (realised rate about rate * (K-1)/K).
- `asymmetric`: round(rate * n_c) samples of every mapped class c go to its partner class,
  the maps of Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss
  Correction Approach", CVPR 2017 (CIFAR-10, CIFAR-100, MNIST; MNIST's for the digits).
- `pairflip`: the same fixed count per class, class i -> (i+1) mod K (Han et al.,
  "Co-teaching", NeurIPS 2018).
- `instance`: instance-dependent noise of Xia et al., "Part-dependent Label Noise: Towards
  Instance-dependent Label Noise", NeurIPS 2020, as their code generates it.
- `human`: CIFAR-10N real human annotations of Wei et al., "Learning with Noisy Labels
  Revisited: A Study Using Real-World Human Annotations", ICLR 2022.

`symmetric`, `asymmetric` and `pairflip` flip an exact count (per class for the last two) by
default, `noise.sampling: exact`: the realised rate is then exact and identical across
studies (rounding half-up: floor(rate * n + 0.5)). `noise.sampling: per_sample` draws each
label from its row of the transition matrix instead, as Patrini et al.'s, Han et al.'s and
Wei et al.'s code does, so the realised rate varies around `rate`.

Randomness: symmetric, asymmetric and pairflip draw from `np.random.default_rng(noise.seed)`;
instance noise draws from `np.random.RandomState(noise.seed)`, the stream the authors'
generator consumes after `np.random.seed(seed)`, so that one seed and one image array give
their labels. Both are private generators: the labels depend on the noise seed, the labels
and (instance) the images only, never on the training seed or global RNG state, so every
augmentation, model and training seed of a study sees the same labels.

This module owns the model names and every model's keys (`NOISE_MODELS`, `NOISE_KEYS`) and
their checks (`check_noise_config`); it imports neither torch nor the run machinery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.errors import ConfigError
from src.noise import models
from src.noise.cifar10n import (
    LABEL_SETS,
    check_label_path,
    check_label_set,
    human_labels,
    read_label_file,
)
from src.noise.models import (
    CIFAR10_MAP,
    CIFAR100_COARSE,
    CIFAR100_GROUPS,
    FEATURE_SCALINGS,
    MNIST_MAP,
    asymmetric_map,
    cifar100_consecutive_map,
    cifar100_superclass_map,
)
from src.noise.records import (
    NoiseResult,
    noise_metrics,
    noise_result,
    save_noise,
    transition_matrix,
)

__all__ = [
    "CIFAR10_MAP", "CIFAR100_COARSE", "CIFAR100_GROUPS", "FEATURE_SCALINGS", "LABEL_SETS",
    "MNIST_MAP", "NOISE_KEYS", "NOISE_MODELS", "SAMPLINGS", "NoiseResult", "NoiseSpec",
    "asymmetric_map",
    "check_noise_config", "cifar100_consecutive_map", "cifar100_superclass_map",
    "inject_noise", "noise_metrics", "read_label_file", "resolve_noise_config", "save_noise",
    "transition_matrix",
]

NOISE_MODELS: tuple[str, ...] = ("none", "symmetric", "asymmetric", "pairflip", "instance", "human")

# The keys each model accepts besides `name`, with their defaults. `human`'s file and
# label_set have no default (None): a config must set them.
_COMMON: dict[str, Any] = {"rate": 0.0, "seed": 0}
# How a transition-matrix model draws: `exact` flips a fixed count (round(rate * n) of the
# samples, or of each class's); `per_sample` draws every label from its row of the transition
# matrix, as Han et al.'s and Wei et al.'s code (`multiclass_noisify`) does, so the realised
# rate varies around `rate`. Results under the two are never pooled (a setting each).
SAMPLINGS: tuple[str, ...] = ("exact", "per_sample")
NOISE_KEYS: dict[str, dict[str, Any]] = {
    "none": dict(_COMMON),
    "symmetric": {**_COMMON, "include_true_class": False, "sampling": "exact"},
    "asymmetric": {**_COMMON, "groups": "consecutive", "sampling": "exact"},
    "pairflip": {**_COMMON, "sampling": "exact"},
    "instance": {**_COMMON, "norm_std": 0.1, "feature_scaling": "none"},
    "human": {**_COMMON, "file": None, "label_set": None},
}

# Asymmetric and pair flips stay below this rate: at 0.5 a class and its partner share the
# class's samples equally, above it the partner is the class's majority label (Patrini et
# al.'s code, too, requires a rate below 0.5 for its two-class asymmetric noise).
PARTNER_RATE_LIMIT = 0.5
SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds below 2**32


@dataclass(frozen=True)
class NoiseSpec:
    """A checked noise config: the model, its rate and seed, and its own keys filled in."""

    name: str
    rate: float
    seed: int
    options: dict[str, Any]


# The noise models whose labels are drawn at random: only these, at a rate above 0, give
# another labelling for another noise.seed (clean labels and CIFAR-10N's human labels are
# fixed, whatever the seed).
DRAWN = ("symmetric", "asymmetric", "pairflip", "instance")


def has_random_draw(name: str, rate: float) -> bool:
    """Whether noise.seed changes the labels of this noise model at this rate."""
    return name in DRAWN and float(rate) > 0


def inject_noise(
    labels: np.ndarray,
    num_classes: int,
    cfg: Mapping[str, Any],
    *,
    dataset: str,
    images: np.ndarray | None = None,
) -> NoiseResult:
    """Corrupt the TRAINING labels as the `noise` config says; test labels never come here.

    `images` (uint8 (N, H, W) or (N, H, W, C), as the suite loads them) is needed by
    `instance` only, which projects the raw pixel values (see `models.instance`). For `human`
    the labels must be the full training split in torchvision order: inject before carving
    off a validation subset.
    """
    spec = resolve_noise_config(cfg, num_classes, dataset)
    true = _check_labels(labels, num_classes)
    opts = spec.options
    if spec.name == "none":
        given = true.copy()
    elif spec.name == "symmetric":
        given = models.symmetric(true, num_classes, spec.rate, opts["include_true_class"],
                                 np.random.default_rng(spec.seed),
                                 per_sample=opts["sampling"] == "per_sample")
    elif spec.name in ("asymmetric", "pairflip"):
        mapping = (asymmetric_map(dataset, num_classes, opts["groups"])
                   if spec.name == "asymmetric" else models.pair_map(num_classes))
        given = models.flip_to_partner(true, mapping, spec.rate,
                                       np.random.default_rng(spec.seed),
                                       per_sample=opts["sampling"] == "per_sample")
    elif spec.name == "instance":
        given = models.instance(true, num_classes, images, spec.rate, opts["norm_std"],
                                opts["feature_scaling"], np.random.RandomState(spec.seed))
    else:
        given = human_labels(true, num_classes, opts["file"], opts["label_set"])
    return noise_result(true, given, num_classes)


# --------------------------------------------------------------------------- checks


def check_noise_config(cfg: Mapping[str, Any], num_classes: int, dataset: str) -> None:
    """Raise ConfigError for the first bad value of a `noise` config on this dataset.

    Checks the model name, that every key belongs to the model, each key's type and range,
    the rate against what the model can realise on K classes, that asymmetric noise has a
    published map for the dataset, and that a CIFAR-10N file exists and is not empty (its
    contents are read, and checked, when the noise is injected).
    """
    resolve_noise_config(cfg, num_classes, dataset)


def resolve_noise_config(cfg: Mapping[str, Any], num_classes: int, dataset: str) -> NoiseSpec:
    """The checked config with defaults filled in; ConfigError for every bad value."""
    if not isinstance(cfg, Mapping):
        raise ConfigError("noise", cfg, "a mapping with a name key")
    _check_num_classes(num_classes)
    name = cfg.get("name")
    if not isinstance(name, str) or name not in NOISE_MODELS:
        raise ConfigError("noise.name", name, f"one of {list(NOISE_MODELS)}")
    known = NOISE_KEYS[name]
    for key in cfg:
        if key != "name" and key not in known:
            raise ConfigError(f"noise.{key}", cfg[key],
                              f"a key of noise={name}: {['name', *known]}")
    values = {key: cfg.get(key, default) for key, default in known.items()}
    seed = _check_seed(values.pop("seed"))
    raw_rate = values.pop("rate")
    options = _check_options(name, values, num_classes, dataset)
    rate = _check_rate(name, raw_rate, options, num_classes)
    return NoiseSpec(name, rate, seed, options)


def _check_num_classes(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError("dataset.num_classes", k, "an integer >= 2")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError("noise.seed", seed, f"an integer in [0, {SEED_MAX}]")
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError("noise.seed", seed, f"an integer in [0, {SEED_MAX}]")
    return int(seed)


def _finite_number(key: str, value: Any, allowed: str) -> float:
    """A real, finite number (not a bool), as float."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value):
        raise ConfigError(key, value, allowed)
    return float(value)


def _check_options(
    name: str, values: dict[str, Any], k: int, dataset: str
) -> dict[str, Any]:
    """The model's own keys, checked; returns them as plain Python values."""
    if "sampling" in values and values["sampling"] not in SAMPLINGS:
        raise ConfigError("noise.sampling", values["sampling"], f"one of {list(SAMPLINGS)}",
                          hint="exact: a fixed count of flips; per_sample: each label drawn "
                               "from the transition matrix (Co-teaching's and JoCoR's code)")
    if name == "symmetric":
        if not isinstance(values["include_true_class"], bool):
            raise ConfigError("noise.include_true_class", values["include_true_class"],
                              "true or false")
    elif name == "asymmetric":
        # Raises for a dataset without a published map, a wrong class count, bad groups.
        asymmetric_map(dataset, k, values["groups"])
    elif name == "instance":
        values["norm_std"] = _finite_number("noise.norm_std", values["norm_std"],
                                            "a finite number >= 0")
        if values["norm_std"] < 0:
            raise ConfigError("noise.norm_std", values["norm_std"], "a finite number >= 0")
        if values["feature_scaling"] not in FEATURE_SCALINGS:
            raise ConfigError("noise.feature_scaling", values["feature_scaling"],
                              f"one of {list(FEATURE_SCALINGS)}",
                              hint="none: raw pixel values, as Xia et al.'s code; "
                                   "unit: each image scaled to unit length")
    elif name == "human":
        check_label_set(values["label_set"])
        other = models.dataset_key(dataset) not in ("cifar10", "npz")  # npz: CIFAR-10's images
        values["file"] = str(check_label_path(values["file"], (
            f"noise=human relabels CIFAR-10's training images, and dataset={dataset} is not "
            "CIFAR-10 (noise=symmetric, asymmetric, pairflip or instance fit any dataset)")
            if other else ""))
        if k != 10:
            raise ConfigError("dataset.num_classes", k, "10 for noise=human",
                              hint="CIFAR-10N labels the 10 CIFAR-10 classes")
    return values


def _check_rate(name: str, value: Any, options: Mapping[str, Any], k: int) -> float:
    """The rate, within what the model can realise on K classes."""
    rate = _finite_number("noise.rate", value, "a finite number in [0, 1]")
    if name in ("none", "human"):
        if rate != 0:
            why = "labels stay clean" if name == "none" else "the file sets the realised rate"
            raise ConfigError("noise.rate", value, f"0 for noise={name}", hint=why)
    elif name == "symmetric" and not options["include_true_class"]:
        top = (k - 1) / k
        if not 0 <= rate <= top * (1 + 1e-12):
            raise ConfigError(
                "noise.rate", value, f"a number in [0, (K-1)/K] = [0, {top:.6g}] for K = {k}",
                hint="at (K-1)/K the labels are uniformly random, above it the true class is "
                     "rarer than each other class; include_true_class=true takes rates up to "
                     "1 and realises rate*(K-1)/K")
    elif name in ("asymmetric", "pairflip"):
        if not 0 <= rate < PARTNER_RATE_LIMIT:
            raise ConfigError(
                "noise.rate", value, f"a number in [0, {PARTNER_RATE_LIMIT})",
                hint="at 0.5 a class and its partner share the class's samples equally, "
                     "above it the partner label is the majority")
    elif not 0 <= rate <= 1:
        raise ConfigError("noise.rate", value, "a finite number in [0, 1]")
    return rate


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the labels as a fresh int64 vector after checking they lie in [0, K)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError("labels", f"{arr.dtype}{list(arr.shape)}", "a 1-D integer array")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ConfigError("dataset.num_classes", num_classes, "greater than every label",
                          hint=f"labels span [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=True)
