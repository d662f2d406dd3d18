"""Generalised label smoothing (Wei et al., ICML 2022): any eps < 1, negative included, over all
classes or over the other classes, switched on after `smoothing_start_epoch` epochs of plain
cross entropy; and what a run records of it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from src.augmentation import (
    mixed_target,
    mixup_smoothing_loss,
    smooth,
    soft_cross_entropy,
    uniform_mass,
)
from src.data.tensors import Split, TrainData
from src.run.identity import run_identity
from src.training import model_cache
from src.training.device import Execution
from src.training.trainer import SingleTrainer
from tests.conftest import make_cfg

K = 6
CPU = Execution(torch.device("cpu"), None, channels_last=False)
MLP = {"name": "mlp", "hidden_sizes": [16], "dropout": 0.0}
TRAINER = {"batch_size": 16, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
           "weight_decay": 5e-4, "schedule": "cosine", "epochs": 4, "eval_batch_size": 64}


def tiny_data(n: int = 64) -> TrainData:
    """Random 1x6x6 uint8 images with K classes, crop and flip on (every draw of a step runs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    y = torch.randint(0, K, (n,), generator=g)
    return TrainData(Split(x, y), Split(x[:32], y[:32]), y, None,
                     torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.25), K,
                     crop_padding=1, hflip=True)


def trainer(aug: dict, seed: int = 0) -> SingleTrainer:
    model = model_cache.fresh_model(MLP, (1, 6, 6), K, CPU, seed)
    return SingleTrainer(model, tiny_data(), TRAINER, aug, CPU, seed)


def weights(tr: SingleTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, K, generator=g)
    y = torch.randint(0, K, (12,), generator=g)
    perm = torch.randperm(12, generator=g)
    return logits, y, perm


# ------------------------------------------------------------------ the targets


@pytest.mark.parametrize("eps", [0.1, 0.3, -0.2, -2.0])
def test_others_target_of_a_one_hot_label(eps):
    t = smooth(F.one_hot(torch.tensor([2, 0]), K).float(), eps, "others")
    expected = torch.full((2, K), eps / (K - 1))
    expected[0, 2] = expected[1, 0] = 1 - eps
    assert torch.allclose(t, expected, atol=1e-6)


@pytest.mark.parametrize("eps", [0.2, -0.6, -2.0])
def test_all_target_of_a_one_hot_label_negative_eps_included(eps):
    t = smooth(F.one_hot(torch.tensor([4]), K).float(), eps)
    expected = torch.full((1, K), eps / K)
    expected[0, 4] = 1 - eps + eps / K
    assert torch.allclose(t, expected, atol=1e-6)
    assert torch.allclose(t.sum(-1), torch.ones(1))
    if eps < 0:  # negative smoothing pushes the other classes below zero
        assert (t[0, :4] < 0).all()


@pytest.mark.parametrize("to", ["all", "others"])
@pytest.mark.parametrize("lam,eps", [(0.3, 0.1), (0.8, -0.4), (0.55, -2.0)])
def test_smoothing_the_mixed_target_equals_mixing_the_smoothed_targets(batch, to, lam, eps):
    _, y, perm = batch
    onehot = F.one_hot(y, K).float()
    mix_then_smooth = smooth(lam * onehot + (1 - lam) * onehot[perm], eps, to)
    smooth_then_mix = lam * smooth(onehot, eps, to) + (1 - lam) * smooth(onehot[perm], eps, to)
    assert torch.allclose(mix_then_smooth, smooth_then_mix, atol=1e-6)
    assert torch.allclose(mixed_target(y, perm, lam, eps, K, to), mix_then_smooth)


@pytest.mark.parametrize("to", ["all", "others"])
def test_the_two_conventions_are_one_map_through_the_uniform_mass(batch, to):
    _, y, perm = batch
    eps = 0.25
    mass = uniform_mass(eps, to, K)
    assert mass == pytest.approx(eps if to == "all" else eps * K / (K - 1))
    assert torch.allclose(mixed_target(y, perm, 0.4, eps, K, to),
                          mixed_target(y, perm, 0.4, mass, K, "all"), atol=1e-6)


# ------------------------------------------------------------------ the loss


@pytest.mark.parametrize("to", ["all", "others"])
@pytest.mark.parametrize("eps", [0.2, -0.2, -1.0])
def test_loss_is_the_cross_entropy_against_the_smoothed_mixed_target(batch, to, eps):
    logits, y, perm = batch
    lam = torch.tensor(0.35)
    mass = torch.tensor(uniform_mass(eps, to, K))
    loss = mixup_smoothing_loss(logits, y, y[perm], lam, mass)
    expected = soft_cross_entropy(logits, mixed_target(y, perm, lam, eps, K, to))
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("eps", [0.4, -0.2, -2.0])
def test_loss_is_wei_et_al_generalised_label_smoothing(batch, eps):
    """Their published form: (1 - eps) * NLL + eps * the mean of -log p over the classes."""
    logits, y, _ = batch
    logp = F.log_softmax(logits, -1)
    gls = ((1 - eps) * F.nll_loss(logp, y, reduction="none") + eps * -logp.mean(-1)).mean()
    loss = mixup_smoothing_loss(logits, y, y, torch.tensor(1.0), torch.tensor(eps))
    assert torch.allclose(loss, gls, atol=1e-5)


def test_negative_smoothing_loss_goes_below_zero_on_a_confident_right_answer():
    y = torch.tensor([1, 3])
    logits = 8 * F.one_hot(y, K).float()
    loss = mixup_smoothing_loss(logits, y, y, torch.tensor(1.0), torch.tensor(-2.0))
    assert loss < 0
    assert mixup_smoothing_loss(logits, y, y, torch.tensor(1.0), torch.tensor(0.0)) > 0


# ------------------------------------------------------------------ training


def test_the_conventions_train_identically_at_the_same_uniform_mass():
    eps_others = 0.3
    a = trainer({"mixup_alpha": 0.4, "smoothing": eps_others, "smoothing_to": "others"})
    b = trainer({"mixup_alpha": 0.4, "smoothing": eps_others * K / (K - 1),
                 "smoothing_to": "all"})
    for _ in range(2):
        sa, sb = a.train_epoch()[0], b.train_epoch()[0]
        assert sa.loss == pytest.approx(sb.loss, rel=1e-5)
    for name, w in weights(a).items():
        torch.testing.assert_close(w, weights(b)[name], rtol=1e-5, atol=1e-6, msg=name)
    # ... and smoothing over the others by that eps is not smoothing over all by it
    c = trainer({"mixup_alpha": 0.4, "smoothing": eps_others, "smoothing_to": "all"})
    c.train_epoch(), c.train_epoch()
    assert any(not torch.allclose(w, weights(c)[name]) for name, w in weights(a).items())


def test_plain_cross_entropy_before_the_start_epoch_then_the_chosen_eps():
    late = trainer({"mixup_alpha": 0.0, "smoothing": -0.6, "smoothing_start_epoch": 2})
    plain = trainer({"mixup_alpha": 0.0, "smoothing": 0.0})
    for _ in range(2):
        assert late.train_epoch()[0].loss == plain.train_epoch()[0].loss
    for name, w in weights(late).items():
        assert torch.equal(w, weights(plain)[name]), name
    assert late.epochs_done == 2
    # From the start epoch on the run smooths: the same as a run that smooths from epoch 0,
    # put in the state the late one has now.
    now = trainer({"mixup_alpha": 0.0, "smoothing": -0.6, "smoothing_start_epoch": 0})
    now.load_state_dict(copy.deepcopy(late.state_dict()))  # as a checkpoint file holds it
    third, third_now = late.train_epoch()[0], now.train_epoch()[0]
    third_plain = plain.train_epoch()[0]
    assert third.loss == third_now.loss and third.loss != third_plain.loss
    for name, w in weights(late).items():
        assert torch.equal(w, weights(now)[name]), name


def test_a_resumed_run_keeps_its_epoch_count_and_smooths_when_it_should():
    aug = {"mixup_alpha": 1.0, "smoothing": 0.2, "smoothing_start_epoch": 1}
    whole = trainer(aug)
    whole.train_epoch(), whole.train_epoch()
    first = trainer(aug)
    first.train_epoch()
    state = copy.deepcopy(first.state_dict())
    assert state["epochs_done"] == 1
    resumed = trainer(aug)
    resumed.load_state_dict(state)
    resumed.train_epoch()
    assert resumed.epochs_done == 2
    for name, w in weights(whole).items():
        assert torch.equal(w, weights(resumed)[name]), name


# ------------------------------------------------------------------ what a run records


@pytest.mark.parametrize("eps,to,mass", [(0.2, "others", 0.2 * 10 / 9), (0.2, "all", 0.2),
                                         (-0.6, "others", -0.6 * 10 / 9), (-1.0, "all", -1.0)])
def test_results_record_the_convention_and_its_uniform_mass(eps, to, mass):
    cfg = make_cfg(["augmentation=smoothing", f"augmentation.smoothing={eps}",
                    f"augmentation.smoothing_to={to}"], run_dir=Path("/nonexistent"))
    ident = run_identity(cfg)
    assert cfg.dataset.num_classes == 10
    assert ident["smoothing"] == eps and ident["smoothing_to"] == to
    assert ident["smoothing_uniform_mass"] == pytest.approx(mass)
    assert ident["method"] == "smoothing"
