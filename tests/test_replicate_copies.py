"""Runs whose noise seed draws nothing are copies, not replicates: the analysis keeps one per
training seed, so no cell counts a run twice (clean labels, a rate of 0, human labels)."""

from __future__ import annotations

import pandas as pd

from analysis.load import drop_copies
from src.noise import has_random_draw


def _runs(noise: str, rate: float, subset=None, subset_seed=None) -> pd.DataFrame:
    rows = [{"run_dir": f"r/{noise}/{ns}/{s}", "status": "completed", "noise": noise,
             "noise_rate": rate, "seed": s, "noise_seed": ns, "mixup_alpha": 0.0,
             "smoothing": 0.0, "config.dataset.train_subset": subset,
             "config.dataset.train_subset_seed": subset_seed, "final_test_acc": 0.9}
            for ns in (0, 1) for s in (0, 1, 2)]
    return pd.DataFrame(rows)


def test_only_drawn_noise_at_a_positive_rate_has_draws():
    assert has_random_draw("symmetric", 0.4) and has_random_draw("instance", 0.2)
    assert not has_random_draw("symmetric", 0.0)
    assert not has_random_draw("none", 0.0) and not has_random_draw("human", 0.4)


def test_clean_runs_of_two_noise_seeds_count_once_per_training_seed():
    kept, copies = drop_copies(_runs("none", 0.0))
    assert len(kept) == 3 and set(kept["noise_seed"]) == {0}
    assert len(copies) == 3 and set(copies["status"]) == {"copy"}
    assert copies["error"].str.contains("not an independent replicate").all()


def test_a_rate_of_zero_and_human_labels_are_copies_too():
    assert len(drop_copies(_runs("symmetric", 0.0))[0]) == 3
    assert len(drop_copies(_runs("human", 0.4))[0]) == 3


def test_noisy_runs_and_subsets_drawn_from_the_noise_seed_are_replicates():
    assert len(drop_copies(_runs("symmetric", 0.4))[0]) == 6
    # clean labels, but each noise seed draws another training subset
    assert len(drop_copies(_runs("none", 0.0, subset=5000, subset_seed=None))[0]) == 6
    # a subset with a seed of its own: the noise seed draws nothing again
    assert len(drop_copies(_runs("none", 0.0, subset=5000, subset_seed=3))[0]) == 3
