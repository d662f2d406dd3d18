"""trainer.memorization_subset: memorisation estimated on a fixed random subset of the training
split (the same images in every run and epoch), part of a run's settings when set; runs
recorded before the key keep their identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.config import ADDED_KEYS
from src.config.validate import validate
from src.errors import ConfigError
from src.files import read_json
from src.noise import noise_metrics
from src.run.identity import fingerprint
from src.run.lifecycle import evaluate_members
from src.train import train
from src.training.evaluate import memorization_indices
from tests.conftest import TINY, make_cfg
from tests.test_fastpath import tiny_data


def test_the_subset_is_fixed_sorted_and_of_the_size_asked():
    torch.manual_seed(123)
    np.random.seed(5)  # global generators play no part
    first = memorization_indices(50, 1000)
    assert len(first) == len(set(first.tolist())) == 50 and (np.diff(first) > 0).all()
    assert np.array_equal(first, memorization_indices(50, 1000))
    assert memorization_indices(None, 1000) is None
    assert memorization_indices(1000, 1000) is None  # the whole split: every image


@pytest.mark.parametrize("value", [0, -3, 1.5, "all", True])
def test_a_bad_subset_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="trainer.memorization_subset"):
        validate(make_cfg([f"trainer.memorization_subset={value}"], run_dir=Path("unused")))


def test_the_subset_is_a_setting_and_old_runs_keep_their_identity():
    assert ADDED_KEYS["trainer.memorization_subset"] is None
    base = make_cfg([])
    assert fingerprint(base) == fingerprint(make_cfg(["trainer.memorization_subset=null"]))
    assert fingerprint(base) != fingerprint(make_cfg(["trainer.memorization_subset=500"]))


class Predicts:
    """A trainer that predicts class 0 for every image and counts the images it is given."""

    def __init__(self, size: int | None) -> None:
        self.cfg = {"memorization_subset": size}
        self.seen: list[int] = []

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(x))
        logits = torch.zeros(1, len(x), 4)
        logits[..., 0] = 1
        return logits


def test_memorisation_is_measured_on_the_subset_only():
    data = tiny_data(n=64)
    g = torch.Generator().manual_seed(1)
    data.y_true = torch.randint(0, 4, (64,), generator=g)  # about 3/4 of the labels "noisy"
    trainer = Predicts(20)
    row = evaluate_members(trainer, data, [0])[0]
    assert trainer.seen == [40, 20]  # test, then 20 training images
    keep = memorization_indices(20, 64)
    want = noise_metrics(np.zeros(20, np.int64), data.train.y.numpy()[keep],
                         data.y_true.numpy()[keep])
    assert row["memorized"] == want["memorized"] and row["recovered"] == want["recovered"]
    everything = Predicts(None)
    evaluate_members(everything, data, [0])
    assert everything.seen == [40, 64]  # null: every training image


def test_a_run_records_its_subset_in_its_settings(tmp_path):
    cfg = make_cfg([*TINY, "trainer.epochs=1", "noise=symmetric", "noise.rate=0.4",
                    "trainer.memorization_subset=100"], run_dir=tmp_path / "run")
    results = train(cfg)
    assert results["status"] == "completed" and results["final_memorized"] is not None
    record = read_json(tmp_path / "run" / "results.json")
    assert record["config"]["trainer.memorization_subset"] == 100
