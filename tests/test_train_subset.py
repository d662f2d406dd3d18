"""dataset.train_subset: a random part of the training set, drawn after the noise and before
the validation split, from its own seed or the noise seed; refused when it cannot be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.config import ADDED_KEYS
from src.config.validate import validate
from src.data.subset import subset_indices, subset_size
from src.data.tensors import prepare_data
from src.errors import ConfigError
from src.run.identity import fingerprint
from src.train import train
from tests.conftest import TINY, make_cfg


def test_a_count_and_a_fraction_keep_that_many_images():
    assert subset_size({"train_subset": None}, 1000) is None
    assert subset_size({"train_subset": 300}, 1000) == 300
    assert subset_size({"train_subset": 0.25}, 1000) == 250


def test_the_subset_follows_the_noise_seed_unless_it_has_its_own():
    follow = {"train_subset": 100, "train_subset_seed": None}
    a, b = subset_indices(follow, 1000, 0), subset_indices(follow, 1000, 1)
    assert len(a) == 100 and np.all(np.diff(a) > 0) and not np.array_equal(a, b)
    own = {"train_subset": 100, "train_subset_seed": 7}
    assert np.array_equal(subset_indices(own, 1000, 0), subset_indices(own, 1000, 1))
    assert subset_indices({"train_subset": None, "train_subset_seed": None}, 1000, 0) is None


@pytest.mark.parametrize("value", [0, -3, 1.0, 0.0, 1.5, "half", True])
def test_bad_subsets_are_refused_by_validation(value):
    with pytest.raises(ConfigError, match="dataset.train_subset"):
        validate(make_cfg([f"dataset.train_subset={value}"], run_dir=Path("unused")))


def test_a_subset_larger_than_the_training_set_is_refused_before_anything_is_written(tmp_path):
    cfg = make_cfg([*TINY, "dataset.train_subset=100000"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="a count from 1 to"):
        train(cfg)
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_run_trains_on_the_subset_and_its_validation_split_comes_out_of_it(tmp_path):
    cfg = make_cfg([*TINY, "dataset.train_subset=400", "dataset.val_fraction=0.25",
                    "noise=symmetric", "noise.rate=0.4"], run_dir=tmp_path / "run")
    results = train(cfg)
    assert results["status"] == "completed"
    data, _ = prepare_data(cfg, torch.device("cpu"), False, [])
    assert len(data.train.y) + len(data.val.y) == 400
    assert abs(len(data.val.y) - 100) <= 5  # round(0.25 n_c) of each class c


def test_the_subset_is_part_of_a_run_identity_and_old_runs_keep_theirs():
    base = make_cfg([])
    assert ADDED_KEYS["dataset.train_subset"] is None
    assert fingerprint(base) == fingerprint(make_cfg(["dataset.train_subset=null"]))
    assert fingerprint(base) != fingerprint(make_cfg(["dataset.train_subset=500"]))
    assert fingerprint(make_cfg(["dataset.train_subset=500"])) != fingerprint(
        make_cfg(["dataset.train_subset=500", "dataset.train_subset_seed=3"]))


def test_the_answer_study_warms_negative_smoothing_up_only():
    cfg = make_cfg(["+experiment=answer", "+panel=fmnist_mlp_sym60",
                    "augmentation.smoothing=-0.4"])
    assert OmegaConf.select(cfg, "augmentation.smoothing_start_epoch") == 8
    cfg = make_cfg(["+experiment=answer", "+panel=fmnist_mlp_sym60",
                    "augmentation.smoothing=0.2"])
    assert cfg.augmentation.smoothing_start_epoch == 0
    assert (cfg.dataset.name, cfg.model.name, cfg.noise.rate) == ("fashion_mnist", "mlp", 0.6)
