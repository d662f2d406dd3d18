"""A cell-level setting that follows the grid cell (the answer study's warm-up for negative ε
only) is part of the cell, not a panel: ε < 0 is compared with ε = 0 and with ERM."""

from __future__ import annotations

import pandas as pd

from analysis.aggregate import add_panel_ids, group_keys

START = "config.augmentation.smoothing_start_epoch"


def _runs(start_of) -> pd.DataFrame:
    rows = []
    for eps in (-0.4, 0.0, 0.2):
        for alpha in (0.0, 2.0):
            for seed in range(3):
                rows.append({"dataset": "fashion_mnist", "model": "mlp", "noise": "symmetric",
                             "noise_rate": 0.6, "method": "x", "mixup_alpha": alpha,
                             "smoothing": eps, "seed": seed, "noise_seed": 0,
                             "status": "completed", "final_test_acc": 0.8,
                             START: start_of(eps), "config.trainer.lr": 0.1})
    return pd.DataFrame(rows)


def test_a_warm_up_that_follows_eps_leaves_one_panel():
    runs = _runs(lambda eps: 8 if eps < 0 else 0)
    keys = group_keys(runs)
    assert START not in keys
    panels = add_panel_ids(runs, keys)
    assert panels["_panel"].nunique() == 1


def test_a_warm_up_swept_on_its_own_axis_still_makes_panels():
    runs = pd.concat([_runs(lambda eps: 0), _runs(lambda eps: 3)], ignore_index=True)
    assert START in group_keys(runs)


def test_other_settings_that_follow_the_cell_still_make_panels():
    runs = _runs(lambda eps: 0)
    runs["config.trainer.lr"] = [0.1 if e < 0 else 0.05 for e in runs["smoothing"]]
    assert "config.trainer.lr" in group_keys(runs)
