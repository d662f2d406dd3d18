"""The literature's protocols as their code runs them: Co-teaching's and JoCoR's schedule
(linear lr decay and Adam's beta1 from epoch 80, set once an epoch), their iteration cap, inputs
in [0, 1], the mean test accuracy of the last 10 epochs, and noise drawn per sample from the
transition matrix; keys added for them leave every earlier run's identity as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from src.config import with_defaults
from src.noise import inject_noise
from src.run.identity import fingerprint, flat_settings
from src.run.records import summarise
from src.training import model_cache
from src.training.optim import lr_factor
from src.training.trainer import SingleTrainer
from tests.conftest import make_cfg
from tests.test_fastpath import CPU, tiny_data


def coteaching_plans(lr: float, n_epoch: int = 200, decay_start: int = 80):
    """alpha_plan and beta1_plan as Co-teaching's main.py computes them (indexed by epoch)."""
    alpha, beta1 = [lr] * n_epoch, [0.9] * n_epoch
    for i in range(decay_start, n_epoch):
        alpha[i] = float(n_epoch - i) / (n_epoch - decay_start) * lr
        beta1[i] = 0.1
    return alpha, beta1


def test_linear_schedule_is_coteachings_alpha_plan_epoch_by_epoch():
    cfg = with_defaults("trainer", "coteaching", {})
    steps = int(cfg["steps_per_epoch"])
    factor = lr_factor(with_defaults("trainer", "default", cfg), steps)
    alpha, _ = coteaching_plans(1.0)
    for epoch in range(1, 200):  # their loop: range(1, n_epoch), adjust_learning_rate(epoch)
        for step in ((epoch - 1) * steps, epoch * steps - 1):  # constant through the epoch
            assert factor(step) == pytest.approx(alpha[epoch], rel=1e-12), epoch


def test_beta1_drops_to_coteachings_value_from_the_decay_start():
    data = tiny_data()
    cfg = {**with_defaults("trainer", "coteaching", {}), "batch_size": 16, "epochs": 4,
           "decay_start": 3, "steps_per_epoch": 2}
    model = model_cache.fresh_model({"name": "mlp", "hidden_sizes": [8]}, (3, 8, 8), 4, CPU, 0)
    tr = SingleTrainer(model, data, cfg, {}, CPU, seed=0)
    seen = []
    for _ in range(4):
        tr.train_epoch()
        seen.append(tr.optim.optimizer.param_groups[0]["betas"][0])
    assert seen == [0.9, 0.9, 0.1, 0.1]
    assert tr.steps_per_epoch == 2  # the cap, below the 3 batches the split holds


def test_inputs_scaled_to_unit_range_without_normalisation():
    data = tiny_data()
    cfg = {"batch_size": 16, "normalize": False}
    model = model_cache.fresh_model({"name": "mlp", "hidden_sizes": [8]}, (3, 8, 8), 4, CPU, 0)
    x = SingleTrainer(model, data, cfg, {}, CPU, seed=0).normalise(data.train.x[:4])
    torch.testing.assert_close(x, data.train.x[:4].float() / 255)


def test_last_k_is_the_mean_test_accuracy_of_the_last_k_epochs():
    history = [{"epoch": e, "test_acc": a, "test_loss": 1.0, "test_ece": 0.1}
               for e, a in enumerate([0.1, 0.2, 0.3, 0.4, 0.6], start=1)]
    assert summarise(history, last_k=3)["test_acc_last_k"] == pytest.approx(13 / 30)
    assert summarise(history, last_k=10)["test_acc_last_k"] == pytest.approx(0.32)


@pytest.mark.parametrize("name,rate", [("symmetric", 0.5), ("pairflip", 0.3),
                                        ("asymmetric", 0.4)])
def test_per_sample_noise_follows_its_transition_matrix(name, rate):
    """Each label drawn from its row: the counts of every true class pass a chi-squared test
    against that row, and the realised rate varies with the seed (exact: a fixed count)."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 20000)
    cfg = {"name": name, "rate": rate, "seed": 3, "sampling": "per_sample"}
    given = inject_noise(true, 10, cfg, dataset="mnist").given_labels
    mapping = {"symmetric": None, "pairflip": {c: (c + 1) % 10 for c in range(10)},
               "asymmetric": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}}[name]  # MNIST's map

    def matrix(c: int) -> np.ndarray:
        """Row c of the transition matrix, as Co-teaching's noisify builds it."""
        if mapping is None:
            return np.full(10, rate / 9) + np.eye(10)[c] * (1 - rate - rate / 9)
        if c not in mapping:
            return np.eye(10)[c]
        return np.eye(10)[c] * (1 - rate) + np.eye(10)[mapping[c]] * rate

    for c in range(10):
        counts = np.bincount(given[true == c], minlength=10)
        expected = matrix(c) * counts.sum()
        keep = expected > 0
        assert counts[~keep].sum() == 0
        if keep.sum() > 1:
            assert stats.chisquare(counts[keep], expected[keep]).pvalue > 1e-3, c
    def realised(seed: int, sampling: str) -> float:
        noisy = inject_noise(true, 10, {**cfg, "seed": seed, "sampling": sampling},
                             dataset="mnist")
        return float((noisy.given_labels != true).mean())

    rates = {realised(s, "per_sample") for s in range(4)}
    exact = {realised(s, "exact") for s in range(4)}
    assert len(rates) > 1 and len(exact) == 1


def test_keys_added_at_their_defaults_leave_earlier_runs_identity_unchanged():
    """The quickstart's ERM cell at 40% noise, seed 0: its fingerprint as recorded before
    noise.sampling and the schedule keys existed; a non-default value is a new run."""
    over = ["+experiment=quickstart", "augmentation.mixup_alpha=0", "augmentation.smoothing=0",
            "noise.rate=0.4", "trainer.seed=0"]
    cfg = make_cfg(over, run_dir=Path("/o/r"))
    assert fingerprint(cfg) == "46fdeda56efeb4e3"
    assert "noise.sampling" not in flat_settings(cfg)
    other = make_cfg(over + ["noise.sampling=per_sample"], run_dir=Path("/o/r"))
    assert fingerprint(other) != "46fdeda56efeb4e3"
    assert flat_settings(other)["noise.sampling"] == "per_sample"
