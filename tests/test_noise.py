"""Tests of label-noise injection (src/noise/): rates, maps, the instance-noise reference,
determinism, config checks, CIFAR-10N files, records and metrics."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from scipy.special import softmax

from src import noise as noise_lib
from src.errors import ConfigError
from src.noise import (
    CIFAR100_COARSE,
    NOISE_KEYS,
    NOISE_MODELS,
    asymmetric_map,
    check_noise_config,
    cifar100_consecutive_map,
    cifar100_superclass_map,
    inject_noise,
    noise_metrics,
    read_label_file,
    save_noise,
    transition_matrix,
)

REAL_FILE = Path("/work/shared/data/CIFAR-10_human.pt")
CONF_NOISE = Path(__file__).resolve().parents[1] / "conf" / "noise"
K = 10


def balanced(per_class: int, k: int = K, seed: int = 0) -> np.ndarray:
    """Shuffled labels with exactly per_class samples of each class."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), per_class))


def uneven(seed: int = 0) -> np.ndarray:
    """Shuffled labels with class c holding 30 + 17 * c samples (counts not multiples of 10)."""
    return np.random.default_rng(seed).permutation(
        np.repeat(np.arange(K), [30 + 17 * c for c in range(K)]))


def images_for(n: int, seed: int, shape: tuple[int, ...] = (6, 6, 3), high: int = 256):
    """Random uint8 images (N, *shape) with pixel values in [0, high)."""
    return np.random.default_rng(seed).integers(0, high, size=(n, *shape), dtype=np.uint8)


def noisy(labels, name, rate=0.4, seed=0, dataset="cifar10", images=None, k=K, **extra):
    """inject_noise with a plain-dict config."""
    cfg = {"name": name, "rate": rate, "seed": seed, **extra}
    return inject_noise(labels, k, cfg, dataset=dataset, images=images)


def test_package_keeps_the_public_api() -> None:
    for name in ("inject_noise", "save_noise", "noise_metrics", "NOISE_MODELS", "NoiseResult",
                 "read_label_file", "asymmetric_map", "cifar100_superclass_map",
                 "NOISE_KEYS", "check_noise_config"):
        assert hasattr(noise_lib, name), name
    assert NOISE_MODELS == ("none", "symmetric", "asymmetric", "pairflip", "instance", "human")
    assert set(NOISE_KEYS) == set(NOISE_MODELS)


# --------------------------------------------------------------------------- symmetric


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.37, 0.9])
def test_symmetric_fixed_count_never_keeps_true_label(rate: float) -> None:
    labels = balanced(100)
    res = noisy(labels, "symmetric", rate=rate, include_true_class=False)
    assert res.corrupted.sum() == math.floor(rate * labels.size + 0.5)  # every chosen one moved
    assert res.realized_rate == pytest.approx(round(rate * labels.size) / labels.size)
    np.testing.assert_array_equal(res.true_labels, labels)


def test_symmetric_targets_cover_all_other_classes() -> None:
    res = noisy(balanced(200), "symmetric", rate=0.5, include_true_class=False)
    offsets = (res.given_labels - res.true_labels)[res.corrupted] % K
    counts = np.bincount(offsets, minlength=K)
    assert counts[0] == 0 and (counts[1:] > 50).all()  # 1000 draws over 9 offsets, ~111 each


@pytest.mark.parametrize("rate", [0.4, 1.0])
def test_symmetric_include_true_class_rate_is_scaled(rate: float) -> None:
    labels = balanced(500)
    res = noisy(labels, "symmetric", rate=rate, include_true_class=True)
    chosen = round(rate * labels.size)  # relabelled uniformly over all K classes
    mean, sd = chosen * (K - 1) / K, math.sqrt(chosen * (K - 1) / K / K)
    assert abs(res.corrupted.sum() - mean) < 4 * sd
    assert res.corrupted.sum() < chosen


@pytest.mark.parametrize("k", [2, 3, 10])
def test_symmetric_rate_up_to_k_minus_one_over_k(k: int) -> None:
    labels = balanced(30, k=k)
    top = (k - 1) / k
    assert noisy(labels, "symmetric", rate=top, k=k).realized_rate == pytest.approx(top, abs=0.02)
    with pytest.raises(ConfigError, match=r"\(K-1\)/K") as info:
        noisy(labels, "symmetric", rate=top + 0.01, k=k)
    assert str(info.value).startswith("noise.rate=") and "include_true_class" in str(info.value)


def test_labels_not_modified_in_place() -> None:
    labels = balanced(20)
    before = labels.copy()
    noisy(labels, "symmetric", rate=0.9)
    np.testing.assert_array_equal(labels, before)


def test_none_changes_nothing() -> None:
    res = noisy(balanced(20), "none", rate=0.0)
    assert res.realized_rate == 0.0 and not res.corrupted.any()
    assert res.given_labels.dtype == np.int64 and res.corrupted.dtype == bool


# --------------------------------------------------------------------------- asymmetric


def test_asymmetric_published_maps() -> None:
    assert asymmetric_map("cifar10", 10) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    mnist = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    assert asymmetric_map("mnist", 10) == mnist
    assert asymmetric_map("digits", 10) == mnist


@pytest.mark.parametrize("dataset", ["fashion_mnist", "svhn", "npz"])
def test_asymmetric_without_published_map_points_to_pairflip(dataset: str) -> None:
    with pytest.raises(ConfigError) as info:
        noisy(balanced(10), "asymmetric", rate=0.2, dataset=dataset)
    msg = str(info.value)
    assert msg.startswith("noise.name='asymmetric'") and "pairflip" in msg and dataset in msg
    for name in ("cifar10", "cifar100", "mnist", "digits"):
        assert name in msg


def test_cifar100_consecutive_blocks_are_the_default() -> None:
    m = asymmetric_map("cifar100", 100)
    assert m == cifar100_consecutive_map()
    for fine in range(100):
        assert m[fine] // 5 == fine // 5 and m[fine] != fine  # stays in its block of five
    assert [m[0], m[1], m[4], m[95], m[99]] == [1, 2, 0, 96, 95]


def test_cifar100_superclass_map_cycles_within_superclass() -> None:
    coarse = np.asarray(CIFAR100_COARSE)
    assert coarse.shape == (100,) and (np.bincount(coarse) == 5).all()
    m = asymmetric_map("cifar100", 100, groups="superclass")
    assert m == cifar100_superclass_map()
    assert sorted(m) == list(range(100)) and sorted(m.values()) == list(range(100))
    for fine in range(100):
        assert coarse[m[fine]] == coarse[fine] and m[fine] != fine
        orbit = [fine]
        for _ in range(5):
            orbit.append(m[orbit[-1]])
        assert orbit[5] == fine and len(set(orbit[:5])) == 5  # one 5-cycle per superclass
    # Aquatic mammals (coarse 0): beaver 4, dolphin 30, otter 55, seal 72, whale 95.
    assert [m[4], m[30], m[55], m[72], m[95]] == [30, 55, 72, 95, 4]
    consecutive = cifar100_consecutive_map()
    assert sum(m[c] != consecutive[c] for c in range(100)) == 96


@pytest.mark.parametrize("groups", ["consecutive", "superclass"])
def test_cifar100_asymmetric_follows_groups(groups: str) -> None:
    labels = balanced(20, k=100)
    res = noisy(labels, "asymmetric", rate=0.3, dataset="cifar100", k=100, groups=groups)
    mapping = asymmetric_map("cifar100", 100, groups)
    moved = res.corrupted
    np.testing.assert_array_equal(res.given_labels[moved], [mapping[c] for c in labels[moved]])
    assert moved.sum() == 100 * 6  # round(0.3 * 20) per class


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_asymmetric_flips_exact_count_only_to_partner(dataset: str) -> None:
    labels = uneven()
    mapping = asymmetric_map(dataset, K)
    res = noisy(labels, "asymmetric", rate=0.3, dataset=dataset)
    tm = res.transition_matrix
    for c in range(K):
        n_c = int((labels == c).sum())
        flipped = n_c - tm[c, c]
        if c in mapping:
            assert flipped == math.floor(0.3 * n_c + 0.5)
            assert tm[c, mapping[c]] == flipped  # every flip goes to the partner
        else:
            assert flipped == 0


def test_pairflip_exact_count_to_next_class() -> None:
    labels = uneven()
    res = noisy(labels, "pairflip", rate=0.45)
    moved = res.corrupted
    np.testing.assert_array_equal(res.given_labels[moved], (labels[moved] + 1) % K)
    for c in range(K):
        n_c = int((labels == c).sum())
        assert res.corrupted[labels == c].sum() == math.floor(0.45 * n_c + 0.5)


@pytest.mark.parametrize("name", ["asymmetric", "pairflip"])
def test_partner_flips_stay_below_half(name: str) -> None:
    labels = uneven()
    noisy(labels, name, rate=0.4999)  # just below the limit is accepted
    res = noisy(labels, name, rate=0.45)
    for c in np.unique(labels):
        row = res.transition_matrix[c]
        assert row[c] > row.sum() - row[c]  # the true label stays the majority of its class
    for rate in (0.5, 0.8, 1.0):
        with pytest.raises(ConfigError, match=r"noise.rate=.*\[0, 0.5\)"):
            noisy(labels, name, rate=rate)


def test_asymmetric_wrong_class_count_is_config_error() -> None:
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        asymmetric_map("cifar10", 100)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_groups_other_than_consecutive_only_on_cifar100(dataset: str) -> None:
    with pytest.raises(ConfigError, match="noise.groups='superclass'.*cifar100"):
        noisy(balanced(10), "asymmetric", rate=0.2, dataset=dataset, groups="superclass")


# --------------------------------------------------------------------------- matrices


def test_transition_matrix_counts_pairs() -> None:
    labels = uneven()
    res = noisy(labels, "symmetric", rate=0.5)
    tm = res.transition_matrix
    assert tm.dtype == np.int64 and tm.shape == (K, K)
    np.testing.assert_array_equal(tm.sum(axis=1), np.bincount(labels, minlength=K))
    expected = np.zeros((K, K), dtype=np.int64)
    for t, g in zip(res.true_labels, res.given_labels):
        expected[t, g] += 1
    np.testing.assert_array_equal(tm, expected)
    assert tm.sum() - np.trace(tm) == res.corrupted.sum()


def test_transition_matrix_hand_example() -> None:
    tm = transition_matrix(np.array([0, 0, 1, 2]), np.array([0, 2, 1, 1]), 3)
    np.testing.assert_array_equal(tm, [[1, 0, 1], [0, 1, 0], [0, 1, 0]])


# --------------------------------------------------------------------------- determinism

SEEDED = ["symmetric", "asymmetric", "pairflip", "instance"]


@pytest.mark.parametrize("name", SEEDED)
def test_same_seed_same_labels_different_seed_different(name: str) -> None:
    labels, images = balanced(50), images_for(500, 0)
    a = noisy(labels, name, seed=3, images=images).given_labels
    b = noisy(labels, name, seed=3, images=images).given_labels
    c = noisy(labels, name, seed=4, images=images).given_labels
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("name", ["symmetric", "instance"])
def test_independent_of_global_rng_state(name: str) -> None:
    labels, images = balanced(50), images_for(500, 0)
    runs = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        state = np.random.get_state()[1].copy()
        runs.append(noisy(labels, name, seed=0, images=images).given_labels)
        np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched
    np.testing.assert_array_equal(runs[0], runs[1])


# --------------------------------------------------------------------------- instance


def reference_instance_labels(labels, feats, k, rate, norm_std, seed):
    """Xia et al.'s generator written out sample by sample, as their code runs it.

    np.random.seed(seed); flip rates from scipy's truncnorm; W = randn(K, D, K); for every
    sample the row q * softmax(x . W[y]) with the true class masked, plus 1 - q on the true
    class; then one np.random.choice per sample. `feats` are the (N, D) features the
    generator sees: the authors hand it their stored uint8 arrays as floats.
    """
    rs = np.random.RandomState(seed)
    dist = stats.truncnorm((0 - rate) / norm_std, (1 - rate) / norm_std, loc=rate,
                           scale=norm_std)
    flip_rate = dist.rvs(labels.shape[0], random_state=rs)
    w = rs.randn(k, feats.shape[1], k)
    rows = []
    for i, (x, y) in enumerate(zip(feats, labels)):
        a = x @ w[y]
        a[y] = -np.inf
        a = flip_rate[i] * softmax(a)
        a[y] += 1 - flip_rate[i]
        rows.append(a)
    return np.array([rs.choice(k, p=p) for p in rows])


def channels_first_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C*H*W) float: the authors' CIFAR-10 / SVHN array layout."""
    return images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1).astype(np.float64)


@pytest.mark.parametrize(("shape", "high"), [
    ((6, 6, 3), 256),  # raw 8-bit pixels: large projections, near one-hot rows
    ((2, 2, 1), 3),  # small values: soft rows, every part of the mixture matters
])
@pytest.mark.parametrize(("rate", "seed"), [(0.05, 0), (0.4, 1), (0.9, 2)])
def test_instance_matches_reference_algorithm(shape, high, rate, seed) -> None:
    labels, images = balanced(40), images_for(400, seed + 10, shape, high)
    res = noisy(labels, "instance", rate=rate, seed=seed, images=images, norm_std=0.1)
    expected = reference_instance_labels(labels, channels_first_features(images), K, rate,
                                         0.1, seed)
    np.testing.assert_array_equal(res.given_labels, expected)
    assert res.corrupted.any()


def test_instance_unit_scaling_matches_reference_on_unit_rows() -> None:
    labels, images = balanced(40), images_for(400, 3)
    feats = channels_first_features(images)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    res = noisy(labels, "instance", rate=0.4, seed=5, images=images,
                feature_scaling="unit")
    expected = reference_instance_labels(labels, feats, K, 0.4, 0.1, 5)
    np.testing.assert_array_equal(res.given_labels, expected)


def test_instance_raw_pixels_concentrate_flips_unit_scaling_spreads_them() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()  # real 8x8 images, offline; the suite stores them as uint8 0..255
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)

    def top_wrong_share(scaling: str) -> float:
        res = noisy(labels, "instance", rate=0.4, images=images, dataset="digits",
                    feature_scaling=scaling)
        wrong = res.transition_matrix.astype(float)
        np.fill_diagonal(wrong, 0)
        return float((wrong.max(axis=1) / wrong.sum(axis=1)).mean())

    # Raw pixels: a class's flips gather on one wrong class; unit rows: they spread out.
    assert top_wrong_share("none") > 0.6
    assert top_wrong_share("unit") < 0.45


def test_instance_rate_near_request_and_depends_on_images() -> None:
    labels = balanced(300)
    n, rate = labels.size, 0.3
    res = noisy(labels, "instance", rate=rate, images=images_for(n, 0), norm_std=0.1)
    assert abs(res.realized_rate - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    other = noisy(labels, "instance", rate=rate, images=images_for(n, 1), norm_std=0.1)
    assert (res.given_labels != other.given_labels).any()


def test_instance_rate_zero_still_flips_through_the_truncated_normal() -> None:
    labels = balanced(300)
    res = noisy(labels, "instance", rate=0.0, images=images_for(3000, 0), norm_std=0.1)
    expected = 0.1 * math.sqrt(2 / math.pi)  # mean of a half-normal with sd 0.1
    assert abs(res.realized_rate - expected) < 4 * math.sqrt(expected / labels.size)


def test_instance_extreme_rates_without_spread() -> None:
    labels, images = balanced(30), images_for(300, 0)
    assert noisy(labels, "instance", rate=1.0, images=images, norm_std=0.0).corrupted.all()
    assert not noisy(labels, "instance", rate=0.0, images=images, norm_std=0.0).corrupted.any()


def test_instance_grayscale_images_work() -> None:
    gray = images_for(300, 0)[..., 0]
    res = noisy(balanced(30), "instance", rate=0.5, images=gray)
    assert 0.3 < res.realized_rate < 0.7


@pytest.mark.parametrize("images", [None, np.zeros((5, 4, 4, 3), np.uint8),
                                    np.zeros((100, 2, 2, 2, 3), np.uint8),
                                    np.full((100, 4), "x")])
def test_instance_bad_images_are_config_errors(images) -> None:
    with pytest.raises(ConfigError, match="noise.name='instance'"):
        noisy(balanced(10), "instance", images=images)


# --------------------------------------------------------------------------- config checks


def cfg_of(name: str, **values) -> dict:
    return {"name": name, **NOISE_KEYS[name], **values}


@pytest.mark.parametrize(("cfg", "key"), [
    ({"name": "symmetric", "rate": -0.1, "seed": 0}, "noise.rate"),
    ({"name": "symmetric", "rate": 1.5, "seed": 0, "include_true_class": True}, "noise.rate"),
    ({"name": "symmetric", "rate": float("nan"), "seed": 0}, "noise.rate"),
    ({"name": "instance", "rate": float("inf"), "seed": 0}, "noise.rate"),
    ({"name": "symmetric", "rate": "0.2", "seed": 0}, "noise.rate"),
    ({"name": "symmetric", "rate": True, "seed": 0}, "noise.rate"),
    ({"name": "none", "rate": 0.2, "seed": 0}, "noise.rate"),
    ({"name": "gaussian", "rate": 0.2, "seed": 0}, "noise.name"),
    ({"name": None}, "noise.name"),
    ({"name": "symmetric", "rate": 0.2, "seed": 0, "norm_std": 0.1}, "noise.norm_std"),
    ({"name": "pairflip", "rate": 0.2, "seed": 0, "include_true_class": True},
     "noise.include_true_class"),
    ({"name": "pairflip", "rate": 0.2, "seed": 0, "groups": "consecutive"}, "noise.groups"),
    ({"name": "instance", "rate": 0.2, "seed": 0, "groups": "consecutive"}, "noise.groups"),
    ({"name": "symmetric", "rate": 0.2, "seed": 0, "include_true_class": "yes"},
     "noise.include_true_class"),
    ({"name": "instance", "rate": 0.2, "seed": 0, "norm_std": -1.0}, "noise.norm_std"),
    ({"name": "instance", "rate": 0.2, "seed": 0, "norm_std": float("inf")}, "noise.norm_std"),
    ({"name": "instance", "rate": 0.2, "seed": 0, "norm_std": "wide"}, "noise.norm_std"),
    ({"name": "instance", "rate": 0.2, "seed": 0, "feature_scaling": "standard"},
     "noise.feature_scaling"),
    ({"name": "asymmetric", "rate": 0.2, "seed": 0, "groups": "random"}, "noise.groups"),
    ({"name": "symmetric", "rate": 0.2, "seed": 1.5}, "noise.seed"),
    ({"name": "symmetric", "rate": 0.2, "seed": -1}, "noise.seed"),
    ({"name": "symmetric", "rate": 0.2, "seed": 2**32}, "noise.seed"),
    ({"name": "human", "rate": 0.0, "seed": 0, "label_set": "best", "file": "x.pt"},
     "noise.label_set"),
    ({"name": "human", "rate": 0.0, "seed": 0, "label_set": "worse"}, "noise.file"),
])
def test_bad_config_names_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_noise_config(cfg, K, "cifar10")
    assert str(info.value).startswith(key + "=")
    with pytest.raises(ConfigError) as info:  # injection runs the same checks
        inject_noise(balanced(10), K, cfg, dataset="cifar10", images=images_for(100, 0))
    assert str(info.value).startswith(key + "=")


def test_unknown_key_error_lists_the_models_keys() -> None:
    with pytest.raises(ConfigError) as info:
        check_noise_config(cfg_of("instance", norm_sd=0.1), K, "cifar10")
    msg = str(info.value)
    assert msg.startswith("noise.norm_sd=") and "norm_std" in msg and "feature_scaling" in msg


def test_human_needs_ten_classes(tmp_path: Path) -> None:
    path = write_human(tmp_path, human_arrays(), "pt")
    with pytest.raises(ConfigError, match="dataset.num_classes=100"):
        check_noise_config(cfg_of("human", file=str(path), label_set="worse"), 100, "cifar100")


@pytest.mark.parametrize("path", sorted(CONF_NOISE.glob("*.yaml")), ids=lambda p: p.stem)
def test_conf_files_list_every_key_and_pass_the_checks(path: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    name = cfg["name"]
    assert path.stem == name and set(cfg) == {"name", *NOISE_KEYS[name]}
    for key, default in NOISE_KEYS[name].items():
        if key not in ("rate", "file", "label_set"):
            assert cfg[key] == default, key  # the file shows the code's default
    if name == "human":
        cfg["file"] = str(write_human(tmp_path, human_arrays(), "pt"))
    dataset = "digits"
    check_noise_config(cfg, K, dataset)
    check_noise_config(OmegaConf.create(cfg), K, dataset)  # DictConfig as the runs pass it


# --------------------------------------------------------------------------- human


def human_arrays(n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """A small CIFAR-10N-style label dict: clean labels plus the five noisy label sets."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, K, size=n)
    out = {"clean_label": clean}
    for key in ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"):
        out[key] = np.where(rng.random(n) < 0.3, rng.integers(0, K, size=n), clean)
    return out


def write_human(tmp_path: Path, arrays: dict, fmt: str) -> Path:
    """Save arrays in the authors' format (.pt of numpy arrays), as tensors, or as .npz."""
    if fmt == "npz":
        path = tmp_path / "labels.npz"
        np.savez(path, **arrays)
    else:
        path = tmp_path / "CIFAR-10_human.pt"
        if fmt == "tensor":
            arrays = {key: torch.from_numpy(value) for key, value in arrays.items()}
        torch.save(arrays, path)
    return path


@pytest.mark.parametrize("fmt", ["pt", "tensor", "npz"])
@pytest.mark.parametrize(("label_set", "key"), [("worse", "worse_label"),
                                                ("random2", "random_label2")])
def test_human_reads_file(tmp_path: Path, fmt: str, label_set: str, key: str) -> None:
    arrays = human_arrays()
    path = write_human(tmp_path, arrays, fmt)
    res = noisy(arrays["clean_label"], "human", rate=0.0, file=str(path), label_set=label_set)
    np.testing.assert_array_equal(res.given_labels, arrays[key])
    assert res.realized_rate == pytest.approx(np.mean(arrays[key] != arrays["clean_label"]))


def test_human_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError) as info:
        noisy(np.zeros(40, int), "human", rate=0.0, file=str(missing), label_set="worse")
    assert str(info.value).startswith("noise.file=") and str(missing) in str(info.value)


def test_human_unknown_label_set(tmp_path: Path) -> None:
    path = write_human(tmp_path, human_arrays(), "pt")
    with pytest.raises(ConfigError) as info:
        noisy(np.zeros(40, int), "human", rate=0.0, file=str(path), label_set="best")
    assert "noise.label_set" in str(info.value) and "random3" in str(info.value)


def _truncated(tmp_path: Path, fmt: str) -> Path:
    """A valid label file cut to half its bytes."""
    path = write_human(tmp_path, human_arrays(), fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _raw(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _with(arrays_change, fmt: str = "pt"):
    """A file writer that saves human_arrays() after arrays_change(arrays)."""
    def make(tmp_path: Path) -> Path:
        arrays = human_arrays()
        arrays_change(arrays)
        return write_human(tmp_path, arrays, fmt)
    return make


def _npy(tmp_path: Path) -> Path:
    path = tmp_path / "labels.npy"
    np.save(path, human_arrays()["worse_label"])
    return path


def _npy_named_npz(tmp_path: Path) -> Path:
    path = tmp_path / "labels.npz"
    with path.open("wb") as f:
        np.save(f, human_arrays()["worse_label"])
    return path


def _pickled_npz(tmp_path: Path) -> Path:
    arrays = human_arrays()
    arrays["worse_label"] = np.array([{"a": 1}] * 40, dtype=object)
    path = tmp_path / "labels.npz"
    np.savez(path, **arrays)
    return path


def _zip_named_pt(tmp_path: Path) -> Path:
    path = tmp_path / "labels.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.txt", "not a torch file")
    return path


def _list_pt(tmp_path: Path) -> Path:
    path = tmp_path / "labels.pt"
    torch.save([1, 2, 3], path)
    return path


BAD_FILES = {
    "text .pt": lambda p: _raw(p, "labels.pt", b"clean_label,worse_label\n1,2\n"),
    "text .npz": lambda p: _raw(p, "labels.npz", b"clean_label,worse_label\n1,2\n"),
    "empty .pt": lambda p: _raw(p, "labels.pt", b""),
    "empty .npz": lambda p: _raw(p, "labels.npz", b""),
    "truncated .pt": lambda p: _truncated(p, "pt"),
    "truncated .npz": lambda p: _truncated(p, "npz"),
    ".npy file": _npy,
    ".npy named .npz": _npy_named_npz,
    "pickled objects in .npz": _pickled_npz,
    "zip that is no torch file": _zip_named_pt,
    "a list, not a dict": _list_pt,
    "no such suffix": lambda p: _raw(p, "labels.csv", b"1,2\n"),
    "directory": lambda p: p,
    "missing label set key": _with(lambda a: a.pop("worse_label")),
    "missing clean_label": _with(lambda a: a.pop("clean_label"), "npz"),
    "wrong length": _with(lambda a: a.update(worse_label=a["worse_label"][:39])),
    "clean labels of another length": _with(lambda a: a.update(clean_label=a["clean_label"][1:])),
    "float labels": _with(lambda a: a.update(worse_label=a["worse_label"].astype(np.float64))),
    "float labels in .npz": _with(lambda a: a.update(worse_label=a["worse_label"] + 0.5), "npz"),
    "bool labels": _with(lambda a: a.update(worse_label=a["worse_label"] > 4)),
    "2-D labels": _with(lambda a: a.update(worse_label=a["worse_label"].reshape(4, 10))),
    "label out of range": _with(lambda a: a["worse_label"].__setitem__(3, K)),
    "negative label": _with(lambda a: a["worse_label"].__setitem__(3, -1)),
    "clean labels of another order": _with(
        lambda a: a.update(clean_label=np.roll(a["clean_label"], 1))),
    "strings, not labels": _with(lambda a: a.update(worse_label=np.array(["cat"] * 40))),
}


@pytest.mark.parametrize("make", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_label_file_is_config_error(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    labels = human_arrays()["clean_label"]
    assert not np.array_equal(np.roll(labels, 1), labels)  # the order case is a real change
    with pytest.raises(ConfigError) as info:
        noisy(labels, "human", rate=0.0, file=str(path), label_set="worse")
    msg = str(info.value)
    assert msg.startswith("noise.file=") and str(path) in msg and "\n" not in msg


def test_human_file_with_other_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"clean_label": Path("x")}, path)  # a non-array global: refused, never built
    with pytest.raises(ConfigError, match="noise.file"):
        read_label_file(path)


@pytest.mark.skipif(not REAL_FILE.is_file(), reason="CIFAR-10N file not on this machine")
@pytest.mark.parametrize(("label_set", "rate"), [("worse", 0.4021), ("aggre", 0.0901),
                                                 ("random1", 0.1723)])
def test_real_cifar10n_rates(label_set: str, rate: float) -> None:
    clean = np.asarray(read_label_file(REAL_FILE)["clean_label"])
    res = noisy(clean, "human", rate=0.0, file=str(REAL_FILE), label_set=label_set)
    assert res.realized_rate == pytest.approx(rate, abs=5e-5)
    assert res.given_labels.size == 50_000


# --------------------------------------------------------------------------- records, metrics


def test_noise_metrics_hand_example() -> None:
    true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    given = np.array([0, 1, 2, 3, 1, 2, 3, 0])  # last four corrupted
    pred = np.array([0, 1, 0, 3, 1, 1, 0, 0])
    m = noise_metrics(pred, given, true)
    assert m["train_acc_clean_subset"] == pytest.approx(3 / 4)  # 0, 1, 3 right; 2 wrong
    assert m["memorized"] == pytest.approx(2 / 4)  # predicted 1 and 0: the corrupted labels
    assert m["recovered"] == pytest.approx(1 / 4)  # predicted 1: the true label


def test_noise_metrics_none_when_empty() -> None:
    labels = np.array([0, 1, 2])
    clean = noise_metrics(labels, labels, labels)
    assert clean["memorized"] is None and clean["recovered"] is None
    assert clean["train_acc_clean_subset"] == 1.0
    allbad = noise_metrics(labels, (labels + 1) % 3, labels)
    assert allbad["train_acc_clean_subset"] is None and allbad["recovered"] == 1.0


def test_save_noise_writes_both_files(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"name": "symmetric", "rate": 0.3, "seed": 7,
                            "include_true_class": False})
    res = inject_noise(balanced(20), K, cfg, dataset="cifar10")
    save_noise(res, tmp_path / "run", cfg)
    record = json.loads((tmp_path / "run" / "noise.json").read_text())
    assert set(record) == {"realized_rate", "transition_matrix", "noise", "num_samples",
                           "num_corrupted"}
    assert record["realized_rate"] == pytest.approx(0.3)
    assert record["noise"] == {"name": "symmetric", "rate": 0.3, "seed": 7,
                               "include_true_class": False}
    assert record["num_samples"] == 200 and record["num_corrupted"] == 60
    np.testing.assert_array_equal(record["transition_matrix"], res.transition_matrix)
    with np.load(tmp_path / "run" / "noise_labels.npz") as z:
        assert set(z.files) == {"given_labels", "true_labels", "corrupted"}
        np.testing.assert_array_equal(z["given_labels"], res.given_labels)
        np.testing.assert_array_equal(z["corrupted"], res.corrupted)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "noise.json", "noise_labels.npz"]  # no temporary files left behind
