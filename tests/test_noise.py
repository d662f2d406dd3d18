"""Tests of label-noise injection (src/noise.py): rates, maps, determinism, files, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from src.errors import ConfigError
from src.noise import (
    CIFAR100_COARSE,
    NOISE_MODELS,
    asymmetric_map,
    inject_noise,
    noise_metrics,
    read_label_file,
    save_noise,
    transition_matrix,
)

REAL_FILE = Path("/work/shared/data/CIFAR-10_human.pt")
K = 10


def balanced(per_class: int, k: int = K, seed: int = 0) -> np.ndarray:
    """Shuffled labels with exactly per_class samples of each class."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), per_class))


def uneven(seed: int = 0) -> np.ndarray:
    """Shuffled labels with class c holding 30 + 17 * c samples (counts not multiples of 10)."""
    return np.random.default_rng(seed).permutation(
        np.repeat(np.arange(K), [30 + 17 * c for c in range(K)]))


def images_for(n: int, seed: int) -> np.ndarray:
    """Random uint8 images (N, 6, 6, 3)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 6, 6, 3), dtype=np.uint8)


def noisy(labels, name, rate=0.4, seed=0, dataset="cifar10", images=None, **extra):
    """inject_noise with a plain-dict config."""
    cfg = {"name": name, "rate": rate, "seed": seed, **extra}
    return inject_noise(labels, K, cfg, dataset=dataset, images=images)


# --------------------------------------------------------------------------- symmetric


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.37, 1.0])
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


def test_symmetric_include_true_class_rate_is_scaled() -> None:
    labels = balanced(500)
    res = noisy(labels, "symmetric", rate=0.4, include_true_class=True)
    chosen = 2000  # round(0.4 * 5000) relabelled uniformly over all K classes
    mean, sd = chosen * (K - 1) / K, math.sqrt(chosen * (K - 1) / K / K)
    assert abs(res.corrupted.sum() - mean) < 4 * sd
    assert res.corrupted.sum() < chosen


def test_labels_not_modified_in_place() -> None:
    labels = balanced(20)
    before = labels.copy()
    noisy(labels, "symmetric", rate=1.0)
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
    for other in ("fashion_mnist", "svhn", "npz"):
        assert asymmetric_map(other, 7) == {i: (i + 1) % 7 for i in range(7)}


def test_cifar100_map_cycles_within_superclass() -> None:
    coarse = np.asarray(CIFAR100_COARSE)
    assert coarse.shape == (100,) and (np.bincount(coarse) == 5).all()
    m = asymmetric_map("cifar100", 100)
    assert sorted(m) == list(range(100)) and sorted(m.values()) == list(range(100))
    for fine in range(100):
        assert coarse[m[fine]] == coarse[fine] and m[fine] != fine
        orbit = [fine]
        for _ in range(5):
            orbit.append(m[orbit[-1]])
        assert orbit[5] == fine and len(set(orbit[:5])) == 5  # one 5-cycle per superclass
    # Aquatic mammals (coarse 0): beaver 4, dolphin 30, otter 55, seal 72, whale 95.
    assert [m[4], m[30], m[55], m[72], m[95]] == [30, 55, 72, 95, 4]


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "fashion_mnist"])
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


def test_asymmetric_wrong_class_count_is_config_error() -> None:
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        asymmetric_map("cifar10", 100)


# --------------------------------------------------------------------------- matrices


def test_transition_matrix_counts_pairs() -> None:
    labels = uneven()
    res = noisy(labels, "symmetric", rate=0.5)
    tm = res.transition_matrix
    assert tm.dtype == np.int64 and tm.shape == (K, K)
    np.testing.assert_array_equal(tm.sum(axis=1), np.bincount(labels, minlength=K))
    np.testing.assert_allclose((tm / tm.sum(axis=1, keepdims=True)).sum(axis=1), 1.0)
    expected = np.zeros((K, K), dtype=np.int64)
    for t, g in zip(res.true_labels, res.given_labels):
        expected[t, g] += 1
    np.testing.assert_array_equal(tm, expected)
    assert tm.sum() - np.trace(tm) == res.corrupted.sum()


def test_transition_matrix_hand_example() -> None:
    tm = transition_matrix(np.array([0, 0, 1, 2]), np.array([0, 2, 1, 1]), 3)
    np.testing.assert_array_equal(tm, [[1, 0, 1], [0, 1, 0], [0, 1, 0]])


# --------------------------------------------------------------------------- determinism

SEEDED = [("symmetric", {}), ("asymmetric", {}), ("pairflip", {}), ("instance", {})]


@pytest.mark.parametrize(("name", "extra"), SEEDED)
def test_same_seed_same_labels_different_seed_different(name: str, extra: dict) -> None:
    labels, images = balanced(50), images_for(500, 0)
    a = noisy(labels, name, seed=3, images=images, **extra).given_labels
    b = noisy(labels, name, seed=3, images=images, **extra).given_labels
    c = noisy(labels, name, seed=4, images=images, **extra).given_labels
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


def test_instance_rate_near_request_and_depends_on_images() -> None:
    labels = balanced(300)
    n, rate = labels.size, 0.3
    res = noisy(labels, "instance", rate=rate, images=images_for(n, 0), norm_std=0.1)
    assert abs(res.realized_rate - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    other = noisy(labels, "instance", rate=rate, images=images_for(n, 1), norm_std=0.1)
    assert (res.given_labels != other.given_labels).any()


def test_instance_extreme_rates_without_spread() -> None:
    labels, images = balanced(30), images_for(300, 0)
    assert noisy(labels, "instance", rate=1.0, images=images, norm_std=0.0).corrupted.all()
    assert not noisy(labels, "instance", rate=0.0, images=images, norm_std=0.0).corrupted.any()


def test_instance_grayscale_images_work() -> None:
    gray = images_for(300, 0)[..., 0]
    res = noisy(balanced(30), "instance", rate=0.5, images=gray)
    assert 0.3 < res.realized_rate < 0.7


def test_instance_without_images_is_config_error() -> None:
    with pytest.raises(ConfigError, match="noise.name"):
        noisy(balanced(10), "instance", images=None)


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


def human_error(tmp_path: Path, arrays: dict, labels: np.ndarray, **cfg) -> str:
    """The message of the ConfigError that human noise raises for this file and config."""
    path = write_human(tmp_path, arrays, "pt")
    cfg = {"file": str(path), "label_set": "worse", **cfg}
    with pytest.raises(ConfigError) as info:
        noisy(labels, "human", rate=0.0, **cfg)
    return str(info.value)


def test_human_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    msg = human_error(tmp_path, human_arrays(), np.zeros(40, int), file=str(missing))
    assert "noise.file" in msg and str(missing) in msg


def test_human_unknown_label_set(tmp_path: Path) -> None:
    msg = human_error(tmp_path, human_arrays(), np.zeros(40, int), label_set="best")
    assert "noise.label_set" in msg and "aggre" in msg and "random3" in msg


def test_human_size_mismatch(tmp_path: Path) -> None:
    arrays = human_arrays(40)
    msg = human_error(tmp_path, arrays, arrays["clean_label"][:30])
    assert "noise.file" in msg and "30 labels" in msg and "holds 40" in msg


def test_human_clean_label_mismatch(tmp_path: Path) -> None:
    arrays = human_arrays(40)
    shifted = (arrays["clean_label"] + 1) % K
    msg = human_error(tmp_path, arrays, shifted)
    assert "noise.file" in msg and "clean_label" in msg


def test_human_label_out_of_range(tmp_path: Path) -> None:
    arrays = human_arrays(40)
    arrays["worse_label"][3] = K
    assert "noise.file" in human_error(tmp_path, arrays, arrays["clean_label"])


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


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(("cfg", "key"), [
    ({"name": "symmetric", "rate": -0.1, "seed": 0}, "noise.rate"),
    ({"name": "symmetric", "rate": 1.5, "seed": 0}, "noise.rate"),
    ({"name": "symmetric", "rate": float("nan"), "seed": 0}, "noise.rate"),
    ({"name": "gaussian", "rate": 0.2, "seed": 0}, "noise.name"),
    ({"name": "symmetric", "rate": 0.2, "seed": 0, "norm_std": 0.1}, "noise.norm_std"),
    ({"name": "pairflip", "rate": 0.2, "seed": 0, "include_true_class": True},
     "noise.include_true_class"),
    ({"name": "symmetric", "rate": 0.2, "seed": 0, "include_true_class": "yes"},
     "noise.include_true_class"),
    ({"name": "instance", "rate": 0.2, "seed": 0, "norm_std": -1.0}, "noise.norm_std"),
    ({"name": "symmetric", "rate": 0.2, "seed": 1.5}, "noise.seed"),
])
def test_bad_config_names_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        inject_noise(balanced(10), K, cfg, dataset="cifar10", images=images_for(100, 0))
    assert str(info.value).startswith(key + "=")


def test_every_model_is_listed() -> None:
    assert NOISE_MODELS == ("none", "symmetric", "asymmetric", "pairflip", "instance", "human")


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
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"name": "symmetric", "rate": 0.3, "seed": 7,
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
