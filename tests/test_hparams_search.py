"""`+hparams_search=optuna`: Optuna searches Mixup alpha and smoothing eps on the noisy
validation accuracy, which is what a job returns to a sweeper (never a test metric)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from src.files import read_json
from src.run.closing import sweep_objective
from tests.conftest import CONF, ROOT, TINY, run_module

# Once the requirement is declared, a missing install is a failure, not a skip.
DECLARED = "hydra-optuna-sweeper" in (ROOT / "requirements-search.txt").read_text()
INSTALLED = importlib.util.find_spec("optuna") is not None
needs_optuna = pytest.mark.skipif(not (DECLARED or INSTALLED),
                                  reason="hydra-optuna-sweeper is not installed")


def test_the_objective_is_the_noisy_validation_accuracy_never_test():
    run = {"status": "completed", "best_val_acc": 0.61, "final_test_acc": 0.9,
           "best_test_acc": 0.95, "test_acc_at_best_val": 0.88}
    assert sweep_objective(run) == 0.61
    seeds = {"final_test_acc": 0.9, "runs": [run, {**run, "best_val_acc": 0.65}]}
    assert sweep_objective(seeds) == pytest.approx(0.63)


@pytest.mark.parametrize("run", [
    {"status": "completed", "best_val_acc": None, "final_test_acc": 0.9},  # no split
    {"status": "diverged", "best_val_acc": 0.7, "final_test_acc": 0.1},
    {"status": "failed", "best_val_acc": 0.7},
])
def test_no_objective_without_a_completed_run_with_a_validation_split(run):
    assert sweep_objective(run) is None
    assert sweep_objective({"runs": [{"status": "completed", "best_val_acc": 0.5}, run]}) is None


def test_the_search_config_searches_alpha_and_eps_and_maximises():
    cfg = yaml.safe_load((CONF / "hparams_search" / "optuna.yaml").read_text())
    assert (CONF / "hparams_search" / "optuna.yaml").read_text().startswith("# @package _global_")
    sweeper = cfg["hydra"]["sweeper"]
    assert set(sweeper["params"]) == {"augmentation.mixup_alpha", "augmentation.smoothing"}
    assert sweeper["direction"] == "maximize" and cfg["dataset"]["val_fraction"] > 0


@needs_optuna
def test_a_few_trials_run_and_the_best_is_chosen_on_validation(tmp_path):
    # The third trial is TPE's own (after two random start-up trials).
    done = run_module(["+hparams_search=optuna", "hydra.sweeper.n_trials=3",
                       "hydra.sweeper.sampler.n_startup_trials=2", "noise=symmetric",
                       "noise.rate=0.4", *TINY], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [sweep] = (tmp_path / "outputs" / "hparams_search").glob("multirun_*")
    runs = [read_json(p) for p in sweep.glob("*/seed=0/results.json")]
    assert len(runs) == 3 and all(r["status"] == "completed" for r in runs)
    alphas = {r["mixup_alpha"] for r in runs}
    assert len(alphas) == 3 and all(0 <= a <= 2 for a in alphas)
    assert all(0 <= r["smoothing"] <= 0.3 for r in runs)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    top = max(runs, key=lambda r: r["best_val_acc"])
    assert best["best_value"] == top["best_val_acc"]  # the objective each trial returned
    assert best["best_params"] == {"augmentation.mixup_alpha": top["mixup_alpha"],
                                   "augmentation.smoothing": top["smoothing"]}
